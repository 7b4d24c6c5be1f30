"""providers.json: the built-in catalog's JSON copy, used only while it is of the TOML's bytes."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from rescue.classify import catalog_cache
from rescue.classify.catalog import read_builtin
from rescue.classify.catalog_cache import BUILTIN_CATALOG, BUILTIN_COPY, builtin_data, copy_text

FOLDER = Path(catalog_cache.__file__).parent
TOML = b'[[provider]]\nname = "one"\nmx = ["*.one.example"]\n'


def test_the_shipped_copy_is_of_the_shipped_toml() -> None:
    raw = (FOLDER / BUILTIN_CATALOG).read_bytes()
    shipped = (FOLDER / BUILTIN_COPY).read_text(encoding="utf-8")
    assert shipped == copy_text(raw), (
        "providers.json is out of date: run `python -m rescue.classify.catalog_cache`"
    )
    assert builtin_data(FOLDER) == tomllib.loads(raw.decode("utf-8"))


def test_read_builtin_gives_what_the_toml_says() -> None:
    from_toml = tomllib.loads((FOLDER / BUILTIN_CATALOG).read_text(encoding="utf-8"))
    names = [p.name for p in read_builtin()]
    assert names == [entry["name"].lower() for entry in from_toml["provider"]]


def test_a_current_copy_is_what_is_read(tmp_path: Path) -> None:
    (tmp_path / BUILTIN_CATALOG).write_bytes(TOML)
    copy = json.loads(copy_text(TOML))
    copy["catalog"]["provider"][0]["name"] = "from-the-copy"  # tells which was read
    (tmp_path / BUILTIN_COPY).write_text(json.dumps(copy), encoding="utf-8")
    assert builtin_data(tmp_path)["provider"][0]["name"] == "from-the-copy"


def test_a_changed_toml_is_parsed_again(tmp_path: Path) -> None:
    (tmp_path / BUILTIN_CATALOG).write_bytes(TOML)
    (tmp_path / BUILTIN_COPY).write_text(copy_text(TOML), encoding="utf-8")
    changed = TOML.replace(b'"one"', b'"two"')  # same length: the CRC tells them apart
    (tmp_path / BUILTIN_CATALOG).write_bytes(changed)
    assert builtin_data(tmp_path)["provider"][0]["name"] == "two"


def test_a_missing_or_damaged_copy_is_not_needed(tmp_path: Path) -> None:
    (tmp_path / BUILTIN_CATALOG).write_bytes(TOML)
    assert builtin_data(tmp_path)["provider"][0]["name"] == "one"
    for damaged in ("{", "[]", '{"toml": "x"}', json.dumps({"catalog": 1, "toml": "x"})):
        (tmp_path / BUILTIN_COPY).write_text(damaged, encoding="utf-8")
        assert builtin_data(tmp_path)["provider"][0]["name"] == "one"
