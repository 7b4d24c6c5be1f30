"""Classification order: reason host, DNS MX, provider domains, reason text."""

from __future__ import annotations

import re

from rescue.classify.catalog import Catalog, KnownReason, Provider, merge
from rescue.classify.classifier import classify_recipient
from rescue.classify.dns import MxAnswer
from rescue.classify.select import Selectors, choose
from rescue.config import ProviderConfig
from rescue.model import QueuedMessage, Recipient

IONOS_REPLY = (
    "host mx00.kundenserver.de[212.227.15.41] said: 421 invalid sender domain, possibly "
    "misconfigured (in reply to MAIL FROM command)"
)
CATALOG = Catalog(
    (
        Provider(
            name="ionos",
            label="1&1 / IONOS",
            mx=("mx*.kundenserver.de", "mx*.schlund.de"),
            domains=("online.de",),
            known=(
                KnownReason("invalid sender domain", reroute_helps=True),
                KnownReason("mailbox full", reroute_helps=False),
            ),
        ),
        Provider(
            name="gmx",
            label="GMX",
            mx=("mx*.gmx.net",),
            known=(KnownReason(r"Nemesis ESMTP", reroute_helps=True),),
        ),
    )
)


def rcpt(address: str, reason: str = IONOS_REPLY) -> Recipient:
    return Recipient(address=address, delay_reason=reason)


def test_reason_host_decides_first() -> None:
    c = classify_recipient(rcpt("a@kunde1.test"), CATALOG, {})
    assert (c.provider, c.classified_by, c.mx) == ("ionos", "reason-host", "mx00.kundenserver.de")
    assert c.reason_matched == "invalid sender domain"


def test_own_relay_is_not_the_destination() -> None:
    reason = "host mx00.kundenserver.de[212.227.15.41] said: 421 invalid sender domain"
    c = classify_recipient(
        rcpt("a@kunde1.test", reason), CATALOG, {}, own_relays={"mx00.kundenserver.de"}
    )
    assert c.classified_by != "reason-host"
    assert "our own relay" in c.note


def test_dns_mx_when_reason_names_no_provider_host() -> None:
    reason = (
        "host 127.0.0.1[127.0.0.1] said: 421 invalid sender domain (in reply to MAIL FROM command)"
    )
    answers = {"kunde1.test": MxAnswer("kunde1.test", hosts=("mx01.kundenserver.de",))}
    c = classify_recipient(rcpt("a@kunde1.test", reason), CATALOG, answers)
    assert (c.provider, c.classified_by, c.mx) == ("ionos", "dns-mx", "mx01.kundenserver.de")


def test_connection_refused_is_classified_by_dns() -> None:
    reason = "connect to 127.0.0.1[127.0.0.1]:25: Connection refused"
    answers = {"kunde1.test": MxAnswer("kunde1.test", hosts=("mx00.gmx.net",))}
    c = classify_recipient(rcpt("a@kunde1.test", reason), CATALOG, answers)
    assert c.provider == "gmx" and c.classified_by == "dns-mx"
    assert c.reason_matched is None  # GMX does not want this one rerouted


def test_mixed_mx_is_reported_as_such() -> None:
    answers = {"mix.test": MxAnswer("mix.test", hosts=("mx00.kundenserver.de", "mx01.gmx.net"))}
    c = classify_recipient(
        rcpt("a@mix.test", "connect to x[1.2.3.4]:25: refused"), CATALOG, answers
    )
    assert c.provider is None and "several providers" in c.note
    assert "gmx" in c.note and "ionos" in c.note


def test_dns_failure_is_never_guessed_from_the_name() -> None:
    answers = {"kundenserver-like.test": MxAnswer("kundenserver-like.test", error="DNS timeout")}
    c = classify_recipient(
        rcpt("a@kundenserver-like.test", "connect to x[1.2.3.4]:25: refused"), CATALOG, answers
    )
    assert c.provider is None
    assert "DNS timeout" in c.note


def test_domains_then_reason_text() -> None:
    c = classify_recipient(rcpt("a@online.de", "connect to x[1.2.3.4]:25: refused"), CATALOG, {})
    assert (c.provider, c.classified_by) == ("ionos", "domains")
    c = classify_recipient(
        rcpt("a@other.test", "host 192.0.2.1[192.0.2.1] said: 421 Nemesis ESMTP"), CATALOG, {}
    )
    assert (c.provider, c.classified_by) == ("gmx", "reason-text")


def test_unknown() -> None:
    c = classify_recipient(rcpt("a@other.test", "connect to x[1.2.3.4]:25: refused"), CATALOG, {})
    assert c.provider is None and c.classified_by is None


def test_config_overrides_catalog_by_name() -> None:
    merged = merge(
        CATALOG.providers,
        [
            ProviderConfig(name="ionos", domains=("kunde1.test",), reasons=("unable to verify",)),
            ProviderConfig(name="acme", mx=("mx.acme.test",), reasons=()),
        ],
    )
    ionos = merged.by_name["ionos"]
    assert ionos.mx == ("mx*.kundenserver.de", "mx*.schlund.de")  # kept from the catalog
    assert ionos.domains == ("kunde1.test",)
    assert ionos.selecting_pattern("421 unable to verify sender domain") == "unable to verify"
    assert ionos.selecting_pattern("421 invalid sender domain") is None
    assert merged.by_name["acme"].selecting_pattern("anything at all") == "*"


