"""Run queue-rescue as a separate process against a lab Postfix, as an admin would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab.postfix import PostfixLab

SRS_DOMAIN = "srs.rescue.test"
SRS_SECRET = "lab-secret-for-srs-tests-0001"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[dict[str, Any]]:
        """The JSON objects printed on stdout (--json)."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    @property
    def outcomes(self) -> dict[str, dict[str, Any]]:
        return {o["queue_id"]: o for o in self.lines if "queue_id" in o}

    @property
    def summary(self) -> dict[str, Any]:
        summaries = [o["summary"] for o in self.lines if "summary" in o]
        assert len(summaries) == 1, self.stdout
        return summaries[0]


@dataclass
class Rescue:
    """A queue-rescue configuration for one lab, and a way to run commands with it."""

    root: Path
    lab: PostfixLab
    smarthosts: list[dict[str, Any]] = field(default_factory=list)
    providers: str = ""
    extra: str = ""
    command_dir: Path | None = None  # a folder of wrapped Postfix commands, for fault tests
    postfix_extra: str = ""  # more lines for the [postfix] table, e.g. own_relays = [...]
    python: str = sys.executable  # the interpreter command() starts

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        secret = self.root / "srs-secrets"
        secret.write_text(SRS_SECRET + "\n")
        secret.chmod(0o600)

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def journal_path(self) -> Path:
        return self.root / "journal.sqlite3"

    def write_config(self) -> Path:
        hosts = []
        for host in self.smarthosts:
            lines = ["[[smarthost]]"]
            for key, value in host.items():
                lines.append(f"{key} = {json.dumps(value)}")
            hosts.append("\n".join(lines))
        text = f"""
[postfix]
config_dir = "{self.lab.config_dir}"
command_dir = "{self.command_dir or self.lab.command_dir}"
{self.postfix_extra}

[journal]
path = "{self.journal_path}"

[srs]
domain = "{SRS_DOMAIN}"
secret_file = "{self.root / "srs-secrets"}"

[retry]
attempts = 2
initial_wait = "50ms"
max_wait = "200ms"

{chr(10).join(hosts)}

{self.providers}

{self.extra}
"""
        self.config_path.write_text(text)
        return self.config_path

    def command(self, *args: str) -> list[str]:
        return [self.python, "-m", "rescue", "--config", str(self.write_config()), *args]

    def run(self, *args: str, timeout: float = 120, stdin: str = "") -> Result:
        env = dict(os.environ)
        env.pop("QUEUE_RESCUE_CONFIG", None)
        proc = subprocess.run(
            self.command(*args),
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=stdin,
            env=env,
            cwd=Path(__file__).parents[2],
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str, stderr_to: Path | None = None) -> subprocess.Popen[str]:
        """Start a command in its own process group (so a test can kill it whole); with
        `stderr_to`, its stderr goes to that file, which a test can read as it grows."""
        if stderr_to is None:
            return self._popen(args, subprocess.PIPE)
        with stderr_to.open("w") as err:
            return self._popen(args, err)

    def _popen(self, args: tuple[str, ...], stderr: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=Path(__file__).parents[2],
            start_new_session=True,
        )


def smarthost_entry(name: str, port: int, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "timeout": "5s",
        "cooldown": "1s",
    }
    entry.update(extra)
    return entry
