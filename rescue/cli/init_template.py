"""What `queue-rescue init` writes and prints, from its answers; no I/O.

The config file is the shipped config.example.toml (package data, the same file as
the one at the top of the source tree) with the answers put in place of its values,
so the generated file keeps every comment and never drifts from the example.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rescue.errors import ConfigError

EXAMPLE = "config.example.toml"
# The socket of systemd/queue-rescue-srs.service, which serves the SRS maps.
SRS_SOCKET = "/run/queue-rescue/srs.sock"

_HEADER = re.compile(r"^\[\[?\s*([A-Za-z_]+)\s*\]\]?")
# `key = value` with an optional trailing comment; the example's values hold no '#'.
_KEY = re.compile(r"^(?P<key>[A-Za-z_]+)(?P<eq>\s*=\s*)(?P<value>[^#]*?)(?P<rest>\s*(#.*)?)$")


@dataclass(frozen=True, slots=True)
class Answers:
    smarthost_name: str
    smarthost_host: str
    port: int
    tls: str
    username: str | None
    password_file: Path | None  # set when username is
    srs_domain: str
    secret_file: Path
    postfix_dir: Path
    nameservers: tuple[str, ...] = ()
    dns_port: int | None = None


def example_text() -> str:
    """The commented example configuration shipped with the package."""
    return resources.files("rescue").joinpath(EXAMPLE).read_text(encoding="utf-8")


def _literal(value: str | int | tuple[str, ...]) -> str:
    """A TOML value: an integer, a basic string or an array of them."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_string(v) for v in value) + "]"
    return _string(value)


def _string(text: str) -> str:
    """A TOML basic string: quote and backslash escaped, and every control character
    (TOML allows none raw but tab; JSON's escapes would also split astral characters
    into surrogates, which TOML refuses)."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _values(answers: Answers) -> dict[tuple[str, str], str | None]:
    """(table, key) -> the new TOML value; None: comment the line out."""
    a = answers
    values: dict[tuple[str, str], str | None] = {
        ("postfix", "config_dir"): _literal(str(a.postfix_dir)),
        ("srs", "domain"): _literal(a.srs_domain),
        ("srs", "secret_file"): _literal(str(a.secret_file)),
        ("smarthost", "name"): _literal(a.smarthost_name),
        ("smarthost", "host"): _literal(a.smarthost_host),
        ("smarthost", "port"): _literal(a.port),
        ("smarthost", "tls"): _literal(a.tls),
        ("smarthost", "username"): None if a.username is None else _literal(a.username),
        ("smarthost", "password_file"): (
            None if a.password_file is None else _literal(str(a.password_file))
        ),
    }
    if a.nameservers:
        values["dns", "nameservers"] = _literal(a.nameservers)
    if a.dns_port is not None:
        values["dns", "port"] = _literal(a.dns_port)
    return values


def render(example: str, answers: Answers) -> str:
    """The example with the answers filled in (only the first, uncommented [[smarthost]])."""
    return fill(example, _values(answers))


def fill(example: str, values: Mapping[tuple[str, str], str | None]) -> str:
    out: list[str] = []
    table = ""
    smarthosts = 0
    done: set[tuple[str, str]] = set()
    for line in example.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header:
            table = header.group(1)
            if table == "smarthost":
                smarthosts += 1
        match = _KEY.match(line.rstrip("\n"))
        where = (table, match.group("key")) if match else None
        if match and where in values and (table != "smarthost" or smarthosts == 1):
            assert where is not None
            new = values[where]
            done.add(where)
            out.append("# " + line if new is None else _replaced(match, new))
        else:
            out.append(line)
    missing = [f"{table}.{key}" for table, key in values if (table, key) not in done]
    if missing:
        raise ConfigError(EXAMPLE, missing[0], "not found in the example to fill in")
    return "".join(out)


def _replaced(key: re.Match[str], new: str) -> str:
    """The line with the value `new`, its comment kept in the same column where it fits."""
    head = f"{key.group('key')}{key.group('eq')}{new}"
    comment = key.group("rest").strip()
    if not comment:
        return head + "\n"
    column = len(key.group(0)) - len(comment)
    return f"{head.ljust(column) if len(head) + 2 <= column else head + '  '}{comment}\n"


def spf_mechanism(host: str) -> str:
    """What lets `host` send in SPF: ip4:/ip6: for an address, a: for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"a:{host}"
    return f"ip{address.version}:{address}"


# In the MX record printed when no public name of this host is known.
MX_PLACEHOLDER = "MAIL-HOST-OF-THIS-SERVER"


def bounce_host(myhostname: str | None, fqdn: str) -> str | None:
    """The host bounces to the SRS domain go to: Postfix's myhostname, else this host's
    fully qualified name; None when neither looks like a public name (no dot, or a
    localhost name), rather than an MX record that would lose the bounces."""
    for candidate in (myhostname, fqdn):
        name = (candidate or "").strip().rstrip(".")
        if "." in name and not name.lower().startswith("localhost"):
            return name
    return None


def dns_records(answers: Answers, mx_host: str) -> list[str]:
    """The zone lines to publish for the SRS domain: bounces come to `mx_host`."""
    domain = answers.srs_domain.rstrip(".")
    return [
        f"{domain}.  IN MX   10 {mx_host.rstrip('.')}.",
        f'{domain}.  IN TXT  "v=spf1 {spf_mechanism(answers.smarthost_host)} -all"',
    ]


def main_cf_lines() -> list[str]:
    """The main.cf lines that turn bounces to SRS addresses back (srs serve's socket)."""
    return [
        f"recipient_canonical_maps = proxy:socketmap:unix:{SRS_SOCKET}:reverse",
        "recipient_canonical_classes = envelope_recipient, header_recipient",
    ]
