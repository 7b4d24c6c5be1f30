"""`init`'s config is the shipped example with the answers in place; its advice has them too."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rescue.cli.init_template import (
    Answers,
    bounce_host,
    dns_records,
    example_text,
    fill,
    main_cf_lines,
    render,
    spf_mechanism,
)
from rescue.config import ConfigError, parse_config, sending

ROOT_EXAMPLE = Path(__file__).parents[2] / "config.example.toml"


def answers(tmp_path: Path, **changes: object) -> Answers:
    values: dict[str, object] = {
        "smarthost_name": "relay1",
        "smarthost_host": "smtp.provider.test",
        "port": 2525,
        "tls": "starttls",
        "username": "rescue@example.test",
        "password_file": tmp_path / "relay1.password",
        "srs_domain": "srs.example.test",
        "secret_file": tmp_path / "srs-secrets",
        "postfix_dir": Path("/etc/postfix-out"),
    }
    values.update(changes)
    return Answers(**values)  # type: ignore[arg-type]


def private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def test_the_packaged_example_is_the_one_in_the_source_tree() -> None:
    assert example_text() == ROOT_EXAMPLE.read_text(encoding="utf-8")


def test_rendered_config_reads_back_as_the_answers(tmp_path: Path) -> None:
    private(tmp_path / "srs-secrets", "a-secret-of-enough-length\n")
    private(tmp_path / "relay1.password", "hunter2\n")
    a = answers(tmp_path, nameservers=("127.0.0.1", "::1"), dns_port=5353)
    cfg = parse_config(tmp_path / "config.toml", render(example_text(), a))
    send = sending(cfg)
    host = send.primary
    assert (host.name, host.host, host.port, host.tls) == (
        "relay1",
        "smtp.provider.test",
        2525,
        "starttls",
    )
    assert host.username == "rescue@example.test"
    assert host.password is not None and host.password.value == "hunter2"
    assert len(send.smarthosts) == 1  # the example's second smarthost stays commented out
    assert send.srs.domain == "srs.example.test"
    assert send.srs.secret_file == tmp_path / "srs-secrets"
    assert cfg.postfix.config_dir == Path("/etc/postfix-out")
    assert (cfg.dns.nameservers, cfg.dns.port) == (("127.0.0.1", "::1"), 5353)


def test_rendering_keeps_every_comment_and_the_rest(tmp_path: Path) -> None:
    example = example_text()
    text = render(example, answers(tmp_path))
    comments = [line for line in example.splitlines() if line.lstrip().startswith("#")]
    assert [line for line in text.splitlines() if line.lstrip().startswith("#")] == comments
    assert len(text.splitlines()) == len(example.splitlines())
    port = next(line for line in text.splitlines() if line.startswith("port = 2525"))
    example_port = next(line for line in example.splitlines() if line.startswith("port = 587"))
    assert port.index("#") == example_port.index("#")  # the comment stays in its column


def test_without_a_login_the_login_lines_are_commented_out(tmp_path: Path) -> None:
    private(tmp_path / "srs-secrets", "a-secret-of-enough-length\n")
    a = answers(tmp_path, username=None, password_file=None, tls="none", port=25)
    text = render(example_text(), a)
    assert "\n# username = " in text and "\n# password_file = " in text
    host = sending(parse_config(tmp_path / "c.toml", text)).primary
    assert (host.username, host.password, host.tls, host.port) == (None, None, "none", 25)


def test_a_key_the_example_lacks_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        fill('[srs]\ndomain = "x"\n', {("srs", "domain"): '"y"', ("srs", "secret_file"): '"z"'})
    assert info.value.key == "srs.secret_file"


def test_spf_allows_the_smarthost() -> None:
    assert spf_mechanism("smtp.provider.test") == "a:smtp.provider.test"
    assert spf_mechanism("192.0.2.7") == "ip4:192.0.2.7"
    assert spf_mechanism("2001:db8::1") == "ip6:2001:db8::1"


@pytest.mark.parametrize(
    ("myhostname", "fqdn", "expected"),
    [
        ("mail.example.com", "web1.example.com", "mail.example.com"),
        ("mail.example.com.", "localhost", "mail.example.com"),
        (None, "web1.example.com", "web1.example.com"),  # Postfix not readable
        ("localhost.localdomain", "web1.example.com", "web1.example.com"),
        (None, "localhost", None),  # no public name at all: no MX to publish
        ("mail", "mail", None),
        ("", "", None),
    ],
)
def test_bounces_go_to_a_public_name_or_none(
    myhostname: str | None, fqdn: str, expected: str | None
) -> None:
    assert bounce_host(myhostname, fqdn) == expected


def test_dns_records_and_main_cf(tmp_path: Path) -> None:
    lines = dns_records(answers(tmp_path, smarthost_host="192.0.2.7"), "mail.example.test")
    assert lines == [
        "srs.example.test.  IN MX   10 mail.example.test.",
        'srs.example.test.  IN TXT  "v=spf1 ip4:192.0.2.7 -all"',
    ]
    assert main_cf_lines()[0].startswith("recipient_canonical_maps = proxy:socketmap:unix:")


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    host=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,8}){1,3}", fullmatch=True),
    port=st.integers(1, 65535),
    tls=st.sampled_from(["starttls", "implicit"]),
    username=st.none() | st.text(min_size=1, max_size=30).filter(lambda u: u.strip() != ""),
    dns=st.lists(st.ip_addresses().map(str), max_size=3),
)
def test_any_answers_read_back(
    tmp_path: Path, host: str, port: int, tls: str, username: str | None, dns: list[str]
) -> None:
    private(tmp_path / "srs-secrets", "a-secret-of-enough-length\n")
    private(tmp_path / "relay1.password", "pw\n")
    a = answers(
        tmp_path,
        smarthost_host=host,
        port=port,
        tls=tls,
        username=username,
        password_file=None if username is None else tmp_path / "relay1.password",
        nameservers=tuple(dns),
    )
    cfg = parse_config(tmp_path / "c.toml", render(example_text(), a))
    smarthost = sending(cfg).primary
    assert (smarthost.host, smarthost.port, smarthost.tls) == (host, port, tls)
    assert smarthost.username == username
    assert cfg.dns.nameservers == tuple(dns)
