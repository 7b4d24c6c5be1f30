"""Shell completion: the scripts are produced, and bash completes with them for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def queue_rescue(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rescue", *args], capture_output=True, text=True, check=False
    )


def test_bash_script() -> None:
    result = queue_rescue("completion", "bash")
    assert result.returncode == 0, result.stderr
    assert "_QUEUE_RESCUE_COMPLETE=bash_complete" in result.stdout
    assert "complete -o nosort -F _queue_rescue_completion queue-rescue" in result.stdout


def test_zsh_script() -> None:
    result = queue_rescue("completion", "zsh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#compdef queue-rescue")
    assert "_QUEUE_RESCUE_COMPLETE=zsh_complete" in result.stdout


def test_an_unknown_shell_is_a_usage_error() -> None:
    result = queue_rescue("completion", "tcsh")
    assert result.returncode == 2 and "tcsh" in result.stderr


def complete(words: str) -> list[str]:
    """What bash offers after `words` (the last one being completed), with the script."""
    if shutil.which("bash") is None or not (BIN / "queue-rescue").exists():
        pytest.skip("needs bash and the queue-rescue entry point")
    script = queue_rescue("completion", "bash").stdout
    count = len(words.split()) - (0 if words.endswith(" ") else 1)
    program = f"""
{script}
COMP_WORDS=({words}{"''" if words.endswith(" ") else ""})
COMP_CWORD={count}
_queue_rescue_completion queue-rescue
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    result = subprocess.run(
        ["bash", "-c", program], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_bash_completes_commands_options_and_choices() -> None:
    assert complete("queue-rescue fl") == ["flush"]
    assert {"init", "scan", "status", "completion"} <= set(complete("queue-rescue "))
    assert "--wait" in complete("queue-rescue flush --w")
    assert complete("queue-rescue scan --by sender") == ["sender-domain"]
    assert complete("queue-rescue init --tls ") == ["starttls", "implicit", "none"]
