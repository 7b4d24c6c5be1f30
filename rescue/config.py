"""Read and validate the TOML configuration once, into frozen values.

Every mistake becomes a ConfigError that names the file and the key, e.g.
``/etc/queue-rescue/config.toml: smarthost[0].port: expected an integer``.
Secrets are read from their own files, which must not be readable by group
or others; their values never appear in a repr, a log line or an error.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rescue.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/queue-rescue/config.toml")
CONFIG_ENV = "QUEUE_RESCUE_CONFIG"
DEFAULT_JOURNAL_PATH = Path("/var/lib/queue-rescue/journal.sqlite3")
DEFAULT_JOURNAL_KEEP = 30 * 86400.0
# The service's daily quotas and `status` count from the journal: keep at least a day.
MIN_JOURNAL_KEEP = 86400.0

TLS_MODES = ("starttls", "implicit", "none")
REROUTE_MODES = ("manual", "auto")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# Each service cycle has showq scan the whole queue; more often than this is only load.
MIN_INTERVAL = 1.0
# Set by systemd for a unit with LoadCredential= (systemd.exec(5), "Credentials").
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


@dataclass(frozen=True, slots=True)
class Secret:
    """A password or SRS secret; never shown in a repr or a log line."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(***)"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True, slots=True)
class PostfixConfig:
    config_dir: Path = Path("/etc/postfix")
    command_dir: Path = Path("/usr/sbin")
    # None: ask `postconf -h queue_directory` when the queue files are needed.
    queue_directory: Path | None = None
    # Relays Postfix itself sends through (besides its `relayhost`): a delay reason
    # naming one of them says nothing about the destination's provider.
    own_relays: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JournalConfig:
    path: Path = DEFAULT_JOURNAL_PATH
    # Settled messages (deleted, released, skipped) are forgotten after this long.
    keep: float = DEFAULT_JOURNAL_KEEP

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")


@dataclass(frozen=True, slots=True)
class SrsConfig:
    domain: str
    secret_file: Path
    secrets: tuple[Secret, ...]
    exclude_domains: tuple[str, ...] = ()
    hash_length: int = 4  # postsrsd's default
    max_age_days: int = 21  # postsrsd's default


@dataclass(frozen=True, slots=True)
class SmarthostConfig:
    name: str
    host: str
    port: int = 587
    tls: str = "starttls"
    username: str | None = None
    password_file: Path | None = None
    password: Secret | None = None
    max_connections: int = 8  # Postfix opens up to 20 to one destination
    timeout: float = 30.0
    ca_file: Path | None = None
    helo_name: str | None = None
    # After this many failed sessions in a row the smarthost rests for `cooldown`.
    max_failures: int = 3
    cooldown: float = 300.0
    # Sessions are closed and reopened after this many messages.
    max_messages_per_session: int = 100
    # The smarthost's quota (messages accepted in any hour / day); the service keeps
    # to it, counting from the journal. None: no limit.
    max_per_hour: int | None = None
    max_per_day: int | None = None


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """A `[[provider]]` table: overrides or extends a catalog entry by name."""

    name: str
    label: str | None = None
    mx: tuple[str, ...] | None = None
    domains: tuple[str, ...] | None = None
    reasons: tuple[str, ...] | None = None
    reroute: str = "manual"
    min_age: float = 0.0
    min_messages: int = 1
    max_per_cycle: int | None = None


@dataclass(frozen=True, slots=True)
class RetryConfig:
    attempts: int = 5
    max_wait: float = 300.0
    initial_wait: float = 1.0


