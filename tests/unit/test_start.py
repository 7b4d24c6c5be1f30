"""The entry point's plain scan: which command lines it takes, and that it fails as the CLI does."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from rescue.cli.boundary import fail_for
from rescue.cli.output import Piped, surely_piped, table_output
from rescue.cli.queueview import run_unwaiting
from rescue.cli.scan_run import ScanOptions
from rescue.config import DEFAULT_CONFIG_PATH
from rescue.errors import ConfigError, LockedError, PostfixError, RescueError
from rescue.exitcodes import ExitCode
from rescue.start import plain_scan

REPO = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("args", "config", "verbose", "log_format", "options"),
    [
        (["scan"], None, 0, "text", ScanOptions()),
        (["--config", "/x.toml", "scan"], "/x.toml", 0, "text", ScanOptions()),
        (["-c", "a.toml", "-c", "b.toml", "scan"], "b.toml", 0, "text", ScanOptions()),
        (["-v", "--verbose", "-vv", "scan"], None, 4, "text", ScanOptions()),
        (["--log-format", "json", "scan", "--json"], None, 0, "json", ScanOptions(as_json=True)),
        (
            ["scan", "--by", "domain", "--by", "reason", "--reasons", "--no-dns"],
            None,
            0,
            "text",
            ScanOptions(by="reason", show_reasons=True, no_dns=True),
        ),
        (["scan", "--unknown-mx"], None, 0, "text", ScanOptions(show_unknown_mx=True)),
    ],
)
def test_plain_scans_are_recognised(
    args: list[str], config: str | None, verbose: int, log_format: str, options: ScanOptions
) -> None:
    found = plain_scan(args)
    assert found is not None
    assert (found.config, found.verbose, found.log_format) == (config, verbose, log_format)
    assert found.options() == options


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--version"],
        ["flush", "--all"],
        ["scan", "--help"],
        ["-h", "scan"],
        ["scan", "--spool", "/var/spool/postfix"],
        ["--config=/x.toml", "scan"],
        ["-c"],
        ["--config"],
        ["scan", "--by"],
        ["scan", "--by", "nothing"],
        ["scan", "--by=domain"],
        ["--log-format", "xml", "scan"],
        ["--json", "scan"],
        ["scan", "extra"],
        ["-vvvv", "scan"],
        ["scan", "--", "--json"],
    ],
)
def test_anything_else_is_left_to_the_command_line(args: list[str]) -> None:
    assert plain_scan(args) is None


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (ConfigError(Path("/c.toml"), "x", "bad"), ExitCode.USAGE, "/c.toml"),
        (
            LockedError(Path("/l"), "pid 7"),
            ExitCode.LOCKED,
            "another queue-rescue is running: /l is held by pid 7",
        ),
        (PostfixError("postqueue -j failed"), ExitCode.POSTFIX, "postqueue -j failed"),
        (RescueError("partly"), ExitCode.PARTIAL, "partly"),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED, "interrupted"),
        (ValueError("oops"), ExitCode.SOFTWARE, "unexpected error (a bug"),
        # Not the output's: pytest's captured stdout is still open.
        (BrokenPipeError(32, "Broken pipe"), ExitCode.SOFTWARE, "unexpected error (a bug"),
    ],
)
def test_errors_end_with_their_exit_code_and_one_line(
    exc: BaseException, code: ExitCode, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        fail_for(exc)
    assert exited.value.code == int(code)
    err = capsys.readouterr().err
    assert err.startswith("queue-rescue: error: ") and text in err
    assert err.count("\n") == 1


def test_a_plain_scan_fails_as_the_command_line_does(tmp_path: Path) -> None:
    # No Postfix needed: the configuration is refused before anything is listed.
    broken = tmp_path / "broken.toml"
    broken.write_text("[postfix\n")
    for config in (broken, tmp_path / "missing.toml"):
        plain = run_rescue("--config", str(config), "scan")
        clicked = run_rescue(f"--config={config}", "scan")
        assert plain.returncode == clicked.returncode == ExitCode.USAGE
        assert plain.stderr == clicked.stderr
        assert plain.stderr.startswith(f"queue-rescue: error: {config}")
        assert plain.stdout == clicked.stdout == ""


@pytest.mark.skipif(DEFAULT_CONFIG_PATH.exists(), reason=f"{DEFAULT_CONFIG_PATH} exists here")
def test_an_empty_config_option_is_given_as_the_command_line_sees_it() -> None:
    # `-c ""` names no file but is still an option: the default file must then exist.
    plain = run_rescue("--config", "", "scan")
    clicked = run_rescue("--config=", "scan")
    assert plain.returncode == clicked.returncode == ExitCode.USAGE
    assert plain.stderr == clicked.stderr
    assert f"{DEFAULT_CONFIG_PATH}: no such file" in plain.stderr


def run_rescue(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rescue", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_a_coroutine_that_never_waits_runs_without_a_loop() -> None:
    async def sums() -> int:
        async def part(n: int) -> int:
            return n

        return sum([await part(n) for n in range(4)])

    assert run_unwaiting(sums()) == 6

    async def waits() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="event loop"):
        run_unwaiting(waits())


def test_piped_output_needs_no_rich(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    with (tmp_path / "out").open("w") as file:
        assert surely_piped(file)
        assert isinstance(table_output(file), Piped)
        # What makes rich treat a file as a terminal leaves the decision to rich.
        monkeypatch.setenv("FORCE_COLOR", "1")
        assert not surely_piped(file)
        monkeypatch.delenv("FORCE_COLOR")
        monkeypatch.setenv("TTY_COMPATIBLE", "1")
        assert not surely_piped(file)
        assert not isinstance(table_output(file), Piped)


def test_the_copied_values_are_the_ones_they_copy() -> None:
    from rescue import start  # noqa: PLC0415
    from rescue.classify.shape import By  # noqa: PLC0415
    from rescue.cli.scan_run import BY_CHOICES  # noqa: PLC0415
    from rescue.config import CONFIG_ENV  # noqa: PLC0415

    assert start.BY_CHOICES == BY_CHOICES == tuple(b.value for b in By)
    assert (start.CONFIG_ENV, Path(start.DEFAULT_CONFIG_PATH)) == (CONFIG_ENV, DEFAULT_CONFIG_PATH)


def test_postfix_folders_are_read_as_the_config_reads_them(tmp_path: Path) -> None:
    from rescue.cli.scan_run import _same_dirs  # noqa: PLC0415
    from rescue.config import load_config  # noqa: PLC0415
    from rescue.postfix.files_listing import dirs_of  # noqa: PLC0415
    from rescue.start import postfix_dirs  # noqa: PLC0415

    config = tmp_path / "config.toml"
    for text in (
        "",
        '[postfix]\nconfig_dir = "/srv/pf/"\ncommand_dir = "bin"\n',
        '[postfix]\nqueue_directory = "../q"\n[journal]\npath = "/j"\n',
    ):
        config.write_text(text)
        found = postfix_dirs(str(config), missing_ok=False)
        assert found is not None
        assert _same_dirs(found, dirs_of(load_config(config).postfix)), text
    assert postfix_dirs(str(tmp_path / "none.toml"), missing_ok=True) == (
        "/etc/postfix",
        "/usr/sbin",
        None,
    )
    assert postfix_dirs(str(tmp_path / "none.toml"), missing_ok=False) is None
    for unclear in ("[postfix\n", "postfix = 1\n", "[postfix]\nconfig_dir = 1\n"):
        config.write_text(unclear)
        assert postfix_dirs(str(config), missing_ok=False) is None


# A command in a child process: `rescue.start.main` with the click group replaced by
# `body`, an exit handler that says whether Python's normal exit ran, and a last line
# written without a newline (the fast exit must still flush it).
_ENDING = """
import atexit, sys, threading, time
import rescue.cli.group
from rescue.cli.boundary import end_at_once
from rescue.start import main

