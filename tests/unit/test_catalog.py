"""The built-in catalog, entry by entry: patterns, examples, sources, real MX host names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from rescue.classify import catalog as catalog_module
from rescue.classify.catalog import BUILTIN_CATALOG, Catalog, Provider, parse_catalog
from rescue.classify.classifier import classify_recipient
from rescue.classify.dns import MxAnswer
from rescue.errors import ConfigError
from rescue.model import Recipient

PATH = Path(catalog_module.__file__).with_name(BUILTIN_CATALOG)
CATALOG = Catalog(parse_catalog(tomllib.loads(PATH.read_text(encoding="utf-8")), PATH))
PROVIDERS = CATALOG.providers
EXAMPLE_HOSTS = [(p.name, host) for p in PROVIDERS for host in p.mx_examples]

# Issue 18: the providers whose real MX host names scan must name.
WANTED = {
    "ionos", "gmx", "webde", "t-online", "microsoft-consumer", "microsoft-365", "google",
    "yahoo", "icloud", "orange", "free", "mailru", "yandex", "comcast",
    "strato", "all-inkl", "hetzner", "netcup", "mailbox-org", "posteo", "freenet", "ovh",
    "zoho", "proton", "fastmail", "godaddy", "rackspace", "amazon", "proofpoint", "mimecast",
    "barracuda", "hornetsecurity", "cisco", "trendmicro", "sophos",
}  # fmt: skip


def test_at_least_forty_providers_with_unique_names() -> None:
    names = [p.name for p in PROVIDERS]
    assert len(names) >= 40
    assert len(set(names)) == len(names)
    assert set(names) >= WANTED


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
def test_every_entry_has_sources_patterns_and_real_hosts(provider: Provider) -> None:
    assert provider.sources and all(s.strip() for s in provider.sources)
    assert provider.mx, "no MX pattern"
    assert provider.mx_examples, "no real MX host name to check the patterns against"
    for pattern in (*provider.mx, *provider.ns):
        assert pattern == pattern.strip().lower() and " " not in pattern, pattern
    for known in provider.known:
        re.compile(known.pattern, re.IGNORECASE)  # raises if it does not compile
        assert known.source, known.pattern
        assert known.meaning and known.fix, known.pattern
        assert known.examples, known.pattern


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
def test_each_example_reply_matches_its_own_pattern_only(provider: Provider) -> None:
    for known in provider.known:
        for example in known.examples:
            matching = [k.pattern for k in provider.known if k.search(example)]
            assert matching == [known.pattern], example


@pytest.mark.parametrize(("name", "host"), EXAMPLE_HOSTS, ids=str)
def test_each_real_mx_host_belongs_to_its_provider_only(name: str, host: str) -> None:
    owners = [p.name for p in PROVIDERS if p.owns_mx(host)]
    assert owners == [name]


@pytest.mark.parametrize(("name", "host"), EXAMPLE_HOSTS, ids=str)
def test_classifier_names_the_provider_of_a_real_mx_host(name: str, host: str) -> None:
    # The recipient's domain has this host as MX; the reason names no host.
    recipient = Recipient("user@kunde.test", "connect to x[192.0.2.1]:25: refused")
    found = classify_recipient(recipient, CATALOG, {"kunde.test": MxAnswer("kunde.test", (host,))})
    assert (found.provider, found.classified_by, found.mx) == (name, "dns-mx", host)
    # And when Postfix's delay reason names the host itself.
    said = f"host {host}[192.0.2.1] said: 451 4.3.0 try again later (in reply to RCPT TO command)"
    found = classify_recipient(Recipient("user@kunde.test", said), CATALOG, {})
    assert (found.provider, found.classified_by) == (name, "reason-host")


def test_name_server_globs_name_no_mx_example() -> None:
    # `ns` globs are matched against name servers only; none should look like an MX host.
    for provider in PROVIDERS:
        for other, host in EXAMPLE_HOSTS:
            assert not provider.owns_ns(host), (provider.name, other, host)


def test_bad_mx_examples_name_file_and_key(tmp_path: Path) -> None:
    data = {"provider": [{"name": "x", "mx": ["mx.x.test"], "mx_examples": "mx.x.test"}]}
    with pytest.raises(ConfigError) as caught:
        parse_catalog(data, tmp_path / "p.toml")
    assert "provider[0].mx_examples" in str(caught.value)
    assert "p.toml" in str(caught.value)
