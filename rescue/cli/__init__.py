"""The command line: `queue-rescue [--config PATH] COMMAND`.

The click group is in `group`; this package imports nothing itself, so that a
plain scan (rescue.start) can use the modules here without loading click.
"""

from __future__ import annotations

from typing import Any


def main() -> None:
    from rescue.cli.group import main as run  # noqa: PLC0415

    run()


def __getattr__(name: str) -> Any:
    """`rescue.cli.cli` and the group's other names, as before the group had its own module."""
    if name in ("cli", "COMMANDS", "EXIT_CODES"):
        from rescue.cli import group  # noqa: PLC0415

        return getattr(group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
