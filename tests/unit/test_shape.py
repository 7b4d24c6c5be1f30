"""The queue's shape: qshape's age buckets, grouping, reason and unclassified summaries."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rescue.classify.catalog import Catalog, KnownReason, Provider
from rescue.classify.shape import (
    BUCKET_LABELS,
    NULL_SENDER_DOMAIN,
    UNKNOWN,
    By,
    Item,
    bucket_index,
    items,
    reason_key,
    reasons,
    shape,
    unclassified,
    unknown_mx,
)
from rescue.classify.suffix import registered_domain
from rescue.cli.scan_cmd import BY_CHOICES
from rescue.model import Classification, QueuedMessage, Recipient

NOW = 1_700_000_000
MINUTE = 60
IONOS_SAID = (
    "host mx00.kundenserver.de[212.227.15.41] said: 421 invalid sender domain, possibly "
    "misconfigured (in reply to MAIL FROM command)"
)
IONOS_OTHER_HOST = IONOS_SAID.replace("mx00", "mx01").replace("15.41]", "15.42]")
REFUSED = "connect to 127.0.0.1[127.0.0.1]:2525: Connection refused"

IONOS = Classification("ionos", "mx00.kundenserver.de", "reason-host", "invalid sender domain")
GMX = Classification("gmx", "mx00.gmx.net", "dns-mx")
MIXED = Classification(
    None, "mx00.kundenserver.de", "dns-mx", note="MX hosts of several providers: gmx, ionos"
)
DNS_FAILED = Classification(None, note="MX lookup for broken.test failed: DNS timeout after 5s")

CATALOG = Catalog(
    (
        Provider(
            name="ionos",
            label="1&1 / IONOS",
            known=(
                KnownReason(
                    "invalid sender domain",
                    meaning="the sender domain looks wrong",
                    reroute_helps=True,
                    fix="fix the sender's DNS",
                ),
            ),
        ),
        Provider(name="gmx", label="GMX"),
    )
)


def message(
    qid: str,
    *recipients: tuple[str, str],
    minutes: float = 1,
    sender: str = "shop@sender.test",
    queue: str = "deferred",
) -> QueuedMessage:
    return QueuedMessage(
        queue_id=qid,
        queue_name=queue,
        arrival_time=int(NOW - minutes * MINUTE),
        size=1000,
        sender=sender,
        recipients=tuple(Recipient(address, reason) for address, reason in recipients),
    )


def item(msg: QueuedMessage, index: int, cls: Classification) -> Item:
    return Item(msg, msg.recipients[index], cls)


# -- buckets ----------------------------------------------------------------------------


def qshape_bucket(age_seconds: float) -> int:
    """qshape's own formula (its `bucket` sub) with -t 5 -b 10, counted from 0."""
    m = age_seconds / (60 * 5)
    if m < 1:
        return 0
    return min(2 + int(math.log(m) / math.log(2)), 10) - 1


@pytest.mark.parametrize(
    ("minutes", "label"),
    [
        (0, "5"),
        (4.99, "5"),
        (5, "10"),
        (9.99, "10"),
        (10, "20"),
        (639.9, "640"),
        (640, "1280"),
        (1279.9, "1280"),
        (1280, "1280+"),
        (60 * 24 * 30, "1280+"),
        (-3, "5"),  # a clock that went back: no negative age
    ],
)
def test_bucket_edges(minutes: float, label: str) -> None:
    assert BUCKET_LABELS[bucket_index(minutes * MINUTE)] == label


@given(st.floats(min_value=0, max_value=10**8, allow_nan=False))
@example(300.0)  # 5 minutes: the second bucket
@example(38_399.9)  # just under 640 minutes
@example(76_800.0)  # 1280 minutes: the last bucket
def test_buckets_agree_with_qshape(age: float) -> None:
    assert bucket_index(age) == qshape_bucket(age)


# -- grouping ---------------------------------------------------------------------------


def test_items_take_one_queue_and_pair_classifications() -> None:
    deferred = message("A1", ("a@kunde.test", IONOS_SAID), ("b@gmx.test", REFUSED))
    held = message("H1", ("c@kunde.test", IONOS_SAID), queue="hold")
    classes = {"A1": (IONOS, GMX), "H1": (IONOS,)}
    found = list(items([deferred, held], classes))
    assert [(i.recipient.address, i.classification.provider) for i in found] == [
        ("a@kunde.test", "ionos"),
        ("b@gmx.test", "gmx"),
    ]
    assert len(list(items([deferred, held], classes, queue_name=None))) == 3


