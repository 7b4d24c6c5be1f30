"""The queue's shape for people (pure): qshape-like age buckets per group, reason summaries.

Rows count pending recipients, as qshape does for recipient domains, and the
distinct messages they belong to. Nothing here reads the queue or asks DNS: the
messages and their classifications come in, counts go out.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import StrEnum
from typing import NamedTuple

from rescue.classify.catalog import Catalog, KnownReason
from rescue.classify.classifier import mixed_providers
from rescue.classify.reasons import normalize_reason, reply_text
from rescue.model import Classification, QueuedMessage, Recipient

# qshape's default buckets (-t 5 -b 10): each limit, in minutes, twice the one before;
# a bucket holds ages below its limit and at or above the previous one; the last has none.
BUCKET_LIMITS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
BUCKET_LABELS = (*(str(m) for m in BUCKET_LIMITS), f"{BUCKET_LIMITS[-1]}+")
SECONDS_PER_MINUTE = 60

UNKNOWN = "(unknown)"
NO_REASON = "(no reason given)"
# qshape's name for the null sender's "domain".
NULL_SENDER_DOMAIN = "MAILER-DAEMON"


class By(StrEnum):
    """What the rows of a shape are."""

    PROVIDER = "provider"
    DOMAIN = "domain"
    REASON = "reason"
    SENDER_DOMAIN = "sender-domain"


class Item(NamedTuple):
    """One pending recipient with its message and classification.

    A named tuple: a scan makes one per deferred recipient, and a tuple is made
    several times faster than a frozen dataclass.
    """

    message: QueuedMessage
    recipient: Recipient
    classification: Classification


def items(
    messages: Iterable[QueuedMessage],
    classes: Mapping[str, Sequence[Classification]],
    queue_name: str | None = "deferred",
) -> Iterator[Item]:
    """The recipients of the messages in `queue_name` (None: every queue)."""
    for message in messages:
        if queue_name is not None and message.queue_name != queue_name:
            continue
        pairs = zip(message.recipients, classes[message.queue_id], strict=True)
        for recipient, classification in pairs:
            yield Item(message, recipient, classification)


def bucket_index(age_seconds: float) -> int:
    """The bucket of an age: 0 for under 5 minutes ... 9 for 1280 minutes and more."""
    minutes = max(age_seconds, 0.0) / SECONDS_PER_MINUTE
    return bisect.bisect_right(BUCKET_LIMITS, minutes)


def provider_key(classification: Classification) -> str:
    """The provider's name, "mixed: a+b" for a domain with several, or "(unknown)"."""
    return group_name(classification.provider, mixed_providers(classification))


def group_name(provider: str | None, mixed: Sequence[str] = ()) -> str:
    if provider is not None:
        return provider
    return "mixed: " + "+".join(mixed) if mixed else UNKNOWN


def reason_key(reason: str) -> str:
    """The reply (or the reason when there is none) with addresses and ids masked.

    The answering host and the command it replied to are left out, so one provider's
    reply from any of its MX hosts, and its "delivery temporarily suspended" copies,
    fall into one group.
    """
    return normalize_reason(reply_text(reason)) if reason else NO_REASON


def sender_domain(sender: str) -> str:
    return sender.rpartition("@")[2].lower() if sender else NULL_SENDER_DOMAIN


class _Tally:
    """Counts for one row while they are taken (a plain class: made once per row, and a
    dataclass costs a scan's start-up more than it saves)."""

    __slots__ = ("buckets", "messages", "oldest", "providers")

    def __init__(self) -> None:
        self.messages: set[str] = set()
        self.buckets = [0] * len(BUCKET_LABELS)
        self.providers: Counter[str] = Counter()
        self.oldest = 0.0

    def add(self, queue_id: str, provider: str, bucket: int, age: float) -> None:
        self.messages.add(queue_id)
        self.buckets[bucket] += 1
        self.providers[provider] += 1
        self.oldest = max(self.oldest, age)

    def row(self, key: str) -> Row:
        return Row(
            key=key,
            messages=len(self.messages),
            buckets=tuple(self.buckets),
            providers=tuple(name for name, _ in self.providers.most_common()),
            oldest=self.oldest,
        )


