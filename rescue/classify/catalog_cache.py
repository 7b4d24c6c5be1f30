"""The built-in catalog's data, from a JSON copy of providers.toml when it is current.

Parsing the 90 KB providers.toml with tomllib is a tenth of a small scan's
start-up; json reads the same data ten times faster. The copy
(providers.json, package data beside the TOML) names the TOML's length and
CRC-32: after any change to the TOML it no longer matches, and the TOML is
parsed as before (tests/unit/test_catalog_cache.py fails until the copy is
made again: `python -m rescue.classify.catalog_cache`).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

BUILTIN_CATALOG = "providers.toml"
BUILTIN_COPY = "providers.json"


def _fingerprint(raw: bytes) -> str:
    return f"{len(raw)}:{zlib.crc32(raw):08x}"


def copy_text(raw: bytes) -> str:
    """The JSON copy of a catalog file's bytes."""
    import tomllib  # noqa: PLC0415  (only when the copy is missing or out of date)

    data = tomllib.loads(raw.decode("utf-8"))
    return json.dumps({"toml": _fingerprint(raw), "catalog": data}, ensure_ascii=False) + "\n"


def builtin_data(folder: Path) -> dict[str, Any]:
    """providers.toml's data: from its copy if that is of these very bytes, else parsed."""
    raw = (folder / BUILTIN_CATALOG).read_bytes()
    try:
        copy = json.loads((folder / BUILTIN_COPY).read_bytes())
    except (OSError, ValueError):
        copy = None
    if isinstance(copy, dict) and copy.get("toml") == _fingerprint(raw):
        data = copy.get("catalog")
        if isinstance(data, dict):
            return data
    import tomllib  # noqa: PLC0415

    parsed: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    return parsed


def main() -> None:
    """Write providers.json beside providers.toml (after changing the catalog)."""
    folder = Path(__file__).parent
    text = copy_text((folder / BUILTIN_CATALOG).read_bytes())
    (folder / BUILTIN_COPY).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