def test_shape_by_provider_counts_recipients_per_bucket_and_distinct_messages() -> None:
    young = message("A1", ("a@k1.test", IONOS_SAID), ("b@k2.test", IONOS_SAID), minutes=2)
    old = message("A2", ("c@k1.test", IONOS_OTHER_HOST), ("d@gmx.test", REFUSED), minutes=90)
    mixed = message("A3", ("e@mix.test", REFUSED), minutes=7)
    failed = message("A4", ("f@broken.test", REFUSED), minutes=2000)
    entries = [
        item(young, 0, IONOS),
        item(young, 1, IONOS),
        item(old, 0, IONOS),
        item(old, 1, GMX),
        item(mixed, 0, MIXED),
        item(failed, 0, DNS_FAILED),
    ]
    found = shape(entries, By.PROVIDER, NOW)
    rows = {row.key: row for row in found.rows}
    assert [row.key for row in found.rows] == ["ionos", UNKNOWN, "gmx", "mixed: gmx+ionos"]
    ionos = rows["ionos"]
    assert (ionos.messages, ionos.recipients) == (2, 3)
    assert ionos.buckets[BUCKET_LABELS.index("5")] == 2
    assert ionos.buckets[BUCKET_LABELS.index("160")] == 1
    assert ionos.oldest == pytest.approx(90 * MINUTE, abs=1)
    assert rows["mixed: gmx+ionos"].buckets[BUCKET_LABELS.index("10")] == 1
    assert rows[UNKNOWN].buckets[-1] == 1
    assert (found.total.key, found.total.messages, found.total.recipients) == ("TOTAL", 4, 6)
    assert sum(found.total.buckets) == 6


def test_shape_by_domain_names_the_providers_of_each_row() -> None:
    first = message("A1", ("a@k1.test", IONOS_SAID), ("b@k1.test", IONOS_SAID))
    second = message("A2", ("c@k1.test", REFUSED))
    entries = [item(first, 0, IONOS), item(first, 1, IONOS), item(second, 0, MIXED)]
    (row,) = shape(entries, By.DOMAIN, NOW).rows
    assert (row.key, row.messages, row.recipients) == ("k1.test", 2, 3)
    assert row.providers == ("ionos", "mixed: gmx+ionos")


def test_shape_by_reason_groups_hosts_and_suspended_copies() -> None:
    suspended = "delivery temporarily suspended: " + IONOS_SAID
    msg = message(
        "A1", ("a@k.test", IONOS_SAID), ("b@k.test", IONOS_OTHER_HOST), ("c@k.test", suspended)
    )
    refused = message("A2", ("d@k.test", REFUSED))
    entries = [item(msg, i, IONOS) for i in range(3)] + [item(refused, 0, GMX)]
    found = shape(entries, By.REASON, NOW)
    assert [(row.key, row.recipients) for row in found.rows] == [
        ("421 invalid sender domain, possibly misconfigured", 3),
        ("connect to IP[IP]:2525: Connection refused", 1),
    ]


def test_shape_by_sender_domain_names_the_null_sender_like_qshape() -> None:
    bounce = message("A1", ("a@k.test", REFUSED), ("b@k.test", REFUSED), sender="")
    shop = message("A2", ("c@k.test", REFUSED), sender="Shop@Sender.TEST")
    entries = [item(bounce, 0, GMX), item(bounce, 1, GMX), item(shop, 0, GMX)]
    rows = {row.key: row for row in shape(entries, By.SENDER_DOMAIN, NOW).rows}
    assert rows[NULL_SENDER_DOMAIN].messages == 1
    assert rows[NULL_SENDER_DOMAIN].recipients == 2
    assert rows["sender.test"].recipients == 1


def test_empty_queue_has_a_zero_total() -> None:
    found = shape([], By.PROVIDER, NOW)
    assert found.rows == ()
    assert (found.total.messages, found.total.recipients) == (0, 0)
    assert len(found.total.buckets) == len(BUCKET_LABELS)


def test_reason_key_masks_and_keeps_the_reply() -> None:
    assert reason_key(IONOS_SAID) == reason_key(IONOS_OTHER_HOST)
    assert reason_key("") == "(no reason given)"


# -- reasons and unclassified -----------------------------------------------------------