# The values below are named tuples, immutable as frozen dataclasses: making a
# dataclass costs a scan's start-up a millisecond each (it compiles its methods).


class Row(NamedTuple):
    key: str
    messages: int  # distinct messages
    buckets: tuple[int, ...]  # recipients per age bucket, as BUCKET_LABELS
    providers: tuple[str, ...] = ()  # provider keys of its recipients, most common first
    oldest: float = 0.0  # seconds

    @property
    def recipients(self) -> int:
        """qshape's T column."""
        return sum(self.buckets)


class Shape(NamedTuple):
    by: By
    total: Row
    rows: tuple[Row, ...]  # most recipients first


class _Keys:
    """The row key of an item; reason texts are normalised once per distinct text."""

    def __init__(self, by: By) -> None:
        self._reasons: dict[str, str] = {}
        keyers: dict[By, Callable[[Item, str], str]] = {
            By.PROVIDER: lambda item, provider: provider,
            By.DOMAIN: lambda item, provider: item.recipient.domain,
            By.REASON: lambda item, provider: self.reason(item.recipient.delay_reason),
            By.SENDER_DOMAIN: lambda item, provider: sender_domain(item.message.sender),
        }
        self.of = keyers[by]

    def reason(self, text: str) -> str:
        key = self._reasons.get(text)
        if key is None:
            key = self._reasons[text] = reason_key(text)
        return key


def shape(entries: Iterable[Item], by: By, now: float) -> Shape:
    """Rows of recipients per age bucket, grouped `by`, with their TOTAL row."""
    keys = _Keys(by)
    total = _Tally()
    groups: dict[str, _Tally] = {}
    # Classifications are shared (one per distinct domain and reason): name each once.
    providers: dict[int, str] = {}
    for item in entries:
        age = now - item.message.arrival_time
        bucket = bucket_index(age)
        provider = providers.get(id(item.classification))
        if provider is None:
            provider = providers[id(item.classification)] = provider_key(item.classification)
        key = keys.of(item, provider)
        tally = groups.get(key)
        if tally is None:
            tally = groups[key] = _Tally()
        queue_id = item.message.queue_id
        tally.add(queue_id, provider, bucket, age)
        total.add(queue_id, provider, bucket, age)
    rows = sorted((t.row(k) for k, t in groups.items()), key=lambda r: (-r.recipients, r.key))
    return Shape(by, total.row("TOTAL"), tuple(rows))


# --- reasons ---------------------------------------------------------------------------


class ReasonSummary(NamedTuple):
    """One distinct (provider, normalised reason) and what the catalog says about it."""

    reason: str
    provider: str | None  # None: mixed MX or unknown
    mixed: tuple[str, ...]  # the providers of a mixed-MX domain
    recipients: int
    messages: int
    oldest: float
    domains: tuple[tuple[str, int], ...]  # recipient domains, most recipients first
    example: str  # one delay reason as Postfix wrote it
    known: KnownReason | None = None
    selected: bool = False  # the provider's reason patterns pick it for rerouting

    @property
    def provider_key(self) -> str:
        return group_name(self.provider, self.mixed)


class _Group:
    """Counts for one group while they are taken."""

    __slots__ = ("domains", "earliest", "first", "messages")

    def __init__(self, first: Item) -> None:
        self.first = first
        self.messages: set[str] = set()
        self.domains: Counter[str] = Counter()
        self.earliest: int | None = None  # the oldest message's arrival time

    def add(self, item: Item) -> None:
        self.messages.add(item.message.queue_id)
        self.domains[item.recipient.domain] += 1
        arrival = item.message.arrival_time
        if self.earliest is None or arrival < self.earliest:
            self.earliest = arrival


