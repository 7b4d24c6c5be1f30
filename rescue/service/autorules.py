"""The service's auto rules (pure): which deferred messages a cycle takes, within what quotas.

A provider's `min_age` counts from the message's arrival: Postfix tries a new
message at once, so a deferred message has been deferred about that long. (Its
defer log has no times, and the queue file's mtime is the next retry, not the
first failure.)
"""

from __future__ import annotations

import collections
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from rescue.classify.catalog import Provider
from rescue.classify.select import Selectors, choose
from rescue.config import SmarthostConfig
from rescue.model import Classification, QueuedMessage, Selected

HOUR = 3600.0
DAY = 86400.0
# A message the smarthost refused is not offered again sooner than Postfix itself would
# retry it (its minimal_backoff_time default); asking every interval only hammers it.
RELEASE_BACKOFF = 300.0
UNKNOWN_PROVIDER = "(unknown)"

# Why a message matching an auto rule waits for a later cycle (a metric label too).
MIN_MESSAGES = "min_messages"
MIN_AGE = "min_age"
BACKOFF = "backoff"
MAX_PER_CYCLE = "max_per_cycle"
QUOTA = "quota"
LIMITS = frozenset({MAX_PER_CYCLE, QUOTA})  # the rest are rules: logged at debug level


@dataclass(frozen=True, slots=True)
class Choice:
    """What one cycle takes, oldest first, and what waits for a later cycle and why."""

    selection: tuple[Selected, ...]
    held_back: Mapping[tuple[str, str], int]  # (provider, why) -> messages
    deferred: Mapping[str, tuple[int, int]]  # provider -> (messages, recipients)


def deferred_by_provider(
    messages: Sequence[QueuedMessage], classes: Mapping[str, Sequence[Classification]]
) -> dict[str, tuple[int, int]]:
    """Deferred (messages, recipients) by the recipients' provider."""
    msgs: collections.Counter[str] = collections.Counter()
    rcpts: collections.Counter[str] = collections.Counter()
    for message in messages:
        if message.queue_name != "deferred":
            continue
        providers = [c.provider or UNKNOWN_PROVIDER for c in classes[message.queue_id]]
        rcpts.update(providers)
        msgs.update(set(providers))
    return {p: (msgs[p], rcpts[p]) for p in sorted(msgs)}


def _arrival(selected: Selected) -> int:
    return selected.message.arrival_time


def choose_auto(
    messages: Sequence[QueuedMessage],
    classes: Mapping[str, Sequence[Classification]],
    providers: Sequence[Provider],
    now: float,
    *,
    backoff: Collection[str] = (),
) -> Choice:
    """Deferred messages the `reroute = "auto"` providers' rules take this cycle.

    A message is taken for the first auto provider (in catalog order) that one of its
    recipients is deferred by with a matching reason, as `flush --provider` would take
    it, when: at least `min_messages` messages are so deferred at that provider, the
    message is `min_age` old, and it is not in `backoff` (keys of messages released
    lately). At most `max_per_cycle` per provider, the oldest.
    """
    autos = [p for p in providers if p.reroute == "auto"]
    matching: dict[str, list[Selected]] = {p.name: [] for p in autos}
    for message in messages:
        for provider in autos:
            only = Selectors(providers=frozenset({provider.name}))
            selected = choose(message, classes[message.queue_id], only, now)
            if selected is not None:
                matching[provider.name].append(selected)
                break
    held: collections.Counter[tuple[str, str]] = collections.Counter()
    chosen: list[Selected] = []
    for provider in autos:
        found = sorted(matching[provider.name], key=_arrival)
        if found and len(found) < provider.min_messages:
            held[provider.name, MIN_MESSAGES] += len(found)
            continue
        ripe = []
        for selected in found:
            if now - selected.message.arrival_time < provider.min_age:
                held[provider.name, MIN_AGE] += 1
            elif selected.message.key in backoff:
                held[provider.name, BACKOFF] += 1
            else:
                ripe.append(selected)
        cap = provider.max_per_cycle
        if cap is not None and len(ripe) > cap:
            held[provider.name, MAX_PER_CYCLE] += len(ripe) - cap
            ripe = ripe[:cap]
        chosen.extend(ripe)
    chosen.sort(key=_arrival)
    return Choice(tuple(chosen), dict(held), deferred_by_provider(messages, classes))


@dataclass(frozen=True, slots=True)
class Quota:
    """What the smarthosts' quotas allow this cycle."""

    smarthosts: tuple[SmarthostConfig, ...]  # those the cycle may use, in config order
    budget: int | None  # the most messages the cycle may send; None: no limit
    full: tuple[str, ...] = ()  # smarthosts at a limit, in words


def remaining(host: SmarthostConfig, last_hour: int, last_day: int) -> int | None:
    """Messages `host` may still take now; None: it has no limit."""
    left = [
        limit - sent
        for limit, sent in ((host.max_per_hour, last_hour), (host.max_per_day, last_day))
        if limit is not None
    ]
    return max(0, min(left)) if left else None


def smarthost_quota(
    smarthosts: Sequence[SmarthostConfig],
    last_hour: Mapping[str, int],
    last_day: Mapping[str, int],
    demand: int,
) -> Quota:
    """The smarthosts a cycle of `demand` messages may use, and how many it may send.

    Counts are what each smarthost accepted in the last hour and day (the journal's,
    so a restart does not reset them). The first smarthost with room sets the budget;
    a later one stands by (for failover) only when it has room for the whole cycle,
    since the dispatcher may hand it every message. A full one sits the cycle out.
    """
    left = {}
    full = []
    for host in smarthosts:
        hour, day = last_hour.get(host.name, 0), last_day.get(host.name, 0)
        left[host.name] = remaining(host, hour, day)
        if left[host.name] == 0:
            took = [
                f"{count} in the last {span}" + (f" (max_per_{span} {limit})" if limit else "")
                for count, span, limit in (
                    (hour, "hour", host.max_per_hour),
                    (day, "day", host.max_per_day),
                )
            ]
            full.append(f"{host.name} took {', '.join(took)}")
    usable = [h for h in smarthosts if left[h.name] != 0]
    if not usable:
        return Quota((), 0, tuple(full))
    budget = left[usable[0].name]
    need = demand if budget is None else min(budget, demand)
    standby = [h for h in usable[1:] if (room := left[h.name]) is None or room >= need]
    return Quota((usable[0], *standby), budget, tuple(full))


def within_budget(choice: Choice, budget: int | None) -> Choice:
    """The choice cut to the budget (the oldest stay); the rest wait for the quota."""
    if budget is None or len(choice.selection) <= budget:
        return choice
    held = collections.Counter(choice.held_back)
    for selected in choice.selection[budget:]:
        held[selected.provider, QUOTA] += 1
    return replace(choice, selection=choice.selection[:budget], held_back=dict(held))