@dataclass(frozen=True, slots=True)
class DnsConfig:
    nameservers: tuple[str, ...] = ()  # empty: the system's resolv.conf
    port: int = 53
    timeout: float = 5.0
    concurrency: int = 20
    # Ask DNS for the MX of recipient domains whose delay reason names no provider host.
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The `[service]` table: how `queue-rescue run` works."""

    interval: float = 60.0  # seconds from the start of one cycle to the next
    # Where Prometheus scrapes the metrics: (host, port); None: no metrics served.
    metrics_listen: tuple[str, int] | None = None


# Postfix lookup table types that postmap builds into one database file beside the source
# (the suffix Postfix opens for each; DB_README, LMDB_README, CDB_README).
INDEXED_MAP_SUFFIXES = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}
DEFAULT_ROUTE_MAP = "hash:/var/lib/queue-rescue/route"
DEFAULT_RELAY_LISTEN = "127.0.0.1:10026"


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """The `[route]` table: route new mail around a provider the service reroutes."""

    map_type: str = "hash"
    map_path: Path = Path("/var/lib/queue-rescue/route")
    # Where the relay endpoint listens: ("inet", host, port) speaks SMTP, ("unix", path, 0)
    # speaks LMTP (Postfix's smtp client has no unix sockets; its lmtp client has).
    relay_listen: tuple[str, str, int] = ("inet", "127.0.0.1", 10026)
    probe_interval: float = 60.0
    recover_after: int = 3
    # The port the provider's MX listens on (25; a lab's fake provider has its own).
    probe_port: int = 25
    probe_timeout: float = 30.0
    probe_helo: str | None = None  # None: the host's name, as Postfix's smtp_helo_name

    @property
    def map(self) -> str:
        return f"{self.map_type}:{self.map_path}"

    @property
    def database(self) -> Path:
        """The file Postfix opens (the source plus its type's suffix)."""
        suffix = INDEXED_MAP_SUFFIXES[self.map_type]
        return self.map_path.with_name(self.map_path.name + suffix)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    postfix: PostfixConfig
    journal: JournalConfig
    srs: SrsConfig
    smarthosts: tuple[SmarthostConfig, ...]
    providers: tuple[ProviderConfig, ...]
    retry: RetryConfig
    dns: DnsConfig
    service: ServiceConfig = ServiceConfig()
    route: RouteConfig | None = None  # None: no [route] table, nothing is routed


# --- loading --------------------------------------------------------------------------

T = TypeVar("T")


class _Table:
    """A TOML table being read: typed getters that name the file and key on error."""

    def __init__(self, path: Path, prefix: str, data: Mapping[str, Any]) -> None:
        self.path = path
        self.prefix = prefix
        self.data = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), problem)

    def _get(self, name: str, kind: type | tuple[type, ...], what: str, default: Any) -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise self.error(name, "is required")
            return default
        value = self.data[name]
        # bool is an int in Python; a port of `true` is still a mistake.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(name, f"expected {what}, got {value!r}")
        if not isinstance(value, kind):
            raise self.error(name, f"expected {what}, got {value!r}")
        return value

    def get_str(self, name: str, default: Any = None) -> Any:
        value = self._get(name, str, "a string", default)
        if isinstance(value, str) and not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def get_int(self, name: str, default: Any = None, *, minimum: int = 0) -> Any:
        value = self._get(name, int, "an integer", default)
        if isinstance(value, int) and value < minimum:
            raise self.error(name, f"must be at least {minimum}, got {value}")
        return value

    def get_bool(self, name: str, default: Any = None) -> Any:
        return self._get(name, bool, "true or false", default)

    def get_path(self, name: str, default: Any = None) -> Any:
        value = self.get_str(name, default)
        if isinstance(value, str):
            path = Path(value)
            # Relative paths are taken from the config file's folder, not the cwd.
            return path if path.is_absolute() else (self.path.parent / path)
        return value

    def get_duration(self, name: str, default: Any = None) -> Any:
        value = self._get(name, (int, float, str), 'a duration like "30s", "5m", "2h"', default)
        if value is default:
            return value
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            match = _DURATION.match(value)
            if not match:
                raise self.error(name, f'expected a duration like "30s", "5m", "2h", got {value!r}')
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if seconds < 0:
            raise self.error(name, "must not be negative")
        return seconds

    def get_str_list(self, name: str, default: Any = None) -> Any:
        value = self._get(name, list, "a list of strings", default)
        if value is default:
            return value
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise ConfigError(
                    self.path, f"{self.key(name)}[{index}]", f"expected a string, got {item!r}"
                )
        return tuple(value)

    def get_choice(self, name: str, choices: tuple[str, ...], default: Any = None) -> Any:
        value = self.get_str(name, default)
        if value is not None and value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def table(self, name: str) -> _Table:
        value = self._get(name, dict, "a table", {})
        return _Table(self.path, self.key(name), value)

    def tables(self, name: str) -> list[_Table]:
        value = self._get(name, list, f"[[{name}]] tables", [])
        out = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConfigError(self.path, f"{self.key(name)}[{index}]", "expected a table")
            out.append(_Table(self.path, f"{self.key(name)}[{index}]", item))
        return out

    def finish(self) -> None:
        """Unknown keys are mistakes (a typo would silently change behaviour)."""
        for name in self.data:
            if name not in self.used:
                raise self.error(name, "unknown key")