def reasons(entries: Iterable[Item], catalog: Catalog, now: float) -> list[ReasonSummary]:
    """Each distinct reason per provider with counts, most recipients first.

    The catalog explains a reason by the known texts of the provider it is stuck at;
    it is asked once per group, with the first delay reason seen.
    """
    keys = _Keys(By.REASON)
    groups: dict[tuple[str, str], _Group] = {}
    for item in entries:
        key = (provider_key(item.classification), keys.reason(item.recipient.delay_reason))
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(item)
        group.add(item)
    summaries = []
    for (_, reason), group in groups.items():
        cls = group.first.classification
        example = group.first.recipient.delay_reason
        provider = catalog.by_name.get(cls.provider) if cls.provider else None
        summaries.append(
            ReasonSummary(
                reason=reason,
                provider=cls.provider,
                mixed=mixed_providers(cls),
                recipients=group.domains.total(),
                messages=len(group.messages),
                oldest=max(now - (group.earliest or now), 0.0),
                domains=tuple(group.domains.most_common()),
                example=example,
                known=provider.explain(example) if provider and example else None,
                selected=cls.reason_matched is not None,
            )
        )
    summaries.sort(key=lambda s: (-s.recipients, s.provider_key, s.reason))
    return summaries


# --- what could not be classified ------------------------------------------------------

# The classifier leaves no note only when no MX answer was at hand (scan --no-dns).
_NO_NOTE = "no MX lookup; neither the provider domains nor the reason text name a provider"


class Unclassified(NamedTuple):
    """Recipients of one domain that no provider could be named for, and why."""

    domain: str
    mixed: tuple[str, ...]  # the providers of a mixed-MX domain; () when unknown
    recipients: int
    messages: int
    why: str  # the classifier's note: the DNS error, the MX hosts of several providers


def unclassified(entries: Iterable[Item]) -> list[Unclassified]:
    """Domains whose recipients have no provider, most recipients first."""
    groups: dict[tuple[str, str], _Group] = {}
    for item in entries:
        cls = item.classification
        if cls.provider is None:
            key = (item.recipient.domain, cls.note)
            group = groups.get(key)
            if group is None:
                group = groups[key] = _Group(item)
            group.add(item)
    found = [
        Unclassified(
            domain=domain,
            mixed=mixed_providers(group.first.classification),
            recipients=group.domains.total(),
            messages=len(group.messages),
            why=note or _NO_NOTE,
        )
        for (domain, note), group in groups.items()
    ]
    found.sort(key=lambda u: (-u.recipients, u.domain))
    return found


# --- MX hosts no provider matched --------------------------------------------------------

# Hosts and recipient domains an unknown-MX group names before "+N" in the table.
SHOWN_NAMES = 3


class UnknownMx(NamedTuple):
    """Recipients whose MX hosts no provider matched, grouped by the hosts' registered domain.

    What an admin needs to add a [[provider]]: the hosts and how much mail waits there.
    """

    domain: str  # the registered domain of the MX hosts, e.g. example-hoster.net
    recipients: int
    messages: int
    hosts: tuple[str, ...]  # the MX hosts seen, most recipients first
    domains: tuple[tuple[str, int], ...]  # recipient domains, most recipients first

    @property
    def pattern(self) -> str:
        """A glob for [[provider]] mx that names every host of the registered domain."""
        return f"*.{self.domain}"


def unknown_mx(entries: Iterable[Item], registered: Callable[[str], str]) -> list[UnknownMx]:
    """Recipients at MX hosts of no known provider, by `registered` domain, most first.

    Only recipients whose MX host is known count: not those whose lookup failed, nor
    those at MX hosts of several providers.
    """
    groups: dict[str, _Group] = {}
    hosts: dict[str, Counter[str]] = {}
    names: dict[str, str] = {}  # host -> registered domain, asked once per host
    for item in entries:
        cls = item.classification
        if cls.provider is not None or cls.mx is None or mixed_providers(cls):
            continue
        domain = names.get(cls.mx)
        if domain is None:
            domain = names[cls.mx] = registered(cls.mx)
        group = groups.get(domain)
        if group is None:
            group = groups[domain] = _Group(item)
            hosts[domain] = Counter()
        group.add(item)
        hosts[domain][cls.mx] += 1
    found = [
        UnknownMx(
            domain=domain,
            recipients=group.domains.total(),
            messages=len(group.messages),
            hosts=tuple(host for host, _ in hosts[domain].most_common()),
            domains=tuple(group.domains.most_common()),
        )
        for domain, group in groups.items()
    ]
    found.sort(key=lambda u: (-u.recipients, u.domain))
    return found
