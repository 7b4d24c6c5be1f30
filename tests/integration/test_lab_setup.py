"""The test suite on a machine without root: lab tests skip with the reason, others run.

Runs pytest itself, pretending not to be root (a plugin replaces os.geteuid), over the
integration tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]
REASON = "the Postfix lab needs root (postsuper, queue files owned by postfix)"


def pytest_as_non_root(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pretend_not_root.py").write_text("import os\n\nos.geteuid = lambda: 1000\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    command = [sys.executable, "-m", "pytest", "-p", "pretend_not_root", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*command, "-q", "-rs", f"--basetemp={tmp_path / 'tmp'}", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
        timeout=300,
    )


def test_without_root_every_lab_test_is_skipped_with_the_reason(tmp_path: Path) -> None:
    run = pytest_as_non_root(tmp_path, "-m", "postfix", "tests/integration")

    assert run.returncode == 0, run.stdout + run.stderr
    last = run.stdout.strip().splitlines()[-1]
    assert " skipped" in last and "passed" not in last and "error" not in last, last
    assert REASON in run.stdout


def test_without_root_tests_that_need_no_postfix_still_run(tmp_path: Path) -> None:
    run = pytest_as_non_root(
        tmp_path,
        "tests/integration/test_lab.py",
        "tests/integration/test_scan.py::test_every_catalog_provider_has_a_case",
    )

    assert run.returncode == 0, run.stdout + run.stderr
    last = run.stdout.strip().splitlines()[-1]
    # The smarthost, DNS and fault checks of the lab, and the scan cases' own check.
    assert last.startswith("18 passed, 8 skipped"), last
    assert "error" not in last
