"""`queue-rescue check`: says what is wrong, sends no mail."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.rescue_cli import smarthost_entry
from tests.integration.world import World
from tests.lab.certs import default_certs
from tests.lab.smtpd import RecordingSmarthost
from tests.lab.system import free_port

pytestmark = pytest.mark.postfix


def password_file(folder: Path, text: str, mode: int = 0o600) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "relay.password"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_all_good(w: World) -> None:
    result = w.rescue("check-ok").run("check")
    assert result.code == 0, result.stdout + result.stderr
    assert "ok    postfix: postqueue lists 0 messages" in result.stdout
    assert "ok    smarthost relay1: 127.0.0.1:" in result.stdout
    assert "All checks passed." in result.stdout
    assert w.smarthost.received == []


def test_each_smarthost_problem_is_reported(w: World, tmp_path: Path) -> None:
    certs = default_certs()
    secret = password_file(tmp_path, "the-wrong-password")
    with (
        RecordingSmarthost(starttls=True, certs=certs, require_auth=("rescue", "right")) as auth,
        RecordingSmarthost(starttls=True, certs=certs) as untrusted,
    ):
        hosts = [
            smarthost_entry("down", free_port()),
            smarthost_entry(
                "badauth",
                auth.port,
                tls="starttls",
                ca_file=str(certs.ca_file),
                username="rescue",
                password_file=str(secret),
            ),
            smarthost_entry("untrusted", untrusted.port, tls="starttls"),
            smarthost_entry("good", w.smarthost.port),
        ]
        result = w.rescue("check-bad", smarthosts=hosts).run("check")

    assert result.code == 1
    lines = {line.split(":")[0]: line for line in result.stdout.splitlines()}
    assert lines["FAIL  smarthost down"].startswith("FAIL  smarthost down: connect: ")
    assert "535" in lines["FAIL  smarthost badauth"]
    assert "certificate" in lines["FAIL  smarthost untrusted"].lower()
    assert lines["ok    smarthost good"]
    assert "3 check(s) failed." in result.stdout
    assert "the-wrong-password" not in result.stdout + result.stderr


def test_readable_password_file_is_a_config_error(w: World, tmp_path: Path) -> None:
    secret = password_file(tmp_path, "pw", mode=0o644)
    hosts = [
        smarthost_entry(
            "relay1", w.smarthost.port, tls="starttls", username="u", password_file=str(secret)
        )
    ]
    rescue = w.rescue("check-perm", smarthosts=hosts)
    result = rescue.run("check")
    assert result.code == 2
    assert f"{rescue.config_path}: smarthost[0].password_file:" in result.stderr
    assert "chmod 600" in result.stderr
