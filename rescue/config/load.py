"""Finding, reading and validating the configuration file as a whole."""

from __future__ import annotations

import os
import tomllib
from dataclasses import replace
from pathlib import Path

from rescue.config.reader import Table
from rescue.config.tables import (
    read_diagnose,
    read_dns,
    read_journal,
    read_postfix,
    read_provider,
    read_retry,
    read_route,
    read_service,
    read_smarthost,
    read_srs,
    unique,
)
from rescue.config.values import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    INIT_HINT,
    Config,
    SrsConfig,
    missing_section,
)
from rescue.errors import ConfigError


def parse_config(path: Path, text: str) -> Config:
    """Validate a configuration text; `path` is only used to name the file."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    top = Table(path, "", data)
    smarthosts = tuple(read_smarthost(t) for t in top.tables("smarthost"))
    unique(list(smarthosts), lambda s: s.name, top, "smarthost")
    providers = tuple(read_provider(t) for t in top.tables("provider"))
    unique(list(providers), lambda p: p.name, top, "provider")
    cfg = Config(
        path=path,
        postfix=read_postfix(top),
        journal=read_journal(top),
        srs=read_srs(top),
        smarthosts=smarthosts,
        providers=providers,
        retry=read_retry(top),
        dns=read_dns(top),
        service=read_service(top),
        diagnose=read_diagnose(top),
        route=read_route(top),
    )
    top.finish()
    return cfg


def load_srs_config(path: Path) -> SrsConfig:
    """Only the [srs] table: for `srs` commands, which need no smarthost password.

    The SRS server handles mail from strangers; it should not hold the smarthosts'
    passwords, nor fail because their files are not among its credentials.
    """
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise missing_section(path, "srs", from_file=False) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    srs = read_srs(Table(path, "", data))
    if srs is None:
        raise missing_section(path, "srs")
    return srs


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The file to read: --config, then $QUEUE_RESCUE_CONFIG, then the default."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: Path, *, missing_ok: bool = False) -> Config:
    """The file's configuration; with `missing_ok`, the defaults when there is no file.

    Only the default path may be missing: a file named by --config or
    $QUEUE_RESCUE_CONFIG that is not there is a mistake, not a wish for defaults.
    """
    try:
        text = read_text(path)
    except FileNotFoundError:
        if missing_ok:
            return replace(parse_config(path, ""), from_file=False)
        where = (
            f"name one with --config or ${CONFIG_ENV}, or " if path == DEFAULT_CONFIG_PATH else ""
        )
        raise ConfigError(path, None, f"no such file; {where}{INIT_HINT}") from None
    return parse_config(path, text)


def read_text(path: Path) -> str:
    """The configuration file's text (FileNotFoundError passes), or a ConfigError."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
