"""A Postfix lookup table queue-rescue owns: built with Postfix's postmap, swapped in whole.

Postfix reads the table on its hot path (transport_maps): it must exist at every moment
once main.cf names it, and must never be seen half written. So each version is built
beside the live one (a dot-file source, `postmap` makes its database) and renamed into
place, the database first: a reader opens either the old file or the new one. Postfix's
daemons notice by themselves that the file they have open was replaced (its link count
drops to zero) and restart after their current request: no `postfix reload`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rescue.config import INDEXED_MAP_SUFFIXES
from rescue.errors import PostfixError

POSTMAP_TIMEOUT = 60.0
# The table names transports, not secrets: Postfix's daemons (user postfix) must read it.
TABLE_MODE = 0o644


def render(entries: Mapping[str, str], comments: Mapping[str, str] | None = None) -> str:
    """The table's source text: `key<TAB>value` lines, sorted, each after its `# why`."""
    lines = ["# Written by queue-rescue; changed by the service, never by hand."]
    for key in sorted(entries):
        value = entries[key]
        if any(c.isspace() for c in key) or not value or "\n" in value:
            raise ValueError(f"not a lookup table entry: {key!r} -> {value!r}")
        why = (comments or {}).get(key)
        if why:
            lines.append("# " + " ".join(why.split()))
        lines.append(f"{key}\t{value}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class LookupTable:
    """TYPE:PATH as main.cf names it; `postmap -c config_dir` from `command_dir`."""

    map_type: str
    path: Path
    command_dir: Path = Path("/usr/sbin")
    config_dir: Path = Path("/etc/postfix")

    @property
    def spec(self) -> str:
        return f"{self.map_type}:{self.path}"

    @property
    def database(self) -> Path:
        return self.path.with_name(self.path.name + INDEXED_MAP_SUFFIXES[self.map_type])

    def exists(self) -> bool:
        return self.database.is_file()

    def ensure(self) -> bool:
        """Create the table empty unless it exists; whether it was created."""
        if self.exists():
            return False
        self.write({})
        return True

    def write(self, entries: Mapping[str, str], comments: Mapping[str, str] | None = None) -> None:
        """Replace the table's contents at once (see the module's docstring)."""
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PostfixError(f"cannot create {folder}: {exc}") from exc
        staged = folder / f".{self.path.name}.new"
        staged_db = staged.with_name(staged.name + INDEXED_MAP_SUFFIXES[self.map_type])
        try:
            _write_file(staged, render(entries, comments).encode("utf-8"))
            self._postmap(f"{self.map_type}:{staged}")
            os.chmod(staged_db, TABLE_MODE)
            _fsync(staged_db)
            os.replace(staged_db, self.database)
            os.replace(staged, self.path)
            _fsync_folder(folder)
        except OSError as exc:
            raise PostfixError(f"cannot write the lookup table {self.spec}: {exc}") from exc
        finally:
            for leftover in (staged, staged_db):
                leftover.unlink(missing_ok=True)

    def query(self, key: str) -> str | None:
        """What Postfix finds for `key` (`postmap -q`); None when it finds nothing."""
        result = self._run(["-q", key, self.spec])
        if result.returncode == 0:
            return result.stdout.decode("utf-8", "replace").strip()
        if result.returncode == 1 and not result.stderr.strip():
            return None
        raise PostfixError(f"postmap -q {key} {self.spec} failed: {_text(result)}")

    def _postmap(self, spec: str) -> None:
        result = self._run([spec])
        if result.returncode != 0:
            raise PostfixError(f"postmap {spec} failed: {_text(result)}")

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        postmap = str(self.command_dir / "postmap")
        try:
            return subprocess.run(
                [postmap, "-c", str(self.config_dir), *args],
                capture_output=True,
                timeout=POSTMAP_TIMEOUT,
                check=False,
            )
        except FileNotFoundError:
            raise PostfixError(f"{postmap} not found (check [postfix] command_dir)") from None
        except subprocess.TimeoutExpired:
            raise PostfixError(f"postmap did not finish in {POSTMAP_TIMEOUT:.0f}s") from None


def _text(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stderr.decode("utf-8", "replace").strip() or f"exit status {result.returncode}"


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, TABLE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
