"""What `scan` prints for MX hosts no provider matched, on a terminal and piped."""

from __future__ import annotations

import io

from rich.console import Console

from rescue.classify.shape import UnknownMx
from rescue.cli.scan_view import show_unknown_mx_table, unknown_mx_json

HOSTER = UnknownMx(
    domain="example-hoster.net",
    recipients=37,
    messages=30,
    hosts=("mx1.mail.example-hoster.net", "mx2.mail.example-hoster.net"),
    domains=(("a.test", 20), ("b.test", 10), ("c.test", 5), ("d.test", 2)),
)


def render(terminal: bool) -> str:
    out = io.StringIO()
    show_unknown_mx_table(Console(file=out, force_terminal=terminal, width=200), [HOSTER])
    return out.getvalue()


def test_terminal_table_names_the_glob_and_counts() -> None:
    text = render(terminal=True)
    assert "[[provider]]" in text  # the title's brackets are text, not markup
    assert "*.example-hoster.net" in text and " 37 " in text and " 30 " in text
    assert "a.test, b.test, c.test +1" in text


def test_piped_table_is_tab_separated() -> None:
    lines = render(terminal=False).strip().splitlines()
    assert lines[0].split("\t") == ["mx", "recipients", "messages", "hosts", "domains"]
    assert lines[1].split("\t") == [
        "*.example-hoster.net",
        "37",
        "30",
        "mx1.mail.example-hoster.net, mx2.mail.example-hoster.net",
        "a.test, b.test, c.test +1",
    ]


def test_nothing_unknown_prints_nothing() -> None:
    out = io.StringIO()
    show_unknown_mx_table(Console(file=out, force_terminal=False), [])
    assert out.getvalue() == ""


def test_json() -> None:
    assert unknown_mx_json(HOSTER) == {
        "mx_domain": "example-hoster.net",
        "pattern": "*.example-hoster.net",
        "recipients": 37,
        "messages": 30,
        "hosts": ["mx1.mail.example-hoster.net", "mx2.mail.example-hoster.net"],
        "domains": {"a.test": 20, "b.test": 10, "c.test": 5, "d.test": 2},
    }
