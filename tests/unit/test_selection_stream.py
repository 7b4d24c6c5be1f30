"""A flush's selection as it streams: parts of the listing in, batches out, memory bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from rescue.classify.catalog import Catalog, load_catalog
from rescue.classify.inventory import Inventory, inventory_parts, take_inventory
from rescue.classify.select import Selectors
from rescue.cli.flush_cmd import Chooser
from rescue.cli.flush_report import LIST_LIMIT, FlushReporter
from rescue.flush.plan import Outcome, Summary
from rescue.model import Classification, QueuedMessage, Recipient

IONOS = Classification(provider="ionos", classified_by="domains", reason_matched="invalid sender")
OTHER = Classification(provider=None)


def message(n: int, arrival: int) -> QueuedMessage:
    return QueuedMessage(
        queue_id=f"AAAA{n:06d}",
        queue_name="deferred",
        arrival_time=arrival,
        size=1000,
        sender="alice@example.com",
        recipients=(Recipient(f"c{n}@kunde1.test", "421 invalid sender domain"),),
    )


class FakeReader:
    """Parts of a listing as QueueReader.parts gives them, and the size asked for."""

    def __init__(self, parts: list[list[tuple[QueuedMessage, Classification]]]) -> None:
        self.catalog: Catalog = load_catalog(())
        self._parts = parts
        self.sizes: list[int | None] = []

    async def parts(self, size: int | None) -> AsyncIterator[Inventory]:
        self.sizes.append(size)
        for entries in self._parts:
            part = Inventory()
            for msg, cls in entries:
                part.messages.append(msg)
                part.classes[msg.queue_id] = (cls,)
            yield part


# Arrival times out of order across parts; every third message is not for ionos.
ARRIVALS = [50, 10, 80, 30, 70, 20, 90, 60, 40, 15, 85, 5]
PARTS = [
    [(message(n, ARRIVALS[n]), OTHER if n % 3 == 2 else IONOS) for n in range(k, k + 4)]
    for k in range(0, 12, 4)
]


async def batches(chooser: Chooser) -> list[list[str]]:
    return [[s.message.queue_id for s in batch] async for batch in chooser.batches()]


def arrival_of(queue_id: str) -> int:
    return ARRIVALS[int(queue_id[4:])]


def test_batches_follow_the_parts_oldest_first_within_each() -> None:
    reader = FakeReader(PARTS)
    chooser = Chooser(reader, Selectors(providers=frozenset({"ionos"})), everything=False)  # type: ignore[arg-type]

    got = asyncio.run(batches(chooser))

    assert len(got) == 3  # one batch a part: nothing waits for the listing's end
    assert reader.sizes == [500]
    for batch, part in zip(got, PARTS, strict=True):
        wanted = [m.queue_id for m, c in part if c is IONOS]
        assert sorted(batch) == sorted(wanted)
        assert [arrival_of(q) for q in batch] == sorted(arrival_of(q) for q in batch)


def test_limit_takes_the_oldest_of_the_whole_queue() -> None:
    chooser = Chooser(
        FakeReader(PARTS),  # type: ignore[arg-type]
        Selectors(providers=frozenset({"ionos"}), limit=3),
        everything=False,
    )

    got = asyncio.run(batches(chooser))

    ionos = sorted((m.arrival_time, m.queue_id) for part in PARTS for m, c in part if c is IONOS)
    assert got == [[queue_id for _, queue_id in ionos[:3]]]


def test_all_is_the_whole_selection_oldest_first() -> None:
    chooser = Chooser(FakeReader(PARTS), Selectors(all=True), everything=False)  # type: ignore[arg-type]

    chosen = asyncio.run(chooser.all())

    arrivals = [s.message.arrival_time for s in chosen]
    assert arrivals == sorted(arrivals)
    assert len(chosen) == 8


def outcome(n: int, action: str) -> Outcome:
    return Outcome(
        queue_id=f"AAAA{n:06d}",
        action=action,
        sender="alice@example.com",
        envelope_sender="SRS0=x=y=example.com=alice@srs.test",
        recipients=(f"c{n}@kunde1.test",),
        provider="ionos",
        smarthost="relay1",
        reply="250 ok",
        detail="" if action == "rerouted" else "smarthost said no",
    )


def test_a_long_flush_keeps_only_what_its_closing_list_shows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    reporter = FlushReporter(as_json=False, total=None, interactive=False, dry_run=False)
    summary = Summary()
    for n in range(5 * LIST_LIMIT):
        action = "released" if n in (7, 400) else "rerouted"
        reporter(outcome(n, action))
        summary.add(outcome(n, action))

    assert len(reporter.outcomes) <= LIST_LIMIT + 1 + 2
    reporter.finish(summary)
    out = capsys.readouterr().out
    assert "AAAA000007 released: smarthost said no" in out
    assert "AAAA000400 released: smarthost said no" in out
    assert f"({5 * LIST_LIMIT} messages: rerouted ones are not listed" in out
    assert "rerouted via" not in out


def listing(n: int) -> list[QueuedMessage]:
    return [message(i, 1000 + i) for i in range(n)]


def test_inventory_parts_cut_the_listing_and_keep_a_repeated_message_once() -> None:
    entries = listing(7)
    entries.insert(3, entries[1])  # showq listed it again after it moved between queues
    catalog = load_catalog(())

    async def parts(size: int | None) -> list[list[str]]:
        return [
            [m.queue_id for m in part.messages]
            async for part in inventory_parts(entries, catalog, None, (), size)
        ]

    ids = [m.queue_id for m in listing(7)]
    assert asyncio.run(parts(None)) == [ids]
    assert asyncio.run(parts(4)) == [ids[:3], ids[3:7]]  # 4 entries, the repeat dropped
    whole = asyncio.run(take_inventory(entries, catalog, None))
    assert [m.queue_id for m in whole.messages] == ids
    assert set(whole.classes) == set(ids)
