"""Config: every mistake names the file and the key; secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from rescue.config import ConfigError, load_config, load_srs_config, parse_config, sending


def write_secret(path: Path, text: str = "s3cret-value-for-tests\n", mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def base_config(tmp_path: Path, extra: str = "", smarthost: str = "") -> str:
    write_secret(tmp_path / "srs-secrets")
    return f"""
[srs]
domain = "srs.example.net"
secret_file = "{tmp_path / "srs-secrets"}"

[[smarthost]]
name = "relay1"
host = "127.0.0.1"
port = 2525
tls = "none"
{smarthost}
{extra}
"""


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(tmp_path / "config.toml", text)
    return info.value


def test_minimal_config_has_sensible_defaults(tmp_path: Path) -> None:
    cfg = parse_config(tmp_path / "config.toml", base_config(tmp_path))
    assert cfg.postfix.config_dir == Path("/etc/postfix")
    assert cfg.journal.lock_path.name == "journal.sqlite3.lock"
    assert cfg.smarthosts[0].max_connections == 8
    assert cfg.retry.attempts == 5 and cfg.retry.max_wait == 300.0
    assert cfg.srs is not None and cfg.srs.secrets[0].value == "s3cret-value-for-tests"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, base_config(tmp_path, smarthost="prot = 25"))
    assert str(err) == f"{tmp_path / 'config.toml'}: smarthost[0].prot: unknown key"


def test_unknown_top_level_table(tmp_path: Path) -> None:
    err = error_of(tmp_path, base_config(tmp_path, extra="[retyr]\nattempts = 3"))
    assert err.key == "retyr"


def test_wrong_type_names_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, base_config(tmp_path, extra='[retry]\nattempts = "five"'))
    assert err.key == "retry.attempts"
    assert "expected an integer" in err.problem


def test_bool_is_not_an_integer(tmp_path: Path) -> None:
    err = error_of(tmp_path, base_config(tmp_path, extra="[retry]\nattempts = true"))
    assert err.key == "retry.attempts"


def test_bad_duration(tmp_path: Path) -> None:
    err = error_of(tmp_path, base_config(tmp_path, extra='[retry]\nmax_wait = "5 minutes"'))
    assert err.key == "retry.max_wait"


def test_durations(tmp_path: Path) -> None:
    cfg = parse_config(
        tmp_path / "c.toml",
        base_config(tmp_path, extra='[retry]\nmax_wait = "2m"\ninitial_wait = "500ms"'),
    )
    assert cfg.retry.max_wait == 120.0 and cfg.retry.initial_wait == 0.5


def test_bad_tls_mode(tmp_path: Path) -> None:
    text = base_config(tmp_path).replace('tls = "none"', 'tls = "ssl"')
    err = error_of(tmp_path, text)
    assert err.key == "smarthost[0].tls"
    assert "starttls, implicit, none" in err.problem


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(tmp_path / "nope.toml") in str(info.value)
    # Named by --config or the environment: no advice to use them.
    assert info.value.problem == (
        "no such file; create it with `queue-rescue init` (or see config.example.toml)"
    )
    default = tmp_path / "default.toml"  # as if /etc/queue-rescue/config.toml
    monkeypatch.setattr("rescue.config.load.DEFAULT_CONFIG_PATH", default)
    with pytest.raises(ConfigError) as info:
        load_config(default)
    assert info.value.problem.startswith(
        "no such file; name one with --config or $QUEUE_RESCUE_CONFIG, or create it with"
    )


def test_invalid_toml(tmp_path: Path) -> None:
    err = error_of(tmp_path, "[srs\n")
    assert "not valid TOML" in err.problem


def test_smarthost_is_required_only_to_send(tmp_path: Path) -> None:
    write_secret(tmp_path / "s")
    text = f'[srs]\ndomain = "x.test"\nsecret_file = "{tmp_path / "s"}"\n'
    cfg = parse_config(tmp_path / "config.toml", text)
    assert cfg.smarthosts == ()
    with pytest.raises(ConfigError) as info:
        sending(cfg)
    assert info.value.key == "smarthost"
    assert str(info.value).startswith(f"{tmp_path / 'config.toml'}: smarthost: ")
    assert "queue-rescue init" in str(info.value)


def test_srs_is_required_only_to_send(tmp_path: Path) -> None:
    text = base_config(tmp_path)
    text = text[text.index("[[smarthost]]") :]
    cfg = parse_config(tmp_path / "config.toml", text)
    assert cfg.srs is None and cfg.smarthosts[0].name == "relay1"
    with pytest.raises(ConfigError) as info:
        sending(cfg)
    assert info.value.key == "srs" and "queue-rescue init" in info.value.problem
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_srs_config(path)
    assert info.value.key == "srs"


def test_an_empty_file_is_every_default(tmp_path: Path) -> None:
    cfg = parse_config(tmp_path / "config.toml", "")
    assert (cfg.srs, cfg.smarthosts, cfg.providers) == (None, (), ())
    assert cfg.postfix.config_dir == Path("/etc/postfix") and cfg.from_file


def test_sending_has_both_sections(tmp_path: Path) -> None:
    send = sending(parse_config(tmp_path / "config.toml", base_config(tmp_path)))
    assert send.primary.name == "relay1" and send.srs.domain == "srs.example.net"


def test_a_missing_default_file_is_the_defaults(tmp_path: Path) -> None:
    cfg = load_config(tmp_path / "nope.toml", missing_ok=True)
    assert not cfg.from_file and cfg.srs is None and cfg.dns.enabled
    with pytest.raises(ConfigError) as info:
        sending(cfg)
    assert info.value.key is None
    assert str(info.value).startswith(f"{tmp_path / 'nope.toml'}: no such file; ")
    assert "[srs]" in info.value.problem and "queue-rescue init" in info.value.problem
    with pytest.raises(ConfigError) as info:
        load_srs_config(tmp_path / "nope.toml")
    assert "no such file" in info.value.problem


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    text = base_config(tmp_path)
    (tmp_path / "srs-secrets").chmod(0o644)
    err = error_of(tmp_path, text)
    assert err.key == "srs.secret_file"
    assert "chmod 600" in err.problem
    assert "s3cret" not in str(err)


def test_password_file_group_readable_is_refused(tmp_path: Path) -> None:
    write_secret(tmp_path / "pw", "hunter2-password\n", mode=0o640)
    text = base_config(tmp_path).replace('tls = "none"', 'tls = "starttls"')
    text += f'username = "u"\npassword_file = "{tmp_path / "pw"}"\n'
    err = error_of(tmp_path, text)
    assert err.key == "smarthost[0].password_file"
    assert "hunter2" not in str(err)


def test_password_never_in_repr(tmp_path: Path) -> None:
    write_secret(tmp_path / "pw", "hunter2-password\n")
    text = base_config(tmp_path).replace('tls = "none"', 'tls = "starttls"')
    text += f'username = "u"\npassword_file = "{tmp_path / "pw"}"\n'
    cfg = parse_config(tmp_path / "c.toml", text)
    assert cfg.smarthosts[0].password is not None
    assert cfg.smarthosts[0].password.value == "hunter2-password"
    assert "hunter2" not in repr(cfg)


def test_auth_without_tls_is_refused(tmp_path: Path) -> None:
    write_secret(tmp_path / "pw", "hunter2-password\n")
    text = base_config(tmp_path) + f'username = "u"\npassword_file = "{tmp_path / "pw"}"\n'
    err = error_of(tmp_path, text)
    assert err.key == "smarthost[0].tls"


def test_empty_secret_file(tmp_path: Path) -> None:
    text = base_config(tmp_path)
    write_secret(tmp_path / "srs-secrets", "# only a comment\n\n")
    err = error_of(tmp_path, text)
    assert "holds no secret" in err.problem


def test_secret_rotation_keeps_order(tmp_path: Path) -> None:
    text = base_config(tmp_path)
    write_secret(tmp_path / "srs-secrets", "new-secret-0001\nold-secret-0002\n")
    cfg = parse_config(tmp_path / "c.toml", text)
    assert [s.value for s in cfg.srs.secrets] == ["new-secret-0001", "old-secret-0002"]


def test_provider_bad_regex(tmp_path: Path) -> None:
    extra = '[[provider]]\nname = "ionos"\nreasons = ["unable to (verify"]\n'
    err = error_of(tmp_path, base_config(tmp_path, extra=extra))
    assert err.key == "provider[0].reasons[0]"


def test_duplicate_smarthost_names(tmp_path: Path) -> None:
    extra = '[[smarthost]]\nname = "relay1"\nhost = "h"\ntls = "none"\n'
    err = error_of(tmp_path, base_config(tmp_path, extra=extra))
    assert err.key == "smarthost[1].name"


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    extra = '[journal]\npath = "state/journal.sqlite3"\n'
    cfg = parse_config(tmp_path / "c.toml", base_config(tmp_path, extra=extra))
    assert cfg.journal.path == tmp_path / "state/journal.sqlite3"


def test_example_config_is_valid_apart_from_its_files() -> None:
    example = Path(__file__).parents[2] / "config.example.toml"
    if not example.exists():
        pytest.skip("config.example.toml not written yet")
    err = None
    try:
        parse_config(example, example.read_text())
    except ConfigError as exc:
        err = exc
    # The example points at files that do not exist here: only that may fail.
    assert err is None or "does not exist" in err.problem, err


def test_srs_commands_read_only_the_srs_table(tmp_path: Path) -> None:
    text = base_config(tmp_path).replace('tls = "none"', 'tls = "starttls"')
    text += f'username = "u"\npassword_file = "{tmp_path / "missing-password"}"\n'
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)  # the whole file needs the password file
    srs = load_srs_config(path)  # the SRS server does not
    assert srs.domain == "srs.example.net"


def test_journal_keep_is_a_duration_of_at_least_a_day(tmp_path: Path) -> None:
    assert parse_config(tmp_path / "c.toml", base_config(tmp_path)).journal.keep == 30 * 86400
    cfg = parse_config(tmp_path / "c.toml", base_config(tmp_path, extra='[journal]\nkeep = "7d"'))
    assert cfg.journal.keep == 7 * 86400
    err = error_of(tmp_path, base_config(tmp_path, extra='[journal]\nkeep = "6h"'))
    assert err.key == "journal.keep"
    assert "at least 1d" in err.problem


def test_dns_host_queries_budget(tmp_path: Path) -> None:
    cfg = parse_config(tmp_path / "config.toml", base_config(tmp_path))
    assert cfg.dns.host_queries == 200
    cfg = parse_config(
        tmp_path / "config.toml", base_config(tmp_path, extra="[dns]\nhost_queries = 0")
    )
    assert cfg.dns.host_queries == 0
    err = error_of(tmp_path, base_config(tmp_path, extra="[dns]\nhost_queries = -1"))
    assert err.key == "dns.host_queries"
    assert str(err).startswith(f"{tmp_path / 'config.toml'}: dns.host_queries")
