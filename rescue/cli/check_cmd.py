"""`queue-rescue check`: is everything in place for a flush? Sends no mail."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable

import click

from rescue.cli import check_route
from rescue.cli.common import load_config, run_async
from rescue.cli.status_cmd import service_running
from rescue.config import Config, SmarthostConfig, SrsConfig
from rescue.errors import DeliveryError, PostfixError, RescueError
from rescue.exitcodes import ExitCode
from rescue.postfix.commands import Postfix
from rescue.postfix.listing import BadLine
from rescue.smarthost.session import Session
from rescue.srs.rewriter import SrsRewriter


class Checks:
    def __init__(self) -> None:
        self.failed = 0

    def run(self, what: str, probe: Callable[[], str]) -> None:
        try:
            detail = probe()
        except (RescueError, OSError, sqlite3.Error) as exc:
            self.failed += 1
            click.echo(f"FAIL  {what}: {exc}")
        else:
            click.echo(f"ok    {what}: {detail}")


def _postfix(cfg: Config) -> Callable[[], str]:
    def probe() -> str:
        postfix = Postfix(cfg.postfix)
        messages = bad = 0
        for item in postfix.listing():
            if isinstance(item, BadLine):
                bad += 1
            else:
                messages += 1
        queue_dir = postfix.queue_directory()
        extra = f", {bad} unreadable listing lines" if bad else ""
        return f"postqueue lists {messages} messages{extra}; queue directory {queue_dir}"

    return probe


def _root() -> str:
    if os.geteuid() != 0:
        raise PostfixError("not running as root: postsuper (hold, release, delete) will fail")
    return "running as root (postsuper allowed)"


def _journal(cfg: Config) -> Callable[[], str]:
    def probe() -> str:
        folder = cfg.journal.path.parent
        if not folder.exists():
            return f"{folder} will be created"
        if not os.access(folder, os.W_OK):
            raise PostfixError(f"{folder} is not writable")
        return f"{cfg.journal.path} writable"

    return probe


def _srs(srs: SrsConfig) -> str:
    rewriter = SrsRewriter.from_config(srs)
    sample = "postmaster@example.com"
    forwarded = rewriter.forward(sample)
    if rewriter.reverse(forwarded).lower() != sample:
        raise PostfixError("SRS forward/reverse do not agree")
    return f"{sample} -> {forwarded} (and back); {len(srs.secrets)} secret(s)"


def _smarthost(host: SmarthostConfig) -> Callable[[], str]:
    async def session() -> str:
        s = Session(host)
        await s.open()
        try:
            tls = {"starttls": "STARTTLS", "implicit": "TLS", "none": "no TLS"}[host.tls]
            auth = f", AUTH as {host.username}" if host.username else ""
            return f"{host.host}:{host.port} EHLO ok, {tls}{auth}"
        finally:
            await s.quit()

    def probe() -> str:
        try:
            return run_async(asyncio.wait_for(session(), timeout=host.timeout * 3))
        except TimeoutError:
            raise DeliveryError(
                "no answer in time", smarthost=host.name, transient=True, stage="connect"
            ) from None
        except DeliveryError as exc:  # its text starts with the name the check line shows
            raise RescueError(str(exc).removeprefix(f"{host.name}: ")) from exc

    return probe


@click.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Check the configuration, Postfix, the journal, SRS and every smarthost.

    Connects to each smarthost (EHLO, TLS, AUTH) without sending mail. With a
    [route] table also Postfix's side of it: transport_maps names the table
    first, postmap -q answers from it, the relay endpoint greets. Exit status 1
    when a check fails.
    """
    cfg = load_config(ctx)
    if cfg.from_file:
        click.echo(f"ok    configuration: {cfg.path}")
    else:
        click.echo(f"--    configuration: no {cfg.path}; the defaults (to look, not to send)")
    checks = Checks()
    checks.run("postfix", _postfix(cfg))
    checks.run("privileges", _root)
    checks.run("journal", _journal(cfg))
    unset = []
    if cfg.srs is None:
        unset.append("[srs]")
    else:
        srs = cfg.srs
        checks.run("srs", lambda: _srs(srs))
    if not cfg.smarthosts:
        unset.append("[[smarthost]]")
    for host in cfg.smarthosts:
        checks.run(f"smarthost {host.name}", _smarthost(host))
    for section in unset:
        click.echo(f"--    {section}: not configured (needed by flush and run only)")
    for what, probe in check_route.checks(cfg, lambda: service_running(cfg)):
        checks.run(what, probe)
    if checks.failed:
        click.echo(f"{checks.failed} check(s) failed.")
        ctx.exit(int(ExitCode.PARTIAL))
    if unset:
        click.echo(
            f"All checks passed; sending needs {' and '.join(unset)}: run `queue-rescue init`."
        )
    else:
        click.echo("All checks passed.")
