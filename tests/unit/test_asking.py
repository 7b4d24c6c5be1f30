"""Asking before a change: the answers, and refusing where there is nobody to ask."""

from __future__ import annotations

import io

import pytest

from rescue.cli import asking


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def answer(monkeypatch: pytest.MonkeyPatch, typed: str) -> tuple[bool, str]:
    terminal = Terminal()
    monkeypatch.setattr("sys.stdin", io.StringIO(typed))
    return asking.confirmed("Reroute 2 messages?", terminal), terminal.getvalue()


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("y\n", True), ("YES\n", True), ("n\n", False), ("no\n", False), ("\n", False)],
)
def test_answers(monkeypatch: pytest.MonkeyPatch, typed: str, expected: bool) -> None:
    got, shown = answer(monkeypatch, typed)
    assert got is expected
    assert shown == "Reroute 2 messages? [y/N]: "


def test_the_end_of_input_is_no(monkeypatch: pytest.MonkeyPatch) -> None:
    assert answer(monkeypatch, "") == (False, "Reroute 2 messages? [y/N]: \n")


def test_anything_else_asks_again(monkeypatch: pytest.MonkeyPatch) -> None:
    got, shown = answer(monkeypatch, "sure\ny\n")
    assert got is True
    assert shown == "Reroute 2 messages? [y/N]: Please answer y or n [y/N]: "


def test_ctrl_c_is_an_interruption(monkeypatch: pytest.MonkeyPatch) -> None:
    class Interrupted(io.StringIO):
        def readline(self, size: int | None = -1) -> str:
            raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdin", Interrupted())
    with pytest.raises(KeyboardInterrupt):
        asking.confirmed("Reroute?", Terminal())


def test_yes_asks_nothing() -> None:
    assert asking.where_to_ask(True, "flush") is None


def test_asks_on_stderr_else_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    stderr, stdout = Terminal(), Terminal()
    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("sys.stdout", stdout)
    monkeypatch.setattr("sys.stderr", stderr)
    assert asking.where_to_ask(False, "flush") is stderr
    monkeypatch.setattr("sys.stderr", io.StringIO())  # 2>flush.log
    assert asking.where_to_ask(False, "flush") is stdout


@pytest.mark.parametrize("terminal", ["none", "stdin only", "outputs only"])
def test_nobody_to_ask_is_a_refusal(monkeypatch: pytest.MonkeyPatch, terminal: str) -> None:
    monkeypatch.setattr("sys.stdin", Terminal() if terminal == "stdin only" else io.StringIO())
    out = Terminal() if terminal == "outputs only" else io.StringIO()
    err = Terminal() if terminal == "outputs only" else io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    with pytest.raises(SystemExit) as exit_:
        asking.where_to_ask(False, "export")
    assert exit_.value.code == 2
    assert "export asks before it changes the queue, and there is no terminal" in err.getvalue()
