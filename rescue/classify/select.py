"""Choose the messages a flush takes (pure: listing and classifications in, choice out)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rescue.model import Classification, QueuedMessage, Recipient, Selected


@dataclass(frozen=True, slots=True)
class Selectors:
    providers: frozenset[str] = frozenset()
    queue_ids: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    older_than: float | None = None  # seconds since arrival
    reason: re.Pattern[str] | None = None
    limit: int | None = None
    all: bool = False

    @property
    def empty(self) -> bool:
        return not (
            self.providers
            or self.queue_ids
            or self.domains
            or self.older_than is not None
            or self.reason is not None
            or self.all
        )


def _wanted(recipient: Recipient, cls: Classification, selectors: Selectors) -> bool:
    """The recipient passes --provider, --domain and --reason (those given)."""
    if selectors.providers and cls.provider not in selectors.providers:
        return False
    if selectors.domains and recipient.domain not in selectors.domains:
        return False
    return selectors.reason is None or bool(selectors.reason.search(recipient.delay_reason))


def _affected(recipient: Recipient, cls: Classification, selectors: Selectors) -> bool:
    """The recipient's provider wants this deferral rerouted, and the selectors agree."""
    return (
        cls.provider is not None
        and cls.reason_matched is not None
        and _wanted(recipient, cls, selectors)
    )


def choose(
    message: QueuedMessage,
    classes: Sequence[Classification],
    selectors: Selectors,
    now: float,
) -> Selected | None:
    """The selection of one message, or None.

    Only the deferred queue is considered: mail on hold was put there by someone,
    mail in `active` is being delivered by Postfix right now. A message named
    with --queue-id is taken whatever its provider's reason patterns say; the
    other selectors still narrow it.
    """
    if message.queue_name != "deferred" or not message.recipients:
        return None
    if selectors.older_than is not None and now - message.arrival_time < selectors.older_than:
        return None
    pairs = list(zip(message.recipients, classes, strict=True))
    if selectors.queue_ids:
        if message.queue_id not in selectors.queue_ids:
            return None
        hits = [c for r, c in pairs if _wanted(r, c, selectors)]
    else:
        hits = [c for r, c in pairs if _affected(r, c, selectors)]
    if not hits:
        return None
    return Selected(message, hits[0].provider or "-", hits[0].reason_matched, tuple(classes))