_REQUIRED = object()


def read_secret_file(path: Path, table: _Table, key: str, *, many: bool) -> tuple[Secret, ...]:
    """Read a secret file, refusing one that group or others may read or write."""
    path = credential_or(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise table.error(key, f"{path} is not a regular file")
        if st.st_mode & 0o077:
            raise table.error(
                key,
                f"{path} is readable or writable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}",
            )
        text = path.read_text(encoding="utf-8")
    except ConfigError:
        raise
    except FileNotFoundError:
        raise table.error(key, f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise table.error(key, f"cannot read {path}: {exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    values = [line for line in lines if line and not line.startswith("#")]
    if not values:
        raise table.error(key, f"{path} holds no secret")
    if not many:
        values = values[:1]
    return tuple(Secret(v) for v in values)


def credential_or(path: Path) -> Path:
    """The systemd credential named like `path`'s file, when the service has one; else `path`.

    Under systemd, `LoadCredential=srs-secrets:/etc/queue-rescue/srs-secrets` hands the
    service a private copy (or a decrypted LoadCredentialEncrypted= one): the config keeps
    naming the real file, so the same config.toml also works for commands run by hand.
    """
    folder = os.environ.get(CREDENTIALS_ENV)
    if folder:
        credential = Path(folder) / path.name
        if credential.is_file():
            return credential
    return path


def _read_postfix(top: _Table) -> PostfixConfig:
    t = top.table("postfix")
    cfg = PostfixConfig(
        config_dir=t.get_path("config_dir", Path("/etc/postfix")),
        command_dir=t.get_path("command_dir", Path("/usr/sbin")),
        queue_directory=t.get_path("queue_directory", None),
        own_relays=_lower(t.get_str_list("own_relays", ())) or (),
    )
    t.finish()
    return cfg


def _read_journal(top: _Table) -> JournalConfig:
    t = top.table("journal")
    keep = t.get_duration("keep", DEFAULT_JOURNAL_KEEP)
    if keep < MIN_JOURNAL_KEEP:
        raise t.error("keep", "must be at least 1d (the service's daily quotas count from it)")
    cfg = JournalConfig(path=t.get_path("path", DEFAULT_JOURNAL_PATH), keep=keep)
    t.finish()
    return cfg


def _read_srs(top: _Table) -> SrsConfig:
    if "srs" not in top.data:
        raise top.error("srs", "the [srs] table is required (domain and secret_file)")
    t = top.table("srs")
    secret_file = t.get_path("secret_file", _REQUIRED)
    cfg = SrsConfig(
        domain=t.get_str("domain", _REQUIRED).lower(),
        secret_file=secret_file,
        secrets=read_secret_file(secret_file, t, "secret_file", many=True),
        exclude_domains=tuple(d.lower() for d in t.get_str_list("exclude_domains", ())),
        hash_length=t.get_int("hash_length", 4, minimum=4),
        max_age_days=t.get_int("max_age_days", 21, minimum=1),
    )
    t.finish()
    return cfg


def _read_smarthost(t: _Table) -> SmarthostConfig:
    password_file = t.get_path("password_file", None)
    username = t.get_str("username", None)
    password = None
    if password_file is not None:
        password = read_secret_file(password_file, t, "password_file", many=False)[0]
        if username is None:
            raise t.error("username", "is required when password_file is set")
    elif username is not None:
        raise t.error("password_file", "is required when username is set")
    tls = t.get_choice("tls", TLS_MODES, "starttls")
    default_port = {"starttls": 587, "implicit": 465, "none": 25}[tls]
    cfg = SmarthostConfig(
        name=t.get_str("name", _REQUIRED),
        host=t.get_str("host", _REQUIRED),
        port=t.get_int("port", default_port, minimum=1),
        tls=tls,
        username=username,
        password_file=password_file,
        password=password,
        max_connections=t.get_int("max_connections", 8, minimum=1),
        timeout=t.get_duration("timeout", 30.0),
        ca_file=t.get_path("ca_file", None),
        helo_name=t.get_str("helo_name", None),
        max_failures=t.get_int("max_failures", 3, minimum=1),
        cooldown=t.get_duration("cooldown", 300.0),
        max_messages_per_session=t.get_int("max_messages_per_session", 100, minimum=1),
        max_per_hour=t.get_int("max_per_hour", None, minimum=1),
        max_per_day=t.get_int("max_per_day", None, minimum=1),
    )
    if cfg.port > 65535:
        raise t.error("port", f"must be at most 65535, got {cfg.port}")
    if cfg.password is not None and cfg.tls == "none":
        # AUTH would send the password in clear text.
        raise t.error("tls", 'AUTH (username/password_file) needs tls = "starttls" or "implicit"')
    if cfg.ca_file is not None and not cfg.ca_file.is_file():
        raise t.error("ca_file", f"{cfg.ca_file} does not exist")
    t.finish()
    return cfg


def _compile_reasons(t: _Table, key: str, patterns: tuple[str, ...] | None) -> None:
    for index, pattern in enumerate(patterns or ()):
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(
                t.path, f"{t.key(key)}[{index}]", f"not a valid regex: {exc}"
            ) from None


def _read_provider(t: _Table) -> ProviderConfig:
    name = t.get_str("name", _REQUIRED).lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise t.error("name", f"use letters, digits, '.', '_' and '-' only, got {name!r}")
    cfg = ProviderConfig(
        name=name,
        label=t.get_str("label", None),
        mx=t.get_str_list("mx", None),
        domains=_lower(t.get_str_list("domains", None)),
        reasons=t.get_str_list("reasons", None),
        reroute=t.get_choice("reroute", REROUTE_MODES, "manual"),
        min_age=t.get_duration("min_age", 0.0),
        min_messages=t.get_int("min_messages", 1, minimum=1),
        max_per_cycle=t.get_int("max_per_cycle", None, minimum=1),
    )
    _compile_reasons(t, "reasons", cfg.reasons)
    t.finish()
    return cfg


def _lower(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(v.lower() for v in values)


def _read_retry(top: _Table) -> RetryConfig:
    t = top.table("retry")
    cfg = RetryConfig(
        attempts=t.get_int("attempts", 5, minimum=1),
        max_wait=t.get_duration("max_wait", 300.0),
        initial_wait=t.get_duration("initial_wait", 1.0),
    )
    t.finish()
    return cfg


def _read_dns(top: _Table) -> DnsConfig:
    t = top.table("dns")
    cfg = DnsConfig(
        nameservers=t.get_str_list("nameservers", ()),
        port=t.get_int("port", 53, minimum=1),
        timeout=t.get_duration("timeout", 5.0),
        concurrency=t.get_int("concurrency", 20, minimum=1),
        enabled=t.get_bool("enabled", True),
    )
    t.finish()
    return cfg


def _read_service(top: _Table) -> ServiceConfig:
    t = top.table("service")
    interval = t.get_duration("interval", 60.0)
    if interval < MIN_INTERVAL:
        raise t.error("interval", f"must be at least {MIN_INTERVAL:g}s")
    listen = t.get_str("metrics_listen", None)
    cfg = ServiceConfig(
        interval=interval,
        metrics_listen=None if listen is None else _host_port(t, "metrics_listen", listen),
    )
    t.finish()
    return cfg


def _read_route(top: _Table) -> RouteConfig | None:
    if "route" not in top.data:
        top.used.add("route")
        return None
    t = top.table("route")
    spec = t.get_str("map", DEFAULT_ROUTE_MAP)
    map_type, sep, map_path = spec.partition(":")
    if not sep or map_type not in INDEXED_MAP_SUFFIXES or not Path(map_path).is_absolute():
        raise t.error(
            "map",
            f"expected TYPE:/absolute/path with TYPE one of {', '.join(INDEXED_MAP_SUFFIXES)}, "
            f"got {spec!r}",
        )
    listen = t.get_str("relay_listen", DEFAULT_RELAY_LISTEN)
    cfg = RouteConfig(
        map_type=map_type,
        map_path=Path(map_path),
        relay_listen=_relay_listen(t, listen),
        probe_interval=t.get_duration("probe_interval", 60.0),
        recover_after=t.get_int("recover_after", 3, minimum=1),
        probe_port=t.get_int("probe_port", 25, minimum=1),
        probe_timeout=t.get_duration("probe_timeout", 30.0),
        probe_helo=t.get_str("probe_helo", None),
    )
    if cfg.probe_interval < MIN_INTERVAL:
        raise t.error("probe_interval", f"must be at least {MIN_INTERVAL:g}s")
    t.finish()
    return cfg


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _relay_listen(t: _Table, text: str) -> tuple[str, str, int]:
    """("unix", path, 0) or ("inet", host, port); only loopback: never an open relay."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not Path(path).is_absolute():
            raise t.error("relay_listen", f"a unix socket needs an absolute path, got {text!r}")
        return "unix", path, 0
    host, port = _host_port(t, "relay_listen", text.removeprefix("inet:"))
    if not _is_loopback(host):
        raise t.error(
            "relay_listen",
            f"must be a loopback address or unix:/path (never an open relay), got {text!r}",
        )
    return "inet", host, port


def _host_port(t: _Table, key: str, text: str) -> tuple[str, int]:
    """(host, port) from "127.0.0.1:9465", "[::1]:9465" or "localhost:9465"."""
    host, sep, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise t.error(key, f'expected "host:port" like "127.0.0.1:9465", got {text!r}')
    return host, int(port)


def _unique(tables: list[T], names: Callable[[T], str], top: _Table, key: str) -> None:
    seen: set[str] = set()
    for index, item in enumerate(tables):
        name = names(item)
        if name in seen:
            raise ConfigError(top.path, f"{key}[{index}].name", f"duplicate name {name!r}")
        seen.add(name)


def parse_config(path: Path, text: str) -> Config:
    """Validate a configuration text; `path` is only used to name the file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    top = _Table(path, "", data)
    smarthost_tables = top.tables("smarthost")
    if not smarthost_tables:
        raise top.error("smarthost", "at least one [[smarthost]] is required")
    smarthosts = tuple(_read_smarthost(t) for t in smarthost_tables)
    _unique(list(smarthosts), lambda s: s.name, top, "smarthost")
    providers = tuple(_read_provider(t) for t in top.tables("provider"))
    _unique(list(providers), lambda p: p.name, top, "provider")
    cfg = Config(
        path=path,
        postfix=_read_postfix(top),
        journal=_read_journal(top),
        srs=_read_srs(top),
        smarthosts=smarthosts,
        providers=providers,
        retry=_read_retry(top),
        dns=_read_dns(top),
        service=_read_service(top),
        route=_read_route(top),
    )
    top.finish()
    return cfg


def load_srs_config(path: Path) -> SrsConfig:
    """Only the [srs] table: for `srs` commands, which need no smarthost password.

    The SRS server handles mail from strangers; it should not hold the smarthosts'
    passwords, nor fail because their files are not among its credentials.
    """
    text = _read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    return _read_srs(_Table(path, "", data))


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The file to read: --config, then $QUEUE_RESCUE_CONFIG, then the default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: Path) -> Config:
    return parse_config(path, _read_text(path))


def _read_text(path: Path) -> str:
    """The configuration file's text, or a ConfigError that says why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            path, None, "no such file (use --config or $QUEUE_RESCUE_CONFIG)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
