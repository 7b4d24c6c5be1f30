"""The smarthost pool: reused sessions, failover in config order, retries, cool-downs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from rescue.config import RetryConfig, SmarthostConfig
from rescue.errors import DeliveryError
from rescue.model import Envelope
from rescue.smarthost.session import Accepted, AcceptedWhileCancelled, Session, SessionError

log = logging.getLogger(__name__)


@dataclass
class _Smarthost:
    cfg: SmarthostConfig
    slots: asyncio.Semaphore
    idle: list[Session] = field(default_factory=list)
    failures: int = 0  # session failures in a row
    resting_until: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # by kind, for the summary


class AllResting(DeliveryError):
    """Every smarthost is in its cool-down; retrying now would only hammer them."""


def _retryable(exc: BaseException) -> bool:
    return (
        isinstance(exc, DeliveryError)
        and exc.transient
        and not exc.uncertain
        and not isinstance(exc, AllResting)
    )


class Dispatcher:
    """Sends envelopes through the first smarthost that takes them."""

    def __init__(
        self,
        smarthosts: Sequence[SmarthostConfig],
        retry: RetryConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hosts = [
            _Smarthost(cfg, asyncio.Semaphore(cfg.max_connections)) for cfg in smarthosts
        ]
        self._retry = retry
        self._clock = clock
        self._busy: set[Session] = set()  # sessions inside a transaction

    @property
    def concurrency(self) -> int:
        return max(h.cfg.max_connections for h in self._hosts)

    def error_counts(self) -> dict[str, dict[str, int]]:
        return {h.cfg.name: dict(h.errors) for h in self._hosts if h.errors}

    async def deliver(
        self,
        envelope: Envelope,
        sender: str,
        on_attempt: Callable[[str], None],
        on_accepted: Callable[[Accepted], None] | None = None,
    ) -> Accepted:
        """Deliver or raise the last DeliveryError; `on_attempt(name)` runs before each try.

        `on_accepted` runs the moment a smarthost's 250 to the final dot is read, before
        anything else (the session is kept or ended politely only after it); also when
        the task is cancelled meanwhile (AcceptedWhileCancelled).

        Transient failures are retried with exponential backoff and jitter, each
        round trying every smarthost that is not resting, in config order.
        """
        # The first try runs outside tenacity's loop: nearly every message needs only
        # one, and the loop's machinery costs as much CPU as the SMTP transaction.
        try:
            return await self._one_round(envelope, sender, on_attempt, on_accepted)
        except DeliveryError as exc:
            if not _retryable(exc) or self._retry.attempts < 2:
                raise
            first_failure: DeliveryError | None = exc
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry.attempts),
            wait=wait_exponential_jitter(
                multiplier=self._retry.initial_wait,
                max=self._retry.max_wait,
                jitter=self._retry.initial_wait,
            ),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if first_failure is not None:
                    # Replays the try made above, so tenacity counts it and waits after it.
                    failure, first_failure = first_failure, None
                    raise failure
                return await self._one_round(envelope, sender, on_attempt, on_accepted)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _one_round(
        self,
        envelope: Envelope,
        sender: str,
        on_attempt: Callable[[str], None],
        on_accepted: Callable[[Accepted], None] | None,
    ) -> Accepted:
        errors: list[DeliveryError] = []
        now = self._clock()
        ready = [h for h in self._hosts if h.resting_until <= now]
        if not ready:
            wake = min(h.resting_until for h in self._hosts) - now
            raise AllResting(
                f"every smarthost is resting after repeated failures (for {wake:.0f}s more)",
                smarthost=self._hosts[0].cfg.name,
                transient=True,
                stage="connect",
            )
        for host in ready:
            on_attempt(host.cfg.name)
            try:
                return await self._try(host, envelope, sender, on_accepted)
            except DeliveryError as exc:
                host.errors[exc.stage or "other"] = host.errors.get(exc.stage or "other", 0) + 1
                log.warning("%s: %s", envelope.queue_id, exc)
                if exc.uncertain:
                    # The smarthost may have it: another try could deliver it twice.
                    raise
                errors.append(exc)
        transient = [e for e in errors if e.transient]
        raise (transient or errors)[-1]

    async def _try(
        self,
        host: _Smarthost,
        envelope: Envelope,
        sender: str,
        on_accepted: Callable[[Accepted], None] | None,
    ) -> Accepted:
        async with host.slots:
            session = await self._session(host)
            self._busy.add(session)
            name = host.cfg.name

            def at_once(reply: str) -> None:
                if on_accepted is not None:
                    on_accepted(Accepted(name, reply))

            try:
                reply = await session.send(envelope, sender, at_once)
            except SessionError:
                session.close()
                self._failed(host)
                raise
            except DeliveryError:
                await self._return(host, session)
                raise
            except AcceptedWhileCancelled as exc:
                session.close()
                if on_accepted is not None:
                    on_accepted(exc.accepted)
                raise
            except BaseException:
                session.close()
                raise
            finally:
                self._busy.discard(session)
            accepted = Accepted(host.cfg.name, reply)
            if on_accepted is not None:
                on_accepted(accepted)  # before any other await: see deliver()
            host.failures = 0
            await self._return(host, session)
            return accepted

    def abort(self) -> None:
        """Drop every transaction in progress at once (a stop that cannot wait longer).

        A message whose final dot is out becomes `uncertain` (the smarthost may have
        it); one whose dot has not left is never completed: the connection is reset.
        """
        for session in list(self._busy):
            session.abort()

    async def _session(self, host: _Smarthost) -> Session:
        while host.idle:
            session = host.idle.pop()
            if session.usable:
                return session
            await session.quit()
        session = Session(host.cfg)
        try:
            await session.open()
        except SessionError:
            self._failed(host)
            raise
        return session

    async def _return(self, host: _Smarthost, session: Session) -> None:
        """Keep a session for the next message, or end it politely with QUIT."""
        if session.usable:
            host.idle.append(session)
        else:
            await session.quit()

    def _failed(self, host: _Smarthost) -> None:
        host.failures += 1
        if host.failures >= host.cfg.max_failures:
            host.resting_until = self._clock() + host.cfg.cooldown
            host.failures = 0
            log.warning(
                "smarthost %s failed %d times in a row: resting for %.0fs",
                host.cfg.name,
                host.cfg.max_failures,
                host.cfg.cooldown,
            )

    async def close(self) -> None:
        """End the idle sessions with QUIT, all at once (each waits at most QUIT_TIMEOUT)."""
        idle = [session for host in self._hosts for session in host.idle]
        for host in self._hosts:
            host.idle.clear()
        await asyncio.gather(*(session.quit() for session in idle))
