"""`queue-rescue init`: write the config, the SRS secret and the password file; then check."""

from __future__ import annotations

import os
import re
import secrets
import socket
import sys
from pathlib import Path

import click

from rescue.cli.boundary import fail
from rescue.cli.common import State
from rescue.cli.init_template import (
    MX_PLACEHOLDER,
    Answers,
    bounce_host,
    dns_records,
    example_text,
    main_cf_lines,
    render,
)
from rescue.config import DEFAULT_PORTS, TLS_MODES, PostfixConfig, config_path
from rescue.errors import PostfixError
from rescue.exitcodes import ExitCode

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
)
# A new SRS secret: 32 random bytes, well over the 16 characters a secret needs.
SECRET_BYTES = 32


def _hostname(value: str, what: str) -> str:
    value = value.strip()
    if not _HOSTNAME.match(value) and not _is_address(value):
        raise click.BadParameter(f"{value!r} is not a host name or address", param_hint=what)
    return value.rstrip(".").lower()


def _is_address(value: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in value else socket.AF_INET, value)
    except OSError:
        return False
    return True


class Asker:
    """An option's value when given; else the default with --yes; else a prompt."""

    def __init__(self, yes: bool) -> None:
        self.yes = yes

    def __call__(
        self, given: str | None, option: str, text: str, default: str | None = None
    ) -> str:
        if given is not None:
            value = given
        elif self.yes:
            if default is None:
                raise click.UsageError(f"{option} is needed with --yes")
            value = default
        else:
            value = click.prompt(text, default=default, err=True)
        try:
            value.encode("utf-8")  # bytes from argv that are not UTF-8 come as surrogates
        except UnicodeEncodeError:
            raise click.BadParameter("not valid UTF-8", param_hint=option) from None
        return value


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600, whatever the umask and the file's old mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _secrets_text(old: Path) -> str:
    """A fresh secret first; with --force, the old file's secrets stay below it to verify.

    Bounces to addresses signed with an old secret must keep finding their way back.
    """
    new = secrets.token_urlsafe(SECRET_BYTES)
    kept = []
    if old.is_file():
        kept = [line.strip() for line in old.read_text(encoding="utf-8").splitlines()]
        kept = [line for line in kept if line and not line.startswith("#")]
    return "\n".join([new, *kept]) + "\n"


def _refuse_overwrite(paths: list[Path], force: bool) -> None:
    there = [str(p) for p in paths if p.exists()]
    if there and not force:
        fail(ExitCode.USAGE, f"{', '.join(there)}: already there; nothing was changed (--force)")


def _mx_host(postfix_dir: Path) -> str | None:
    """Where bounces to the SRS domain go: this Postfix's myhostname, else this host's
    name; None when no public name is known (init_template.bounce_host)."""
    from rescue.postfix.commands import Postfix  # noqa: PLC0415

    try:
        myhostname: str | None = Postfix(PostfixConfig(config_dir=postfix_dir)).postconf(
            "myhostname"
        )
    except (PostfixError, OSError):
        myhostname = None
    return bounce_host(myhostname, socket.getfqdn())


