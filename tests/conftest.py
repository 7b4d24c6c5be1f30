"""Fixtures over the test lab: a Postfix, fake SMTP servers, DNS and certificates.

A test that needs a lab Postfix carries the `postfix` mark; without root (or without
Postfix installed) it is skipped, with the reason, before any of its fixtures is set up.
Tests without the mark run anywhere.

The Postfix instance of this file lives for one test module (starting Postfix costs
time), the servers it routes to for the session; the `postfix`, `provider` and
`accepting` fixtures hand them to a test with an empty queue, the original main.cf and
no scripted faults.

Routes of the shared Postfix:
  kunde1.test .. kunde40.test and every name under ionos-kunde.test -> `provider`
  other.test -> `accepting`
  any other domain -> bounced at once ("no route in the lab")
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.certs import LabCerts, default_certs
from tests.lab.dns import DnsServer
from tests.lab.postfix import SYSTEM_MASTER_CF, PostfixLab
from tests.lab.smtpd import FakeProvider, RecordingSmarthost
from tests.lab.system import new_lab_root, remove_lab_root

CUSTOMER_DOMAINS = tuple(f"kunde{i}.test" for i in range(1, 41))
# A leading dot in a transport map matches every name below that domain (transport(5)).
CUSTOMER_PARENT = ".ionos-kunde.test"
ACCEPTING_DOMAIN = "other.test"


def lab_unavailable() -> str | None:
    """Why this machine cannot run the Postfix lab, or None when it can."""
    if os.geteuid() != 0:
        return "the Postfix lab needs root (postsuper, queue files owned by postfix)"
    if shutil.which("postconf") is None or not SYSTEM_MASTER_CF.exists():
        return "Postfix is not installed (no postconf or /etc/postfix/master.cf)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with the reason, every test marked `postfix` on a machine without the lab."""
    reason = lab_unavailable()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("postfix") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def module_lab_root() -> Iterator[Path]:
    """An empty folder for a module's lab Postfix (see `lab_root`), removed afterwards."""
    root = new_lab_root("module-")
    try:
        yield root
    finally:
        remove_lab_root(root)


@pytest.fixture(scope="session")
def certs() -> LabCerts:
    """A CA, a server certificate for 127.0.0.1/localhost, and an unrelated CA (in a folder
    the postfix user can read, should a test give Postfix the CA file)."""
    return default_certs()


@pytest.fixture
def lab_root() -> Iterator[Path]:
    """An empty folder the postfix user can reach, removed afterwards with any Postfix
    still running in it. Not pytest's tmp_path: see tests.lab.postfix.new_lab_root."""
    root = new_lab_root()
    try:
        yield root
    finally:
        remove_lab_root(root)


@pytest.fixture
def smarthost(certs: LabCerts) -> Iterator[RecordingSmarthost]:
    """A fresh recording smarthost (plain SMTP; build your own for TLS or AUTH)."""
    with RecordingSmarthost(certs=certs) as server:
        yield server


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A fresh DNS server with no records."""
    with DnsServer() as server:
        yield server


@pytest.fixture(scope="session")
def _provider_server() -> Iterator[FakeProvider]:
    with FakeProvider() as server:
        yield server


@pytest.fixture(scope="session")
def _accepting_server() -> Iterator[RecordingSmarthost]:
    with RecordingSmarthost(hostname="mx.other.test") as server:
        yield server


@pytest.fixture
def provider(_provider_server: FakeProvider) -> FakeProvider:
    """The fake provider behind the kunde domains: refuses with 421 at MAIL FROM."""
    _provider_server.reset()
    return _provider_server


@pytest.fixture
def accepting(_accepting_server: RecordingSmarthost) -> RecordingSmarthost:
    """The server behind other.test: accepts and records everything."""
    _accepting_server.reset()
    return _accepting_server


@pytest.fixture(scope="module")
def _postfix_lab(
    _provider_server: FakeProvider,
    _accepting_server: RecordingSmarthost,
) -> Iterator[PostfixLab]:
    reason = lab_unavailable()
    if reason is not None:
        pytest.skip(reason)
    root = new_lab_root("lab-")
    transports = dict.fromkeys([*CUSTOMER_DOMAINS, CUSTOMER_PARENT], _provider_server.next_hop)
    transports[ACCEPTING_DOMAIN] = _accepting_server.next_hop
    lab = PostfixLab(root / "postfix", transports=transports, name="lab")
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()
        remove_lab_root(root)


@pytest.fixture
def postfix(
    _postfix_lab: PostfixLab, provider: FakeProvider, accepting: RecordingSmarthost
) -> PostfixLab:
    """The module's running Postfix with an empty queue and its original configuration."""
    lab = _postfix_lab
    lab.start()  # a test may have stopped it
    lab.restore_config()
    lab.clear()
    # A delivery the previous test left under way may have reached a server meanwhile.
    provider.reset()
    accepting.reset()
    return lab
