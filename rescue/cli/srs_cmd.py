"""The ``queue-rescue srs`` commands: rewrite one address, or serve the SRS maps to Postfix."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

import click

from rescue.cli.boundary import fail
from rescue.cli.common import load_srs_config
from rescue.errors import SrsError
from rescue.exitcodes import ExitCode
from rescue.postfix.socketmap import DEFAULT_IDLE_TIMEOUT, DEFAULT_SOCKET_MODE, parse_listen
from rescue.srs.bouncemap import serve_srs
from rescue.srs.rewriter import SrsRewriter

log = logging.getLogger(__name__)


@click.group("srs")
def srs() -> None:
    """Sender Rewriting Scheme: rewrite senders, turn bounces back, serve Postfix."""


@srs.command()
@click.argument("address")
@click.pass_context
def forward(ctx: click.Context, address: str) -> None:
    """Print the SRS sender for mail from ADDRESS (unchanged when it needs none)."""
    try:
        click.echo(_rewriter(ctx).forward(address))
    except SrsError as exc:
        fail(ExitCode.USAGE, str(exc))


@srs.command()
@click.argument("address")
@click.pass_context
def reverse(ctx: click.Context, address: str) -> None:
    """Print where a bounce to the SRS address ADDRESS must go."""
    try:
        click.echo(_rewriter(ctx).reverse(address))
    except SrsError as exc:
        # Forged, expired, malformed or not ours: bad input, like a bad argument (and
        # not the group's RescueError exit 1, which means "some messages not rerouted").
        fail(ExitCode.USAGE, str(exc))


def _listen_spec(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


def _octal_mode(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an octal mode like 0660", ctx, param) from None
    if not 0 <= mode <= 0o777:
        raise click.BadParameter(f"{value!r} is not a permission mode", ctx, param)
    return mode


@srs.command("serve")
@click.option(
    "--listen",
    required=True,
    callback=_listen_spec,
    metavar="unix:PATH|inet:HOST:PORT",
    help="Where Postfix reaches the maps, in Postfix's notation.",
)
@click.option(
    "--socket-mode",
    default=f"{DEFAULT_SOCKET_MODE:04o}",
    show_default=True,
    callback=_octal_mode,
    help="Permissions of a unix socket (Postfix connects as user postfix).",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=1.0),
    default=DEFAULT_IDLE_TIMEOUT,
    show_default=True,
    help="Seconds before an idle client connection is closed.",
)
@click.pass_context
def serve_command(ctx: click.Context, listen: str, socket_mode: int, idle_timeout: float) -> None:
    """Answer Postfix socketmap lookups (maps "forward" and "reverse") until SIGTERM/SIGINT.

    Stopping on a signal is the normal end of a service: exit status 0.
    """
    rewriter = _rewriter(ctx)
    try:
        asyncio.run(_serve_until_signal(rewriter, listen, socket_mode, idle_timeout))
    except OSError as exc:
        fail(ExitCode.USAGE, f"cannot serve on {listen}: {exc}")


async def _serve_until_signal(
    rewriter: SrsRewriter, listen: str, socket_mode: int, idle_timeout: float
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve_srs(
        rewriter,
        listen,
        ready=_notify_ready,
        stop=stop,
        socket_mode=socket_mode,
        idle_timeout=idle_timeout,
    )


def _rewriter(ctx: click.Context) -> SrsRewriter:
    try:
        return SrsRewriter.from_config(load_srs_config(ctx))
    except SrsError as exc:
        fail(ExitCode.USAGE, f"[srs] configuration: {exc}")


def _notify_ready() -> None:
    """Tell systemd (Type=notify) that the socket takes connections; nothing without it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", address)
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc)
