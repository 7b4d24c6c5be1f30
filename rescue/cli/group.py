"""The command line's click group: `queue-rescue [--config PATH] COMMAND`."""

from __future__ import annotations

import click

from rescue import __version__
from rescue.cli.boundary import setup_logging
from rescue.cli.common import RescueGroup, State
from rescue.config import CONFIG_ENV, DEFAULT_CONFIG_PATH

EXIT_CODES = """\b
Exit codes:
  0  done: every selected message was rerouted (or nothing was selected)
  1  some selected messages were not rerouted; they are back in Postfix
  2  bad command line or configuration, or not confirmed; nothing was changed
  3  another queue-rescue holds the lock; nothing was changed
  4  Postfix could not be reached, or one of its commands failed
  70 unexpected error (a bug); held messages were released
  130 interrupted (Ctrl-C, SIGTERM); held messages were released
  141 the output's reader went away (scan | head)"""


# Each command is imported only when it runs: a flush should not pay for loading the
# service's metrics library, nor a scan for the SMTP client.
COMMANDS = {
    "scan": "rescue.cli.scan_cmd:scan",
    "flush": "rescue.cli.flush_cmd:flush",
    "export": "rescue.cli.export_cmd:export",
    "check": "rescue.cli.check_cmd:check",
    "diagnose": "rescue.cli.diagnose_cmd:diagnose",
    "providers": "rescue.cli.providers_cmd:providers",
    "run": "rescue.cli.run_cmd:run",
    "status": "rescue.cli.status_cmd:status",
    "srs": "rescue.cli.srs_cmd:srs",
    "init": "rescue.cli.init_cmd:init",
    "completion": "rescue.cli.completion_cmd:completion",
    "route": "rescue.cli.route_cmd:route",
}


@click.group(
    cls=RescueGroup,
    lazy_commands=COMMANDS,
    epilog=EXIT_CODES,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--config",
    "-c",
    "config",
    metavar="PATH",
    envvar=CONFIG_ENV,
    help=f"Configuration file [default: {DEFAULT_CONFIG_PATH}; env {CONFIG_ENV}].",
)
@click.option(
    "--verbose", "-v", count=True, help="Log each message (-v) or everything (-vv) to stderr."
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text or as JSON objects (for log shippers).",
)
@click.version_option(__version__, prog_name="queue-rescue")
@click.pass_context
def cli(ctx: click.Context, config: str | None, verbose: int, log_format: str) -> None:
    """Move deferred Postfix mail stuck at one provider through another relay.

    Reads the deferred queue, finds the mail a provider keeps deferring (by its
    MX hosts and reply texts), and sends it through a smarthost with the
    envelope sender rewritten by SRS. Nothing is lost: every message ends
    accepted by a smarthost or back in Postfix's deferred queue.
    """
    setup_logging(verbose, log_format)
    ctx.obj = State(config)


def main() -> None:
    cli(prog_name="queue-rescue")
