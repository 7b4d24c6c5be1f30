"""asyncio helpers for work whose result must not be lost to a cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def outcome_of(work: Awaitable[T]) -> tuple[T, bool]:
    """(the result of `work`, whether this task was cancelled while waiting for it).

    For work that cannot be taken back once started (postsuper in a thread, a
    message whose final dot is out): a cancellation, also a second one, waits
    for its result instead of losing it. The caller acts on the result, then
    raises CancelledError itself when told it was cancelled.
    """
    job = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            return await asyncio.shield(job), cancelled
        except asyncio.CancelledError:
            if job.cancelled():
                raise
            cancelled = True