def test_reasons_per_provider_with_catalog_advice() -> None:
    msg = message("A1", ("a@k1.test", IONOS_SAID), ("b@k2.test", IONOS_OTHER_HOST))
    other = message("A2", ("c@k1.test", IONOS_SAID), minutes=30)
    gmx = message("A3", ("d@gmx.test", REFUSED))
    unmatched = Classification("ionos", classified_by="dns-mx")
    entries = [
        item(msg, 0, IONOS),
        item(msg, 1, IONOS),
        item(other, 0, IONOS),
        item(gmx, 0, GMX),
        item(message("A4", ("e@k3.test", REFUSED)), 0, unmatched),
        item(message("A5", ("f@mix.test", REFUSED)), 0, MIXED),
    ]
    found = reasons(entries, CATALOG, NOW)
    first = found[0]
    assert (first.provider, first.recipients, first.messages) == ("ionos", 3, 2)
    assert first.domains == (("k1.test", 2), ("k2.test", 1))
    assert first.known is not None and first.known.fix == "fix the sender's DNS"
    assert first.selected
    assert first.oldest == pytest.approx(30 * MINUTE, abs=1)
    rest = {(s.provider_key, s.reason): s for s in found[1:]}
    refused = "connect to IP[IP]:2525: Connection refused"
    assert set(rest) == {("gmx", refused), ("ionos", refused), ("mixed: gmx+ionos", refused)}
    assert rest["ionos", refused].known is None and not rest["ionos", refused].selected
    assert rest["mixed: gmx+ionos", refused].mixed == ("gmx", "ionos")
    assert rest["mixed: gmx+ionos", refused].provider is None


def test_unclassified_lists_each_domain_and_why() -> None:
    entries = [
        item(message("A1", ("a@mix.test", REFUSED)), 0, MIXED),
        item(message("A2", ("b@mix.test", REFUSED)), 0, MIXED),
        item(message("A3", ("c@broken.test", REFUSED)), 0, DNS_FAILED),
        item(message("A4", ("d@k.test", REFUSED)), 0, Classification(None)),
        item(message("A5", ("e@k.test", IONOS_SAID)), 0, IONOS),
    ]
    found = unclassified(entries)
    assert [(u.domain, u.recipients, u.mixed) for u in found] == [
        ("mix.test", 2, ("gmx", "ionos")),
        ("broken.test", 1, ()),
        ("k.test", 1, ()),
    ]
    assert "DNS timeout" in found[1].why
    assert "no MX lookup" in found[2].why


def unknown(mx: str) -> Classification:
    return Classification(None, mx, note=f"{mx}: no known provider")


def test_unknown_mx_groups_by_registered_domain_with_counts() -> None:
    hoster1 = unknown("mx1.mail.example-hoster.net")
    hoster2 = unknown("mx2.mail.example-hoster.net")
    entries = [
        # One message, two recipients at the hoster: two recipients, one message.
        item(message("B1", ("a@one.test", REFUSED), ("b@one.test", REFUSED)), 0, hoster1),
        item(message("B1", ("a@one.test", REFUSED), ("b@one.test", REFUSED)), 1, hoster1),
        item(message("B2", ("c@two.test", REFUSED)), 0, hoster2),
        item(message("B3", ("d@own.co.uk", REFUSED)), 0, unknown("mail.own.co.uk")),
        # Not listed: a known provider, mixed MX, a failed lookup, no host at all.
        item(message("B4", ("e@k.test", IONOS_SAID)), 0, IONOS),
        item(message("B5", ("f@mix.test", REFUSED)), 0, MIXED),
        item(message("B6", ("g@broken.test", REFUSED)), 0, DNS_FAILED),
        item(message("B7", ("h@k.test", REFUSED)), 0, Classification(None)),
    ]
    found = unknown_mx(entries, registered_domain)
    assert [(u.domain, u.recipients, u.messages) for u in found] == [
        ("example-hoster.net", 3, 2),
        ("own.co.uk", 1, 1),
    ]
    hoster = found[0]
    assert hoster.pattern == "*.example-hoster.net"
    assert hoster.hosts == ("mx1.mail.example-hoster.net", "mx2.mail.example-hoster.net")
    assert hoster.domains == (("one.test", 2), ("two.test", 1))


def test_registered_domain_uses_the_public_suffix_list() -> None:
    assert registered_domain("mx1.mail.example-hoster.net") == "example-hoster.net"
    assert registered_domain("MAIL.Own.co.uk.") == "own.co.uk"
    assert registered_domain("mx.kunde.test") == "kunde.test"
    # A name that is itself a public suffix stays as it is.
    assert registered_domain("co.uk") == "co.uk"


def test_scan_offers_every_grouping_of_the_shape() -> None:
    # scan_cmd spells the choices out so that starting a scan does not import the shape.
    assert set(BY_CHOICES) == {b.value for b in By}
    assert BY_CHOICES[0] == By.PROVIDER.value