def test_mx_glob_is_anchored() -> None:
    ionos = CATALOG.by_name["ionos"]
    assert ionos.owns_mx("MX00.Kundenserver.DE.")
    assert not ionos.owns_mx("mx00.kundenserver.de.evil.test")
    assert not ionos.owns_mx("xmx00.kundenserver.de")


def message(
    qid: str, recipients: list[Recipient], queue: str = "deferred", arrival: int = 1000
) -> QueuedMessage:
    return QueuedMessage(qid, queue, arrival, 100, "s@example.com", tuple(recipients))


def test_selection_needs_provider_and_matching_reason() -> None:
    sel = Selectors(providers=frozenset({"ionos"}))
    full = message(
        "AAAAA1", [rcpt("a@kunde1.test"), rcpt("b@other.test", "connect to x[1.2.3.4]:25: x")]
    )
    classes = [classify_recipient(r, CATALOG, {}) for r in full.recipients]
    chosen = choose(full, classes, sel, now=5000)
    assert chosen is not None and chosen.provider == "ionos"
    mailbox_full = message(
        "AAAAA2",
        [rcpt("a@kunde1.test", "host mx00.kundenserver.de[1.2.3.4] said: 452 mailbox full")],
    )
    classes = [classify_recipient(r, CATALOG, {}) for r in mailbox_full.recipients]
    assert choose(mailbox_full, classes, sel, now=5000) is None


def test_selection_skips_hold_and_active_and_young_mail() -> None:
    for queue in ("hold", "active", "incoming"):
        m = message("AAAAA3", [rcpt("a@kunde1.test")], queue=queue)
        assert (
            choose(m, [classify_recipient(m.recipients[0], CATALOG, {})], Selectors(all=True), 5000)
            is None
        )
    m = message("AAAAA4", [rcpt("a@kunde1.test")], arrival=4000)
    cls = [classify_recipient(m.recipients[0], CATALOG, {})]
    assert choose(m, cls, Selectors(all=True, older_than=1800), now=5000) is None
    assert choose(m, cls, Selectors(all=True, older_than=600), now=5000) is not None


def test_queue_id_selects_whatever_the_provider() -> None:
    m = message("AAAAA5", [rcpt("a@other.test", "connect to x[1.2.3.4]:25: refused")])
    cls = [classify_recipient(m.recipients[0], CATALOG, {})]
    assert choose(m, cls, Selectors(queue_ids=frozenset({"AAAAA5"})), 5000) is not None
    assert choose(m, cls, Selectors(queue_ids=frozenset({"OTHER1"})), 5000) is None
    narrowed = Selectors(queue_ids=frozenset({"AAAAA5"}), providers=frozenset({"ionos"}))
    assert choose(m, cls, narrowed, 5000) is None


def test_domain_and_reason_selectors() -> None:
    m = message("AAAAA6", [rcpt("a@kunde1.test")])
    cls = [classify_recipient(m.recipients[0], CATALOG, {})]
    assert choose(m, cls, Selectors(domains=frozenset({"kunde1.test"})), 5000) is not None
    assert choose(m, cls, Selectors(domains=frozenset({"kunde2.test"})), 5000) is None
    assert choose(m, cls, Selectors(reason=re.compile("INVALID", re.I)), 5000) is not None
    assert choose(m, cls, Selectors(reason=re.compile("mailbox")), 5000) is None


def test_empty_selectors() -> None:
    assert Selectors().empty
    assert not Selectors(all=True).empty
    assert not Selectors(limit=3, providers=frozenset({"x"})).empty
    assert Selectors(limit=3).empty


def test_reason_text_does_not_override_known_hosts() -> None:
    reason = "host 127.0.0.1[127.0.0.1] said: 421 Nemesis ESMTP Service not available"
    answers = {"elsewhere.test": MxAnswer("elsewhere.test", hosts=("mx.elsewhere.test",))}
    c = classify_recipient(rcpt("a@elsewhere.test", reason), CATALOG, answers)
    assert c.provider is None and c.mx == "mx.elsewhere.test"
    assert "no known provider" in c.note
    named = "host mx.elsewhere.test[192.0.2.7] said: 421 Nemesis ESMTP Service not available"
    c = classify_recipient(rcpt("a@elsewhere.test", named), CATALOG, {})
    assert c.provider is None and c.mx == "mx.elsewhere.test"
    # Without any host (a DNS failure), the reply text alone may decide.
    failed = {"elsewhere.test": MxAnswer("elsewhere.test", error="DNS timeout")}
    c = classify_recipient(rcpt("a@elsewhere.test", reason), CATALOG, failed)
    assert (c.provider, c.classified_by) == ("gmx", "reason-text")