def body():
{body}

rescue.cli.group.main = body
atexit.register(lambda: print("normal exit", file=sys.stderr))
sys.argv = ["queue-rescue", "flush"]
main()
"""


def _end(body: str) -> subprocess.CompletedProcess[str]:
    code = _ENDING.format(body="\n".join(f"    {line}" for line in body.splitlines()))
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("status", [0, 1, 130])
def test_a_command_that_closed_everything_ends_at_once_with_its_status(status: int) -> None:
    done = _end(f'sys.stdout.write("summary")\nend_at_once()\nsys.exit({status})')
    assert done.returncode == status
    assert done.stdout == "summary"
    assert "normal exit" not in done.stderr


def test_without_being_told_a_command_ends_normally() -> None:
    done = _end('sys.stdout.write("summary")\nsys.exit(1)')
    assert (done.returncode, done.stdout) == (1, "summary")
    assert "normal exit" in done.stderr


def test_a_thread_still_running_makes_the_end_a_normal_one() -> None:
    done = _end(
        "threading.Thread(target=time.sleep, args=(0.3,)).start()\n"
        'sys.stdout.write("summary")\nend_at_once()\nsys.exit(1)'
    )
    assert (done.returncode, done.stdout) == (1, "summary")
    assert "normal exit" in done.stderr
