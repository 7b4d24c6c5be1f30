"""The provider catalog: built-in data (providers.toml) merged with the user's [[provider]]."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from rescue.classify.catalog_cache import BUILTIN_CATALOG, builtin_data
from rescue.config import ProviderConfig
from rescue.errors import ConfigError


def _globs(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One regex for host name globs (case-insensitive; `*` may span dots), None for none."""
    if not patterns:
        return None
    parts = (fnmatch.translate(p.lower()) for p in patterns)
    return re.compile("|".join(f"(?:{p})" for p in parts))


def glob_matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """Whether a (lower-case) host name matches one of the globs, as fnmatch does.

    Globs whose only wildcard is `*` (all of the built-in catalog's) are matched with
    string methods: compiling a regex per provider was a twentieth of a small scan.
    """
    lowered = [p.lower() for p in patterns]
    simple = tuple(tuple(p.split("*")) for p in lowered if not _SPECIAL.intersection(p))
    regex = _globs([p for p in lowered if _SPECIAL.intersection(p)])

    def matches(host: str) -> bool:
        if any(_star_match(parts, host) for parts in simple):
            return True
        return regex is not None and regex.match(host) is not None

    return matches


_SPECIAL = frozenset("?[")  # fnmatch's wildcards besides `*`


def _star_match(parts: tuple[str, ...], host: str) -> bool:
    """fnmatch of a glob split at its `*`s: the first part starts the name, the last
    ends it, the others come in order between them (leftmost is never wrong)."""
    if len(parts) == 1:
        return host == parts[0]
    first, last = parts[0], parts[-1]
    end = len(host) - len(last)
    if end < len(first) or not host.startswith(first) or not host.endswith(last):
        return False
    pos = len(first)
    for middle in parts[1:-1]:
        found = host.find(middle, pos, end)
        if found < 0:
            return False
        pos = found + len(middle)
    return True


@dataclass(frozen=True, slots=True)
class KnownReason:
    """A reply text a provider is known to send, and what it means."""

    pattern: str
    meaning: str = ""
    reroute_helps: bool = False
    fix: str = ""
    source: str = ""
    examples: tuple[str, ...] = ()
    # The `diagnose` checks whose findings can cause this reply (rescue.diagnose.result).
    checks: tuple[str, ...] = ()

    def search(self, text: str) -> bool:
        return re.search(self.pattern, text, re.IGNORECASE) is not None


@dataclass(frozen=True)
class Provider:
    name: str
    label: str
    mx: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    known: tuple[KnownReason, ...] = ()
    # Reasons that make a deferral worth rerouting; None: those known ones where
    # rerouting helps; an empty tuple: any deferral.
    reasons: tuple[str, ...] | None = None
    reroute: str = "manual"
    min_age: float = 0.0
    min_messages: int = 1
    max_per_cycle: int | None = None
    sources: tuple[str, ...] = field(default=())
    # Real MX host names of this provider, from its documentation or public zone data.
    mx_examples: tuple[str, ...] = ()
    # Globs for the provider's name servers: a zone served by them hints at its mail.
    ns: tuple[str, ...] = ()

    @cached_property
    def _mx_match(self) -> Callable[[str], bool]:
        return glob_matcher(self.mx)

    @cached_property
    def _select(self) -> tuple[re.Pattern[str], ...]:
        patterns = self.reasons
        if patterns is None:
            patterns = tuple(k.pattern for k in self.known if k.reroute_helps)
        return tuple(re.compile(p, re.IGNORECASE) for p in patterns)

    def owns_mx(self, host: str) -> bool:
        return self._mx_match(host.lower().rstrip("."))

    @cached_property
    def _ns_regex(self) -> re.Pattern[str] | None:
        return _globs(self.ns)

    def owns_ns(self, host: str) -> bool:
        regex = self._ns_regex
        return regex is not None and regex.match(host.lower().rstrip(".")) is not None

    def owns_domain(self, domain: str) -> bool:
        return domain.lower() in self.domains

    def selecting_pattern(self, reason: str) -> str | None:
        """The reason pattern that makes this deferral worth rerouting, if one does.

        With `reasons = []` in the config every deferral qualifies ("*").
        """
        if self.reasons is not None and not self.reasons:
            return "*"
        for regex in self._select:
            if regex.search(reason):
                return regex.pattern
        return None

    def explain(self, reason: str) -> KnownReason | None:
        for known in self.known:
            if known.search(reason):
                return known
        return None


