"""Reading a TOML table: typed getters whose errors name the file and the key; secret files."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from rescue.config.values import Secret
from rescue.errors import ConfigError

T = TypeVar("T")
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# Set by systemd for a unit with LoadCredential= (systemd.exec(5), "Credentials").
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


class Table:
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
            if default is REQUIRED:
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
            match = DURATION.match(value)
            if not match:
                raise self.error(name, f'expected a duration like "30s", "5m", "2h", got {value!r}')
            seconds = float(match.group(1)) * UNIT_SECONDS[match.group(2)]
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

    def table(self, name: str) -> Table:
        value = self._get(name, dict, "a table", {})
        return Table(self.path, self.key(name), value)

    def tables(self, name: str) -> list[Table]:
        value = self._get(name, list, f"[[{name}]] tables", [])
        out = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConfigError(self.path, f"{self.key(name)}[{index}]", "expected a table")
            out.append(Table(self.path, f"{self.key(name)}[{index}]", item))
        return out

    def finish(self) -> None:
        """Unknown keys are mistakes (a typo would silently change behaviour)."""
        for name in self.data:
            if name not in self.used:
                raise self.error(name, "unknown key")


REQUIRED = object()


def read_secret_file(path: Path, table: Table, key: str, *, many: bool) -> tuple[Secret, ...]:
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
