"""The lab's footing on this machine: free ports, lab folders, finding and ending processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.lab import LabTimeout, wait_for


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def new_lab_root(prefix: str = "lab-") -> Path:
    """A new empty folder for a lab, outside pytest's temporary folders, opened to 0755.

    Not under /tmp/pytest-of-USER: every pytest run that starts sets that folder back to
    0700, which locks the postfix user out of a lab another run is using.
    """
    root = Path(tempfile.mkdtemp(prefix=f"queue-rescue-{prefix}"))
    open_path(root)
    return root


# The daemons a submission passes through, which read the lab's maps when they start.
SUBMISSION_PATH = frozenset({"smtpd", "cleanup", "trivial-rewrite"})


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def processes_in(folder: Path, *, below: bool = False) -> list[int]:
    """Live processes whose working folder is `folder` (or, with below=True, inside it).

    Every Postfix daemon works in its queue directory, so this finds an instance's processes.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cwd = Path(os.readlink(entry / "cwd"))
                inside = cwd == folder or (below and cwd.is_relative_to(folder))
                if inside and alive(int(entry.name)):
                    pids.append(int(entry.name))
    return pids


def remove_lab_root(root: Path) -> None:
    """Stop whatever Postfix still runs under `root` (a test that failed early), then
    delete the folder."""
    if processes_in(root, below=True):
        postfix = Path(postconf_default("command_directory")) / "postfix"
        for main_cf in [*root.glob("etc/main.cf"), *root.glob("*/etc/main.cf")]:
            stop = [str(postfix), "-c", str(main_cf.parent), "stop"]
            subprocess.run(stop, capture_output=True, check=False)
        if not gone(lambda: next(iter(processes_in(root, below=True)), None), timeout=10):
            for pid in processes_in(root, below=True):
                kill(pid)
    shutil.rmtree(root, ignore_errors=True)


def open_path(path: Path) -> None:
    """Let the postfix user reach `path`: at least 0755 on it and every folder above it."""
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode & 0o7777
        if mode & 0o055 != 0o055:
            folder.chmod(mode | 0o055)


def postconf_default(name: str) -> str:
    return subprocess.run(
        ["postconf", "-d", "-h", name], capture_output=True, text=True, check=True
    ).stdout.strip()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; only its parent has not reaped it yet.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def gone(current: Callable[[], int | None], timeout: float) -> bool:
    """Wait until `current()` names no live process; False when one is still there."""

    def nothing_left() -> bool:
        pid = current()
        return pid is None or not alive(pid)

    try:
        wait_for(nothing_left, timeout, "processes to exit")
    except LabTimeout:
        return False
    return True


def kill(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
