"""The configuration as frozen values: one dataclass per table, and their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rescue.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/queue-rescue/config.toml")
CONFIG_ENV = "QUEUE_RESCUE_CONFIG"
DEFAULT_JOURNAL_PATH = Path("/var/lib/queue-rescue/journal.sqlite3")
DEFAULT_JOURNAL_KEEP = 30 * 86400.0
# The service's daily quotas and `status` count from the journal: keep at least a day.
MIN_JOURNAL_KEEP = 86400.0

TLS_MODES = ("starttls", "implicit", "none")
# Submission (RFC 6409), submissions (RFC 8314), SMTP.
DEFAULT_PORTS = {"starttls": 587, "implicit": 465, "none": 25}
REROUTE_MODES = ("manual", "auto")

# Each service cycle has showq scan the whole queue; more often than this is only load.
MIN_INTERVAL = 1.0
# [service] stop_timeout: below systemd/queue-rescue.service TimeoutStopSec (60s).
MAX_STOP_TIMEOUT = 45.0


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
    # At most this many DNS queries per scan (or service cycle) to recognise MX hosts that
    # no provider pattern names, through their CNAME, PTR and NS records; 0: never.
    host_queries: int = 200


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The `[service]` table: how `queue-rescue run` works."""

    interval: float = 60.0  # seconds from the start of one cycle to the next
    # Where Prometheus scrapes the metrics: (host, port); None: no metrics served.
    metrics_listen: tuple[str, int] | None = None
    # After SIGTERM: half of it for answers to final dots still awaited, then their
    # connections are dropped; the rest to give everything back. The unit's
    # TimeoutStopSec must be longer.
    stop_timeout: float = 20.0


# Public DNS block lists queried by `diagnose` by default: Spamhaus ZEN (it refuses
# queries from public resolvers with 127.255.255.x), SpamCop, and NiX Spam, which many
# German providers use.
DEFAULT_DNSBL = ("zen.spamhaus.org", "bl.spamcop.net", "ix.dnsbl.manitu.net")


@dataclass(frozen=True, slots=True)
class DiagnoseConfig:
    """The `[diagnose]` table: what `queue-rescue diagnose` checks, and how long it may take."""

    # The address providers see this host's mail come from; None: the local address of
    # the default route (wrong behind NAT).
    public_ip: str | None = None
    dnsbl: tuple[str, ...] = DEFAULT_DNSBL
    probe_port: int = 25  # RFC 5321 section 4.5.4.1: where MX hosts listen
    budget: float = 60.0  # seconds for the whole run: DNS and probes
    # Where the sender domains' own name servers are asked (the ns check).
    ns_port: int = 53


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
    """The whole file. Looking (scan, providers, check) needs none of it; sending does."""

    path: Path
    postfix: PostfixConfig
    journal: JournalConfig
    # None / empty: the file has no [srs] / [[smarthost]]; see sending().
    srs: SrsConfig | None
    smarthosts: tuple[SmarthostConfig, ...]
    providers: tuple[ProviderConfig, ...]
    retry: RetryConfig
    dns: DnsConfig
    service: ServiceConfig = ServiceConfig()
    diagnose: DiagnoseConfig = DiagnoseConfig()
    route: RouteConfig | None = None  # None: no [route] table, nothing is routed
    # False: there is no file at `path`; every value is its default.
    from_file: bool = True


@dataclass(frozen=True, slots=True)
class Sending:
    """What the commands that send mail (flush, run, srs) need besides the rest."""

    srs: SrsConfig
    smarthosts: tuple[SmarthostConfig, ...]  # at least one

    @property
    def primary(self) -> SmarthostConfig:
        return self.smarthosts[0]


INIT_HINT = "create it with `queue-rescue init` (or see config.example.toml)"


def missing_section(path: Path, key: str, *, from_file: bool = True) -> ConfigError:
    """The error of a command that sends when the file lacks `key` ("srs", "smarthost")."""
    section = "[srs]" if key == "srs" else "[[smarthost]]"
    if not from_file:
        return ConfigError(path, None, f"no such file; sending mail needs {section}: {INIT_HINT}")
    what = "the [srs] table" if key == "srs" else "at least one [[smarthost]]"
    return ConfigError(path, key, f"{what} is needed to send mail: {INIT_HINT}")


def sending(cfg: Config) -> Sending:
    """The [srs] and [[smarthost]] sections, required here, at the point of use."""
    if cfg.srs is None:
        raise missing_section(cfg.path, "srs", from_file=cfg.from_file)
    if not cfg.smarthosts:
        raise missing_section(cfg.path, "smarthost", from_file=cfg.from_file)
    return Sending(cfg.srs, cfg.smarthosts)
