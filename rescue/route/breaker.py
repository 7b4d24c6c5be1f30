"""Each provider's circuit breaker (pure): healthy, or rerouting until probes say it is back.

    healthy --the auto rules see its reasons--> rerouting
    rerouting --`recover_after` accepted probes in a row--> healthy

A manual override (`route set PROVIDER rerouting|healthy`) wins over the breaker's own
state until it is cleared (`route set PROVIDER auto`); the breaker goes on beneath it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

HEALTHY = "healthy"
REROUTING = "rerouting"
STATES = (HEALTHY, REROUTING)
AUTO = "auto"  # clears an override
OVERRIDES = (REROUTING, HEALTHY, AUTO)


@dataclass(frozen=True, slots=True)
class ProviderRoute:
    """Where a provider's new mail goes, and why."""

    provider: str
    state: str = HEALTHY  # the breaker's own state
    reason: str = ""  # why it is in that state
    changed_at: float = 0.0  # when the effective state last changed (epoch seconds)
    override: str | None = None  # HEALTHY or REROUTING, set by hand
    probes_ok: int = 0  # accepted probes in a row while rerouting

    @property
    def effective(self) -> str:
        return self.override or self.state

    @property
    def rerouting(self) -> bool:
        return self.effective == REROUTING

    def describe(self) -> str:
        """The state in words, for logs, `status` and `route show`."""
        if self.override is not None:
            text = f"{self.override} (set by hand"
            if self.override != self.state:
                text += f"; by itself it would be {self.state}"
            return text + ")"
        return self.state


def tripped(route: ProviderRoute, why: str, now: float) -> ProviderRoute:
    """The auto rules see the provider's reasons: healthy goes rerouting."""
    if route.state == REROUTING:
        return route
    return _changed(route, replace(route, state=REROUTING, reason=why, probes_ok=0), now)


def probed(
    route: ProviderRoute, accepted: bool, detail: str, now: float, *, recover_after: int
) -> ProviderRoute:
    """A probe's answer while rerouting: enough accepted in a row bring it back."""
    if route.state != REROUTING:
        return route
    if not accepted:
        return replace(route, probes_ok=0)
    count = route.probes_ok + 1
    if count < recover_after:
        return replace(route, probes_ok=count)
    why = f"{count} probes in a row accepted; last: {detail}"
    return _changed(route, replace(route, state=HEALTHY, reason=why, probes_ok=0), now)


def overridden(route: ProviderRoute, value: str, now: float) -> ProviderRoute:
    """A manual override (REROUTING or HEALTHY), or AUTO to clear it."""
    if value not in OVERRIDES:
        raise ValueError(f"expected one of {', '.join(OVERRIDES)}, got {value!r}")
    # The breaker's own state stays as it is beneath an override (the auto rules still
    # trip it), so AUTO hands the provider back to what the breaker says by itself. It
    # used to take over the state set by hand: a provider forced to rerouting and then
    # set to auto waited for probes, which need mail the provider refused, and mail to
    # it no longer went there: it stayed rerouting for good.
    return _changed(route, replace(route, override=None if value == AUTO else value), now)


def _changed(old: ProviderRoute, new: ProviderRoute, now: float) -> ProviderRoute:
    if new.effective != old.effective:
        return replace(new, changed_at=now)
    return new


def needs_probe(route: ProviderRoute) -> bool:
    """Probes run while the breaker itself reroutes (not when only an override does)."""
    return route.state == REROUTING and route.override is None
