"""What the command line says of itself agrees with the README, and names what is wrong."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from rescue.cli.check_route import map_list
from rescue.cli.group import EXIT_CODES
from rescue.cli.selectors import selectors_from

README = Path(__file__).parents[2] / "README.md"


def readme_exit_codes() -> set[int]:
    section = README.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}


def test_help_lists_the_readmes_exit_codes() -> None:
    listed = {int(code) for code in re.findall(r"^  (\d+) ", EXIT_CODES, re.MULTILINE)}
    assert readme_exit_codes() >= {0, 1, 2, 130, 141}
    assert listed == readme_exit_codes()


def select(older_than: str) -> float | None:
    return selectors_from((), (), (), older_than, None, None, True).older_than


def test_a_bare_age_is_seconds() -> None:
    assert select("30") == 30.0
    assert select("30m") == 1800.0


def test_a_bad_age_names_the_option() -> None:
    with pytest.raises(click.BadParameter) as caught:
        select("xx")
    assert caught.value.param_hint == "--older-than"
    assert "'xx'" in caught.value.format_message()


def test_status_names_a_bad_since(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "rescue", "--config", str(config), "status", "--since", "5x"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 2
    assert "Invalid value for --since: expected a duration like 30m, 2h, 1d, got '5x'" in (
        result.stderr
    )


def test_a_map_list_splits_as_postfix_splits_it() -> None:
    value = "hash:/var/lib/qr/route, inline:{ a.test=smtp:[x]:25, b.test = relay } lmdb:/t"
    assert map_list(value) == [
        "hash:/var/lib/qr/route",
        "inline:{ a.test=smtp:[x]:25, b.test = relay }",
        "lmdb:/t",
    ]
    assert map_list("") == [] and map_list(" , hash:/a,,hash:/b ") == ["hash:/a", "hash:/b"]
