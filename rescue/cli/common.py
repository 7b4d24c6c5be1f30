"""What every command shares: the config, logging, the error boundary.

Kept light: every start imports it. The queue inventory is in queueview.py.
"""

from __future__ import annotations

import importlib
import logging
import re
import signal
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from rescue.cli.boundary import fail_for
from rescue.config import Config, SrsConfig, config_path, sending
from rescue.config import load_config as _load_config
from rescue.config import load_srs_config as _load_srs_config

log = logging.getLogger("rescue")
T = TypeVar("T")


@dataclass
class State:
    config_option: str | None
    _config: Config | None = field(default=None)

    def use(self, path: str) -> None:
        """Read the configuration from `path` from now on (`init` after writing it)."""
        self.config_option = path
        self._config = None

    def config(self) -> Config:
        if self._config is None:
            # No file at the default path: the defaults, for the commands that only look.
            self._config = _load_config(
                config_path(self.config_option), missing_ok=self.config_option is None
            )
        return self._config


def _state(ctx: click.Context) -> State:
    state = ctx.find_object(State)
    if state is None:  # a command invoked on its own, outside the group
        state = ctx.ensure_object(State)
    return state


def load_config(ctx: click.Context) -> Config:
    """The command's configuration, read and validated once."""
    return _state(ctx).config()


def load_srs_config(ctx: click.Context) -> SrsConfig:
    """Only the [srs] table of the configuration (see config.load_srs_config)."""
    state = _state(ctx)
    if state._config is not None:
        return sending(state._config).srs
    return _load_srs_config(config_path(state.config_option))


class RescueGroup(click.Group):
    """The one error boundary: known errors print one line; a bug says so.

    Commands named in `lazy_commands` ("name": "module:attribute") are imported
    when they are run or listed, not at every start.
    """

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._lazy = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self._lazy, *(n for n in super().list_commands(ctx) if n not in self._lazy)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self._lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            fail_for(exc)


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run where SIGTERM, like Ctrl-C, cancels the work so `finally` blocks run.

    Only the first signal cancels: a second Ctrl-C (asyncio's own handler would raise
    KeyboardInterrupt wherever the program is) must not cut short the settling that
    gives held mail back to Postfix.
    """
    import asyncio  # noqa: PLC0415  (50 ms; a scan imports it while showq works)

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)

        def stop() -> None:
            if task.cancelling():
                log.warning("still giving held messages back to Postfix; please wait")
                return
            task.cancel()

        for signum in signals:
            loop.add_signal_handler(signum, stop)
        try:
            return await main
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def parse_duration(text: str, option: str | None = None) -> float:
    """Seconds in `30m`, `2h`, `1d` or a bare number; a mistake names `option`."""
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(
            f"expected a duration like 30m, 2h, 1d, got {text!r}", param_hint=option
        )
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return float(match.group(1)) * unit


def duration_option(value: str | None) -> float | None:
    return None if value is None else parse_duration(value)


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
