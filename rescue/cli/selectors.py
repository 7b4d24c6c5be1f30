"""The selector options `flush` and `export` share, turned into one Selectors value."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

from rescue.classify.select import Selectors
from rescue.cli.common import parse_duration

F = TypeVar("F", bound=Callable[..., Any])


def selectors_from(
    provider: tuple[str, ...],
    queue_id: tuple[str, ...],
    domain: tuple[str, ...],
    older_than: str | None,
    reason: str | None,
    limit: int | None,
    select_all: bool,
) -> Selectors:
    try:
        reason_re = re.compile(reason, re.IGNORECASE) if reason else None
    except re.error as exc:
        raise click.BadParameter(f"not a valid regex: {exc}", param_hint="--reason") from None
    return Selectors(
        providers=frozenset(p.lower() for p in provider),
        queue_ids=frozenset(queue_id),
        domains=frozenset(d.lower().lstrip("@") for d in domain),
        older_than=parse_duration(older_than, "--older-than") if older_than else None,
        reason=reason_re,
        limit=limit,
        all=select_all,
    )


def selector_options(verb: str) -> Callable[[F], F]:
    """--provider, --queue-id, --domain, --older-than, --reason, --limit and --all,
    handed to the command as one `selectors` argument; `verb` says what --all does."""
    options = (
        click.option(
            "--provider",
            "-p",
            multiple=True,
            metavar="NAME",
            help="Messages with a recipient at this provider (repeatable).",
        ),
        click.option(
            "--queue-id",
            "-q",
            multiple=True,
            metavar="ID",
            help="This queue id, whatever its provider (repeatable).",
        ),
        click.option(
            "--domain",
            "-d",
            multiple=True,
            metavar="DOMAIN",
            help="Messages with a recipient in this domain (repeatable).",
        ),
        click.option(
            "--older-than",
            metavar="AGE",
            help="Only mail queued longer than AGE (30m, 2h, 1d; a bare number is seconds).",
        ),
        click.option(
            "--reason", metavar="REGEX", help="Only recipients whose delay reason matches."
        ),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            metavar="N",
            help="At most N messages, oldest first.",
        ),
        click.option(
            "--all",
            "select_all",
            is_flag=True,
            help=f"Every deferred message a provider's reasons say to {verb}.",
        ),
    )

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def with_selectors(
            *args: Any,
            provider: tuple[str, ...],
            queue_id: tuple[str, ...],
            domain: tuple[str, ...],
            older_than: str | None,
            reason: str | None,
            limit: int | None,
            select_all: bool,
            **kwargs: Any,
        ) -> Any:
            selectors = selectors_from(
                provider, queue_id, domain, older_than, reason, limit, select_all
            )
            return command(*args, selectors=selectors, **kwargs)

        decorated: Any = with_selectors
        for option in reversed(options):
            decorated = option(decorated)
        return decorated  # type: ignore[no-any-return]

    return decorate