@dataclass(frozen=True)
class Catalog:
    providers: tuple[Provider, ...]

    @cached_property
    def by_name(self) -> dict[str, Provider]:
        return {p.name: p for p in self.providers}

    def for_mx(self, host: str) -> Provider | None:
        for provider in self.providers:
            if provider.owns_mx(host):
                return provider
        return None

    def for_ns(self, host: str) -> Provider | None:
        """The provider whose name servers these are, by the `ns` globs."""
        for provider in self.providers:
            if provider.owns_ns(host):
                return provider
        return None

    def for_domain(self, domain: str) -> Provider | None:
        for provider in self.providers:
            if provider.owns_domain(domain):
                return provider
        return None

    def for_reason_text(self, reason: str) -> tuple[Provider, KnownReason] | None:
        """The one provider whose known reply texts match, or None if none or several do."""
        found = []
        for provider in self.providers:
            known = provider.explain(reason)
            if known is not None:
                found.append((provider, known))
        return found[0] if len(found) == 1 else None


def _as_tuple(value: Any, path: Path, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(path, key, "expected a list of strings")
    return tuple(value)


def _parse_known(item: Any, path: Path, key: str, check: bool) -> KnownReason:
    if not isinstance(item, dict) or not isinstance(item.get("pattern"), str):
        raise ConfigError(path, key, "expected a table with a string `pattern`")
    try:
        if check:
            re.compile(item["pattern"], re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(path, f"{key}.pattern", f"not a valid regex: {exc}") from None
    return KnownReason(
        pattern=item["pattern"],
        meaning=str(item.get("meaning", "")),
        reroute_helps=bool(item.get("reroute_helps", False)),
        fix=str(item.get("fix", "")),
        source=str(item.get("source", "")),
        examples=_as_tuple(item.get("examples", []), path, f"{key}.examples"),
        checks=_as_tuple(item.get("checks", []), path, f"{key}.checks"),
    )


def parse_catalog(
    data: dict[str, Any], path: Path, *, check_patterns: bool = True
) -> tuple[Provider, ...]:
    """The providers in `data`; `check_patterns=False` leaves compiling the reply patterns
    to their first use (for the built-in catalog, whose patterns the tests compile)."""
    providers = []
    for index, entry in enumerate(data.get("provider", [])):
        key = f"provider[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(path, key, "expected a table with a string `name`")
        providers.append(
            Provider(
                name=entry["name"].lower(),
                label=str(entry.get("label", entry["name"])),
                mx=_as_tuple(entry.get("mx", []), path, f"{key}.mx"),
                domains=tuple(
                    d.lower() for d in _as_tuple(entry.get("domains", []), path, f"{key}.domains")
                ),
                known=tuple(
                    _parse_known(r, path, f"{key}.reason[{i}]", check_patterns)
                    for i, r in enumerate(entry.get("reason", []))
                ),
                sources=_as_tuple(entry.get("sources", []), path, f"{key}.sources"),
                mx_examples=tuple(
                    h.lower()
                    for h in _as_tuple(entry.get("mx_examples", []), path, f"{key}.mx_examples")
                ),
                ns=_as_tuple(entry.get("ns", []), path, f"{key}.ns"),
            )
        )
    return tuple(providers)


def read_builtin() -> tuple[Provider, ...]:
    # The data file is installed beside this module (package data in pyproject.toml).
    path = Path(__file__).with_name(BUILTIN_CATALOG)
    # Its patterns are compiled when first matched: most runs match a few of the hundred
    # (tests/unit/test_catalog.py compiles every one).
    return parse_catalog(builtin_data(path.parent), path, check_patterns=False)


def merge(builtin: Iterable[Provider], overrides: Sequence[ProviderConfig]) -> Catalog:
    """Apply [[provider]] tables: same name overrides the fields it sets, new names add.

    User entries come first so that they win where patterns overlap.
    """
    by_name = {p.name: p for p in builtin}
    ordered: list[Provider] = []
    for override in overrides:
        base = by_name.pop(override.name, None) or Provider(
            name=override.name, label=override.label or override.name
        )
        ordered.append(
            replace(
                base,
                label=override.label or base.label,
                mx=override.mx if override.mx is not None else base.mx,
                domains=override.domains if override.domains is not None else base.domains,
                reasons=override.reasons if override.reasons is not None else base.reasons,
                reroute=override.reroute,
                min_age=override.min_age,
                min_messages=override.min_messages,
                max_per_cycle=override.max_per_cycle,
            )
        )
    return Catalog(tuple(ordered) + tuple(by_name.values()))


def load_catalog(overrides: Sequence[ProviderConfig] = ()) -> Catalog:
    return merge(read_builtin(), overrides)
