"""Read and validate the TOML configuration once, into frozen values.

Every mistake becomes a ConfigError that names the file and the key, e.g.
``/etc/queue-rescue/config.toml: smarthost[0].port: expected an integer``.
Secrets are read from their own files, which must not be readable by group
or others; their values never appear in a repr, a log line or an error.

`values` holds the frozen dataclasses, `reader` the typed getters of one TOML table,
`tables` one reader per table, `load` the file as a whole. Everything else imports
from here. Imports only `rescue.errors`.
"""

from __future__ import annotations

from rescue.config.load import (
    config_path,
    load_config,
    load_srs_config,
    parse_config,
)
from rescue.config.reader import (
    CREDENTIALS_ENV,
    credential_or,
    read_secret_file,
)
from rescue.config.values import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    DEFAULT_DNSBL,
    DEFAULT_JOURNAL_KEEP,
    DEFAULT_JOURNAL_PATH,
    DEFAULT_PORTS,
    DEFAULT_RELAY_LISTEN,
    DEFAULT_ROUTE_MAP,
    INDEXED_MAP_SUFFIXES,
    INIT_HINT,
    MAX_STOP_TIMEOUT,
    MIN_INTERVAL,
    MIN_JOURNAL_KEEP,
    REROUTE_MODES,
    TLS_MODES,
    Config,
    DiagnoseConfig,
    DnsConfig,
    JournalConfig,
    PostfixConfig,
    ProviderConfig,
    RetryConfig,
    RouteConfig,
    Secret,
    Sending,
    ServiceConfig,
    SmarthostConfig,
    SrsConfig,
    missing_section,
    sending,
)
from rescue.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "CREDENTIALS_ENV",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DNSBL",
    "DEFAULT_JOURNAL_KEEP",
    "DEFAULT_JOURNAL_PATH",
    "DEFAULT_PORTS",
    "DEFAULT_RELAY_LISTEN",
    "DEFAULT_ROUTE_MAP",
    "INDEXED_MAP_SUFFIXES",
    "INIT_HINT",
    "MAX_STOP_TIMEOUT",
    "MIN_INTERVAL",
    "MIN_JOURNAL_KEEP",
    "REROUTE_MODES",
    "TLS_MODES",
    "Config",
    "ConfigError",
    "DiagnoseConfig",
    "DnsConfig",
    "JournalConfig",
    "PostfixConfig",
    "ProviderConfig",
    "RetryConfig",
    "RouteConfig",
    "Secret",
    "Sending",
    "ServiceConfig",
    "SmarthostConfig",
    "SrsConfig",
    "config_path",
    "credential_or",
    "load_config",
    "load_srs_config",
    "missing_section",
    "parse_config",
    "read_secret_file",
    "sending",
]
