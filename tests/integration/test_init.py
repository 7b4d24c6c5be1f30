"""From install to a first flush: looking needs no config, `init` writes the one to send.

Against the lab Postfix of world.py; every command runs as its own process.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rescue.config import DEFAULT_CONFIG_PATH
from tests.integration.rescue_cli import Result
from tests.integration.world import World, body

pytestmark = pytest.mark.postfix

SRS_DOMAIN = "srs.init.test"
REPO = Path(__file__).parents[2]


def cli(*args: str, config: Path | None, stdin: str = "") -> Result:
    env = dict(os.environ)
    env.pop("QUEUE_RESCUE_CONFIG", None)
    command = [sys.executable, "-m", "rescue"]
    if config is not None:
        command += ["--config", str(config)]
    proc = subprocess.run(
        [*command, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
        env=env,
        cwd=REPO,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def defer(w: World, n: int) -> list[str]:
    ids = [
        w.lab.submit("alice@example.com", [f"c{i}@kunde{i + 1}.test"], body(i)) for i in range(n)
    ]
    w.lab.wait_deferred(n)
    return ids


def dns_table(w: World) -> str:
    return f'[dns]\nnameservers = ["127.0.0.1"]\nport = {w.dns.port}\ntimeout = "2s"\n'


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_looking_needs_neither_srs_nor_smarthost(w: World, tmp_path: Path) -> None:
    ids = defer(w, 3)
    config = tmp_path / "config.toml"
    config.write_text(f'[postfix]\nconfig_dir = "{w.lab.config_dir}"\n\n{dns_table(w)}')

    scan = cli("scan", "--json", config=config)
    assert scan.code == 0, scan.stderr
    assert {o["queue_id"] for o in scan.lines} == set(ids)
    assert {r["provider"] for o in scan.lines for r in o["recipients"]} == {"ionos"}

    check = cli("check", config=config)
    assert check.code == 0, check.stdout + check.stderr
    assert "ok    postfix: postqueue lists 3 messages" in check.stdout
    assert "--    [srs]: not configured" in check.stdout
    assert "--    [[smarthost]]: not configured" in check.stdout

    assert cli("providers", config=config).code == 0

    for command in (["flush", "--provider", "ionos", "--yes"], ["run"]):
        sent = cli(*command, config=config)
        assert sent.code == 2, sent.stdout + sent.stderr
        assert f"{config}: srs: the [srs] table is needed to send mail" in sent.stderr
        assert "queue-rescue init" in sent.stderr
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    assert w.smarthost.received == []


@pytest.mark.skipif(DEFAULT_CONFIG_PATH.exists(), reason="this machine has a config file")
def test_no_config_file_at_all() -> None:
    providers = cli("providers", config=None)
    assert providers.code == 0, providers.stderr
    assert "ionos" in providers.stdout
    flush = cli("flush", "--provider", "ionos", "--dry-run", config=None)
    assert flush.code == 2
    assert f"{DEFAULT_CONFIG_PATH}: no such file; sending mail needs [srs]" in flush.stderr
    assert not DEFAULT_CONFIG_PATH.exists()


def test_a_named_config_file_must_be_there(tmp_path: Path) -> None:
    result = cli("scan", config=tmp_path / "typo.toml")
    assert result.code == 2
    assert f"{tmp_path / 'typo.toml'}: no such file" in result.stderr


def init_options(w: World) -> list[str]:
    return [
        "--smarthost",
        "127.0.0.1",
        "--tls",
        "none",
        "--port",
        str(w.smarthost.port),
        "--user",
        "",
        "--srs-domain",
        SRS_DOMAIN,
        "--postfix-dir",
        str(w.lab.config_dir),
        "--nameserver",
        "127.0.0.1",
        "--dns-port",
        str(w.dns.port),
    ]


def test_init_then_a_dry_run_flush(w: World, tmp_path: Path) -> None:
    ids = defer(w, 4)
    config = tmp_path / "etc" / "config.toml"
    result = cli("init", *init_options(w), config=config)
    assert result.code == 0, result.stdout + result.stderr

    secret = config.parent / "srs-secrets"
    assert mode(config.parent) == 0o700
    assert (mode(config), mode(secret)) == (0o600, 0o600)
    assert not (config.parent / "relay1.password").exists()
    assert len(secret.read_text().split()) == 1
    text = config.read_text()
    assert f'domain = "{SRS_DOMAIN}"' in text and f"port = {w.smarthost.port}" in text
    assert "# The domain rerouted mail gets as its envelope sender" in text  # the comments
    assert "All checks passed." in result.stdout
    assert f"ok    smarthost relay1: 127.0.0.1:{w.smarthost.port} EHLO ok" in result.stdout
    assert f'{SRS_DOMAIN}.  IN TXT  "v=spf1 ip4:127.0.0.1 -all"' in result.stdout
    assert f"{SRS_DOMAIN}.  IN MX   10 " in result.stdout
    assert "recipient_canonical_maps = proxy:socketmap:unix:" in result.stdout

    flush = cli("flush", "--provider", "ionos", "--dry-run", "--json", config=config)
    assert flush.code == 0, flush.stdout + flush.stderr
    assert set(flush.outcomes) == set(ids)
    assert {o["action"] for o in flush.outcomes.values()} == {"would-reroute"}
    assert all(o["envelope_sender"].endswith(f"@{SRS_DOMAIN}") for o in flush.outcomes.values())
    assert w.smarthost.received == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)


def test_init_refuses_to_overwrite_and_force_keeps_old_secrets(w: World, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    assert cli("init", *init_options(w), config=config).code == 0
    before = (config.read_text(), (tmp_path / "srs-secrets").read_text())

    again = cli("init", *init_options(w), "--srs-domain", "other.test", config=config)
    assert again.code == 2
    assert "already there; nothing was changed" in again.stderr
    assert (config.read_text(), (tmp_path / "srs-secrets").read_text()) == before

    forced = cli("init", *init_options(w), "--srs-domain", "other.test", "--force", config=config)
    assert forced.code == 0, forced.stdout + forced.stderr
    assert 'domain = "other.test"' in config.read_text()
    secrets = (tmp_path / "srs-secrets").read_text().split()
    assert len(secrets) == 2 and secrets[1] == before[1].strip() and secrets[0] != secrets[1]
    assert mode(tmp_path / "srs-secrets") == 0o600


def test_init_asks_what_the_options_do_not_say(w: World, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    # host, TLS, port, login, password (--password-stdin), SRS domain, Postfix directory
    answers = "\n".join(
        ["smtp.init.test", "starttls", "", "rescue@init.test", "hunter2-pw", SRS_DOMAIN]
    )
    answers += f"\n{w.lab.config_dir}\n"
    result = cli("init", "--password-stdin", config=config, stdin=answers)
    # The smarthost does not exist: check says so, the files are written all the same.
    assert result.code == 1, result.stdout + result.stderr
    assert "FAIL  smarthost relay1" in result.stdout
    assert "Smarthost host name:" in result.stderr and "SRS domain:" in result.stderr
    password = tmp_path / "relay1.password"
    assert password.read_text() == "hunter2-pw\n" and mode(password) == 0o600
    text = config.read_text()
    assert 'host = "smtp.init.test"' in text and "port = 587" in text
    assert 'username = "rescue@init.test"' in text
    assert f'password_file = "{password}"' in text
    assert "hunter2" not in result.stdout + result.stderr
    assert '"v=spf1 a:smtp.init.test -all"' in result.stdout


def test_init_with_yes_needs_the_values_without_defaults(tmp_path: Path) -> None:
    result = cli("init", "--yes", "--smarthost", "smtp.init.test", config=tmp_path / "c.toml")
    assert result.code == 2
    assert "--srs-domain is needed with --yes" in result.stderr
    assert not (tmp_path / "c.toml").exists()


@pytest.mark.parametrize(
    ("stdin", "says"),
    [
        ("\n", "--password-stdin: the first line of standard input is empty"),
        ("", "--password-stdin: the first line of standard input is empty"),
    ],
)
def test_an_empty_password_on_stdin_is_named(tmp_path: Path, stdin: str, says: str) -> None:
    result = cli(
        "init",
        "--yes",
        "--smarthost",
        "smtp.init.test",
        "--user",
        "a@b.example",
        "--password-stdin",
        "--srs-domain",
        SRS_DOMAIN,
        config=tmp_path / "c.toml",
        stdin=stdin,
    )
    assert result.code == 2
    assert says in result.stderr
    assert not (tmp_path / "c.toml").exists()