@click.command()
@click.option("--smarthost", "host", metavar="HOST", help="The smarthost's host name.")
@click.option("--tls", type=click.Choice(TLS_MODES), help="How to talk TLS to the smarthost.")
@click.option(
    "--port", type=click.IntRange(1, 65535), help="The smarthost's port [587, 465 or 25 by --tls]."
)
@click.option("--user", metavar="NAME", help="Log in to the smarthost as NAME ('' = no AUTH).")
@click.option(
    "--password-stdin", is_flag=True, help="Read the smarthost's password from stdin's first line."
)
@click.option("--name", "name", default="relay1", show_default=True, help="The smarthost's name.")
@click.option("--srs-domain", metavar="DOMAIN", help="The SRS domain (its MX gets the bounces).")
@click.option(
    "--postfix-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Postfix's config directory [/etc/postfix].",
)
@click.option(
    "--nameserver", "nameservers", multiple=True, metavar="IP", help="DNS server for MX lookups."
)
@click.option("--dns-port", type=click.IntRange(1, 65535), help="Its port [53].")
@click.option("--yes", "-y", is_flag=True, help="Ask nothing: defaults for what is not given.")
@click.option("--force", is_flag=True, help="Overwrite existing files (old SRS secrets are kept).")
@click.pass_context
def init(
    ctx: click.Context,
    host: str | None,
    tls: str | None,
    port: int | None,
    user: str | None,
    password_stdin: bool,
    name: str,
    srs_domain: str | None,
    postfix_dir: Path | None,
    nameservers: tuple[str, ...],
    dns_port: int | None,
    yes: bool,
    force: bool,
) -> None:
    """Write a configuration to send mail, then check it and say what DNS needs.

    Asks for what the options do not give (nothing with --yes): the smarthost,
    its TLS mode, port and login, the SRS domain and Postfix's config directory.
    Writes the config file (the commented example with the answers, mode 0600),
    a fresh SRS secret file next to it and, with a login, the password file
    (both 0600). Refuses to overwrite them without --force. Then runs `check`
    and prints the DNS records for the SRS domain and the main.cf lines that
    turn bounces back.

    \b
    Example (no questions):
      queue-rescue init --smarthost smtp.example.net --tls starttls \\
          --user rescue@example.net --password-stdin --srs-domain srs.example.com \\
          --yes < password.txt
    """
    state = ctx.find_object(State)
    path = config_path(state.config_option if state else None)
    secret_file = path.parent / "srs-secrets"
    _refuse_overwrite([path, secret_file], force)
    ask = Asker(yes)
    smarthost = _hostname(ask(host, "--smarthost", "Smarthost host name"), "--smarthost")
    tls = ask(tls, "--tls", f"TLS mode ({', '.join(TLS_MODES)})", "starttls")
    if tls not in TLS_MODES:
        raise click.BadParameter(f"{tls!r}: use {', '.join(TLS_MODES)}", param_hint="--tls")
    port_text = ask(None if port is None else str(port), "--port", "Port", str(DEFAULT_PORTS[tls]))
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise click.BadParameter(f"{port_text!r} is not a port", param_hint="--port")
    username = ask(user, "--user", "Login name at the smarthost (empty: none)", "").strip() or None
    if username is not None and tls == "none":
        raise click.UsageError("a login needs TLS (--tls starttls or implicit): no AUTH in clear")
    password_file = path.parent / f"{name}.password" if username else None
    if password_file is not None:
        _refuse_overwrite([password_file], force)
    password = _password(password_stdin, yes) if username else None
    domain = _hostname(ask(srs_domain, "--srs-domain", "SRS domain"), "--srs-domain")
    postfix = ask(
        None if postfix_dir is None else str(postfix_dir),
        "--postfix-dir",
        "Postfix config directory",
        "/etc/postfix",
    )
    answers = Answers(
        smarthost_name=name,
        smarthost_host=smarthost,
        port=int(port_text),
        tls=tls,
        username=username,
        password_file=password_file,
        srs_domain=domain,
        secret_file=secret_file,
        postfix_dir=Path(postfix),
        nameservers=nameservers,
        dns_port=dns_port,
    )
    _write(path, answers, password)
    if state is not None:  # `check` reads what was just written
        state.use(str(path))
    from rescue.cli.check_cmd import check  # noqa: PLC0415

    code = 0
    try:
        ctx.invoke(check)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    _advise(answers)
    ctx.exit(code)


def _password(from_stdin: bool, yes: bool) -> str:
    password = ""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not yes:
        password = click.prompt("Password", hide_input=True, err=True)
    if not password:
        raise click.UsageError(
            "--password-stdin: the first line of standard input is empty"
            if from_stdin
            else "a login needs a password (--password-stdin)"
        )
    return password


def _write(path: Path, answers: Answers, password: str | None) -> None:
    text = render(example_text(), answers)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(answers.secret_file, _secrets_text(answers.secret_file))
    written = [path, answers.secret_file]
    if answers.password_file is not None and password is not None:
        _write_private(answers.password_file, password + "\n")
        written.append(answers.password_file)
    header = "# Written by `queue-rescue init`; edit freely (`queue-rescue check` checks it).\n"
    _write_private(path, header + text)
    click.echo(f"Wrote {', '.join(map(str, written))} (mode 0600).")
    click.echo("")


def _advise(answers: Answers) -> None:
    """What the admin must still do outside this host: DNS, and main.cf for bounces."""
    domain = answers.srs_domain
    click.echo("")
    click.echo(f"DNS for the SRS domain {domain} (bounces come here; the smarthost may send):")
    mx_host = _mx_host(answers.postfix_dir)
    for line in dns_records(answers, mx_host or MX_PLACEHOLDER):
        click.echo(f"  {line}")
    if mx_host is None:
        click.echo(
            f"  ({MX_PLACEHOLDER}: the public name of the server that takes the bounces;"
            f" neither Postfix's myhostname (in {answers.postfix_dir}) nor this host's"
            " name is one)"
        )
    click.echo("")
    click.echo(
        f"main.cf lines that turn bounces back (served by `queue-rescue srs serve`; "
        f"Postfix must accept mail for {domain}):"
    )
    for line in main_cf_lines():
        click.echo(f"  {line}")
