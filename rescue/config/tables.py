"""One reader per table of the configuration file, each into its frozen value."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path

from rescue.config.reader import REQUIRED, T, Table, read_secret_file
from rescue.config.values import (
    DEFAULT_DNSBL,
    DEFAULT_JOURNAL_KEEP,
    DEFAULT_JOURNAL_PATH,
    DEFAULT_PORTS,
    DEFAULT_RELAY_LISTEN,
    DEFAULT_ROUTE_MAP,
    INDEXED_MAP_SUFFIXES,
    MAX_STOP_TIMEOUT,
    MIN_INTERVAL,
    MIN_JOURNAL_KEEP,
    REROUTE_MODES,
    TLS_MODES,
    DiagnoseConfig,
    DnsConfig,
    JournalConfig,
    PostfixConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    ServiceConfig,
    SmarthostConfig,
    SrsConfig,
)
from rescue.errors import ConfigError


def read_postfix(top: Table) -> PostfixConfig:
    t = top.table("postfix")
    cfg = PostfixConfig(
        config_dir=t.get_path("config_dir", Path("/etc/postfix")),
        command_dir=t.get_path("command_dir", Path("/usr/sbin")),
        queue_directory=t.get_path("queue_directory", None),
        own_relays=lower(t.get_str_list("own_relays", ())) or (),
    )
    t.finish()
    return cfg


def read_journal(top: Table) -> JournalConfig:
    t = top.table("journal")
    keep = t.get_duration("keep", DEFAULT_JOURNAL_KEEP)
    if keep < MIN_JOURNAL_KEEP:
        raise t.error("keep", "must be at least 1d (the service's daily quotas count from it)")
    cfg = JournalConfig(path=t.get_path("path", DEFAULT_JOURNAL_PATH), keep=keep)
    t.finish()
    return cfg


def read_srs(top: Table) -> SrsConfig | None:
    if "srs" not in top.data:
        top.used.add("srs")
        return None
    t = top.table("srs")
    secret_file = t.get_path("secret_file", REQUIRED)
    cfg = SrsConfig(
        domain=t.get_str("domain", REQUIRED).lower(),
        secret_file=secret_file,
        secrets=read_secret_file(secret_file, t, "secret_file", many=True),
        exclude_domains=tuple(d.lower() for d in t.get_str_list("exclude_domains", ())),
        hash_length=t.get_int("hash_length", 4, minimum=4),
        max_age_days=t.get_int("max_age_days", 21, minimum=1),
    )
    t.finish()
    return cfg


def read_smarthost(t: Table) -> SmarthostConfig:
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
    default_port = DEFAULT_PORTS[tls]
    cfg = SmarthostConfig(
        name=t.get_str("name", REQUIRED),
        host=t.get_str("host", REQUIRED),
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


def compile_reasons(t: Table, key: str, patterns: tuple[str, ...] | None) -> None:
    for index, pattern in enumerate(patterns or ()):
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(
                t.path, f"{t.key(key)}[{index}]", f"not a valid regex: {exc}"
            ) from None


def read_provider(t: Table) -> ProviderConfig:
    name = t.get_str("name", REQUIRED).lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", name):
        raise t.error("name", f"use letters, digits, '.', '_' and '-' only, got {name!r}")
    cfg = ProviderConfig(
        name=name,
        label=t.get_str("label", None),
        mx=t.get_str_list("mx", None),
        domains=lower(t.get_str_list("domains", None)),
        reasons=t.get_str_list("reasons", None),
        reroute=t.get_choice("reroute", REROUTE_MODES, "manual"),
        min_age=t.get_duration("min_age", 0.0),
        min_messages=t.get_int("min_messages", 1, minimum=1),
        max_per_cycle=t.get_int("max_per_cycle", None, minimum=1),
    )
    compile_reasons(t, "reasons", cfg.reasons)
    t.finish()
    return cfg


def lower(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(v.lower() for v in values)


def read_retry(top: Table) -> RetryConfig:
    t = top.table("retry")
    cfg = RetryConfig(
        attempts=t.get_int("attempts", 5, minimum=1),
        max_wait=t.get_duration("max_wait", 300.0),
        initial_wait=t.get_duration("initial_wait", 1.0),
    )
    t.finish()
    return cfg


def read_dns(top: Table) -> DnsConfig:
    t = top.table("dns")
    cfg = DnsConfig(
        nameservers=t.get_str_list("nameservers", ()),
        port=t.get_int("port", 53, minimum=1),
        timeout=t.get_duration("timeout", 5.0),
        concurrency=t.get_int("concurrency", 20, minimum=1),
        enabled=t.get_bool("enabled", True),
        host_queries=t.get_int("host_queries", 200, minimum=0),
    )
    t.finish()
    return cfg


def read_service(top: Table) -> ServiceConfig:
    t = top.table("service")
    interval = t.get_duration("interval", 60.0)
    if interval < MIN_INTERVAL:
        raise t.error("interval", f"must be at least {MIN_INTERVAL:g}s")
    listen = t.get_str("metrics_listen", None)
    stop_timeout = t.get_duration("stop_timeout", 20.0)
    if not 0 < stop_timeout <= MAX_STOP_TIMEOUT:
        raise t.error(
            "stop_timeout",
            f"must be above 0s and at most {MAX_STOP_TIMEOUT:g}s (the unit's TimeoutStopSec "
            "is 60s)",
        )
    cfg = ServiceConfig(
        interval=interval,
        metrics_listen=None if listen is None else host_port(t, "metrics_listen", listen),
        stop_timeout=stop_timeout,
    )
    t.finish()
    return cfg


def read_diagnose(top: Table) -> DiagnoseConfig:
    t = top.table("diagnose")
    public_ip = t.get_str("public_ip", None)
    if public_ip is not None:
        try:
            public_ip = str(ipaddress.ip_address(public_ip.strip()))
        except ValueError:
            raise t.error("public_ip", f"not an IP address: {public_ip!r}") from None
    cfg = DiagnoseConfig(
        public_ip=public_ip,
        dnsbl=tuple(z.lower().rstrip(".") for z in t.get_str_list("dnsbl", DEFAULT_DNSBL)),
        probe_port=t.get_int("probe_port", 25, minimum=1),
        budget=t.get_duration("budget", 60.0),
        ns_port=t.get_int("ns_port", 53, minimum=1),
    )
    for key in ("probe_port", "ns_port"):
        if getattr(cfg, key) > 65535:
            raise t.error(key, f"must be at most 65535, got {getattr(cfg, key)}")
    if cfg.budget <= 0:
        raise t.error("budget", "must be more than 0")
    t.finish()
    return cfg


def read_route(top: Table) -> RouteConfig | None:
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
        relay_listen=relay_listen(t, listen),
        probe_interval=t.get_duration("probe_interval", 60.0),
        recover_after=t.get_int("recover_after", 3, minimum=1),
        probe_port=t.get_int("probe_port", 25, minimum=1),
        probe_timeout=t.get_duration("probe_timeout", 30.0),
        probe_helo=t.get_str("probe_helo", None),
    )
    if cfg.probe_interval < MIN_INTERVAL:
        raise t.error("probe_interval", f"must be at least {MIN_INTERVAL:g}s")
    if cfg.probe_port > 65535:
        raise t.error("probe_port", f"must be at most 65535, got {cfg.probe_port}")
    t.finish()
    return cfg


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def relay_listen(t: Table, text: str) -> tuple[str, str, int]:
    """("unix", path, 0) or ("inet", host, port); only loopback: never an open relay."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not Path(path).is_absolute():
            raise t.error("relay_listen", f"a unix socket needs an absolute path, got {text!r}")
        return "unix", path, 0
    host, port = host_port(t, "relay_listen", text.removeprefix("inet:"))
    if not is_loopback(host):
        raise t.error(
            "relay_listen",
            f"must be a loopback address or unix:/path (never an open relay), got {text!r}",
        )
    return "inet", host, port


def host_port(t: Table, key: str, text: str) -> tuple[str, int]:
    """(host, port) from "127.0.0.1:9465", "[::1]:9465" or "localhost:9465"."""
    host, sep, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise t.error(key, f'expected "host:port" like "127.0.0.1:9465", got {text!r}')
    return host, int(port)


def unique(tables: list[T], names: Callable[[T], str], top: Table, key: str) -> None:
    seen: set[str] = set()
    for index, item in enumerate(tables):
        name = names(item)
        if name in seen:
            raise ConfigError(top.path, f"{key}[{index}].name", f"duplicate name {name!r}")
        seen.add(name)
