"""How a run's selected messages ended, counted by action: the closing summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class Tally:
    """Counts by action; a subclass names its `actions` and those that mean `done`."""

    actions: ClassVar[tuple[str, ...]] = ()
    done: ClassVar[tuple[str, ...]] = ()  # a run is complete when every message ended so

    counts: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0

    def __post_init__(self) -> None:
        self.counts = {action: self.counts.get(action, 0) for action in self.actions}

    def count(self, action: str) -> None:
        self.counts[action] += 1

    @property
    def selected(self) -> int:
        return sum(self.counts.values())

    @property
    def complete(self) -> bool:
        """True when every selected message ended in one of the `done` actions."""
        return self.selected == sum(self.counts[action] for action in self.done)

    def as_dict(self) -> dict[str, object]:
        return {
            "selected": self.selected,
            **{k.replace("-", "_"): v for k, v in self.counts.items()},
            "elapsed_seconds": round(self.elapsed, 3),
        }
