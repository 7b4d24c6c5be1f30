"""Both systemd units pass `systemd-analyze verify`, with no warning at all."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rescue.config import MAX_STOP_TIMEOUT

UNITS = sorted((Path(__file__).parents[2] / "systemd").glob("*.service"))


def test_there_are_units() -> None:
    assert {unit.name for unit in UNITS} >= {"queue-rescue.service", "queue-rescue-srs.service"}


@pytest.mark.parametrize("unit", UNITS, ids=[unit.name for unit in UNITS])
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # An image of the machine as the unit expects it: the units systemd ships, the unit,
    # and an executable wherever an Exec*= line looks (verify checks that they exist).
    shutil.copytree("/usr/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit, tmp_path / "etc/systemd/system")
    programs = re.findall(r"^Exec\w+=[-@:+!]*(/\S+)", unit.read_text(), re.MULTILINE)
    assert "/usr/local/bin/queue-rescue" in programs
    for program in programs:
        stub = tmp_path / program.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    result = subprocess.run(
        [analyze, "verify", f"--root={tmp_path}", unit.name],
        capture_output=True,
        text=True,
        check=False,
    )
    # verify says "ignoring" and still exits 0 for a misspelt setting: no output at all.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_systemd_stops_the_service_only_after_its_own_deadline() -> None:
    # After SIGTERM the service gives everything back within [service] stop_timeout; a
    # TimeoutStopSec at or below the longest allowed would have systemd kill it first.
    unit = next(u for u in UNITS if u.name == "queue-rescue.service").read_text()
    [seconds] = re.findall(r"^TimeoutStopSec=(\d+)s$", unit, re.MULTILINE)
    assert int(seconds) > MAX_STOP_TIMEOUT
