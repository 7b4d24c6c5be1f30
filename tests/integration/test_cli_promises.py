"""Command-line promises of the README, each held against the lab world.

`--reason` (and a bad regex), `srs forward`/`reverse`, every documented `flush --json`
field and summary key, `status --since`, `flush --from` narrowed by selectors, and no
secret in a `-vv` flush's output.
"""

from __future__ import annotations

import base64
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from rescue.srs.rewriter import SrsRewriter
from tests.integration.rescue_cli import SRS_DOMAIN, SRS_SECRET, smarthost_entry
from tests.integration.world import World, body
from tests.lab.certs import default_certs
from tests.lab.faults import Fault
from tests.lab.smtpd import RecordingSmarthost

pytestmark = pytest.mark.postfix

# README, "JSON output": the fields of each `flush --json` line and of its summary.
FLUSH_FIELDS = {
    "queue_id",
    "action",
    "sender",
    "envelope_sender",
    "recipients",
    "provider",
    "smarthost",
    "reply",
    "detail",
    "uncertain",
    "arrival_time",
    "reason",
}
SUMMARY_KEYS = {
    "selected",
    "rerouted",
    "would_reroute",
    "released",
    "failed",
    "skipped",
    "uncertain",
    "elapsed_seconds",
    "messages_per_second",
}
UNABLE = "421 4.7.0 unable to verify sender domain"


def deferred_with(w: World, reply: str, recipient: str, n: int) -> str:
    """One message deferred by the provider with `reply` (each keeps its own reason:
    the lab's Postfix does not try deferred mail again by itself)."""
    w.provider.set_reply(reply)
    before = len(w.lab.queue_ids("deferred"))
    qid = w.lab.submit("alice@example.com", [recipient], body(n))
    w.lab.wait_deferred(before + 1)
    return qid


# -- --reason --------------------------------------------------------------------------


def test_reason_selects_by_the_delay_reason(w: World) -> None:
    unable = deferred_with(w, UNABLE, "a@kunde1.test", 1)
    invalid = deferred_with(w, "421 4.7.0 invalid sender domain", "b@kunde2.test", 2)

    result = w.rescue("reason").run("flush", "--yes", "--reason", "unable to VERIFY", "--json")

    assert result.code == 0, result.stderr
    assert list(result.outcomes) == [unable]
    assert [r.rcpt_tos for r in w.smarthost.received] == [("a@kunde1.test",)]
    assert w.lab.queue_ids("deferred") == [invalid]


def test_a_bad_reason_regex_is_exit_2_and_changes_nothing(w: World) -> None:
    qid = deferred_with(w, UNABLE, "a@kunde1.test", 1)

    result = w.rescue("badregex").run("flush", "--yes", "--reason", "([", "--json")

    assert result.code == 2
    assert "--reason" in result.stderr and "not a valid regex" in result.stderr
    assert result.stdout == ""
    assert w.lab.queue_ids("deferred") == [qid]
    assert w.smarthost.received == []


# -- srs forward / reverse -------------------------------------------------------------


def test_srs_forward_and_reverse(w: World) -> None:
    rescue = w.rescue("srs")
    # `srs` commands read only [srs]: a smarthost whose password file is missing is no bother.
    rescue.smarthosts = [
        smarthost_entry("relay1", 25, username="u", password_file="/nonexistent/pw", tls="starttls")
    ]

    def rewriter(now: float) -> SrsRewriter:
        return SrsRewriter(domain=SRS_DOMAIN, secrets=[SRS_SECRET], clock=lambda: now)

    before = time.time()
    forward = rescue.run("srs", "forward", "alice@example.com")
    after = time.time()

    assert forward.code == 0, forward.stderr
    srs = forward.stdout.strip()
    # What the configured secret and domain make (the day may turn during the command).
    assert srs in {rewriter(t).forward("alice@example.com") for t in (before, after)}
    assert srs.startswith("SRS0=") and srs.endswith(f"=example.com=alice@{SRS_DOMAIN}")

    back = rescue.run("srs", "reverse", srs)
    assert (back.code, back.stdout) == (0, "alice@example.com\n"), back.stderr

    # Unchanged: an address at the SRS domain itself.
    ours = rescue.run("srs", "forward", f"bounces@{SRS_DOMAIN}")
    assert (ours.code, ours.stdout) == (0, f"bounces@{SRS_DOMAIN}\n")

    # Forged (hash changed), and not at our domain: refused, exit 2.
    tag, hash_, rest = srs.split("=", 2)
    forged = f"{tag}={'A' if hash_[0] != 'A' else 'B'}{hash_[1:]}={rest}"
    for bad in (forged, srs.replace(SRS_DOMAIN, "elsewhere.test")):
        refused = rescue.run("srs", "reverse", bad)
        assert refused.code == 2, (bad, refused.stderr)
        assert refused.stdout == ""
        assert bad in refused.stderr


# -- flush --json ----------------------------------------------------------------------


def test_every_documented_flush_json_field_and_summary_key(w: World) -> None:
    taken = deferred_with(w, "421 4.7.0 invalid sender domain", "a@kunde1.test", 1)
    refused = deferred_with(w, "421 4.7.0 invalid sender domain", "b@kunde2.test", 2)
    listed = {m["queue_id"]: m for m in w.lab.queue()}
    w.smarthost.script(
        Fault(stage="RCPT", reply="550 5.1.1 no such user", recipient="b@kunde2.test", times=None)
    )
    rescue = w.rescue("json")

    dry = rescue.run("flush", "--provider", "ionos", "--dry-run", "--json")

    assert dry.code == 0, dry.stderr
    assert {o["action"] for o in dry.outcomes.values()} == {"would-reroute"}
    assert set(dry.summary) == SUMMARY_KEYS
    assert (dry.summary["selected"], dry.summary["would_reroute"]) == (2, 2)

    result = rescue.run("flush", "--yes", "--provider", "ionos", "--json")

    assert result.code == 1, result.stderr
    for outcome in result.outcomes.values():
        assert set(outcome) == FLUSH_FIELDS, outcome
    ok, back = result.outcomes[taken], result.outcomes[refused]
    assert ok["action"] == "rerouted" and back["action"] == "released"
    for outcome, rcpt, qid in ((ok, "a@kunde1.test", taken), (back, "b@kunde2.test", refused)):
        assert outcome["sender"] == "alice@example.com"
        assert outcome["envelope_sender"].startswith("SRS0=")
        assert outcome["envelope_sender"].endswith(f"=example.com=alice@{SRS_DOMAIN}")
        assert outcome["recipients"] == [rcpt]
        assert outcome["provider"] == "ionos"
        assert outcome["smarthost"] == "relay1"
        assert outcome["uncertain"] is False
        assert outcome["arrival_time"] == listed[qid]["arrival_time"]
        assert outcome["reason"] == "invalid sender domain"  # the catalog pattern matched
    assert ok["reply"].startswith("250 ") and ok["detail"] == ""
    assert "550 5.1.1 no such user" in back["detail"]
    summary = result.summary
    assert set(summary) == SUMMARY_KEYS
    counts = {k: summary[k] for k in SUMMARY_KEYS - {"elapsed_seconds", "messages_per_second"}}
    assert counts == {
        "selected": 2,
        "rerouted": 1,
        "would_reroute": 0,
        "released": 1,
        "failed": 0,
        "skipped": 0,
        "uncertain": 0,
    }
    assert summary["elapsed_seconds"] > 0
    assert summary["messages_per_second"] == pytest.approx(1 / summary["elapsed_seconds"], rel=0.1)
    assert w.lab.queue_ids("deferred") == [refused]


# -- status --since --------------------------------------------------------------------


def status(w: World, since: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    result = w.rescue("status").run("status", "--json", "--since", since)
    assert result.code == 0, result.stderr
    events = [line for line in result.lines if "queue_id" in line]
    return events, result.summary


def test_status_since_shows_only_what_happened_in_the_window(w: World) -> None:
    old = deferred_with(w, UNABLE, "a@kunde1.test", 1)
    new = deferred_with(w, UNABLE, "b@kunde2.test", 2)
    w.smarthost.script(
        Fault(stage="RCPT", reply="550 5.1.1 no such user", recipient="b@kunde2.test", times=None)
    )
    flushed = w.rescue("status").run("flush", "--yes", "--provider", "ionos", "--json")
    assert flushed.code == 1, flushed.stderr
    # What the journal says of `old` is dated back two hours, as if flushed then.
    with sqlite3.connect(w.rescue("status").journal_path) as db:
        db.execute("UPDATE events SET at = at - 7200 WHERE queue_id = ?", (old,))

    events, summary = status(w, "1h")

    assert [(e["queue_id"], e["action"]) for e in events] == [(new, "released")]
    assert "550 5.1.1 no such user" in events[0]["reason"]
    assert (summary["rerouted"], summary["released"]) == (0, 1)
    assert summary["since"] == pytest.approx(time.time() - 3600, abs=120)

    events, summary = status(w, "3h")

    assert {(e["queue_id"], e["action"]) for e in events} == {
        (old, "rerouted"),
        (new, "released"),
    }
    [rerouted] = [e for e in events if e["action"] == "rerouted"]
    assert rerouted["reply"].startswith("250 ") and rerouted["smarthost"] == "relay1"
    assert rerouted["recipients"] == ["a@kunde1.test"]
    assert (summary["rerouted"], summary["released"]) == (1, 1)


# -- flush --from with selectors -------------------------------------------------------


def test_flush_from_an_export_narrowed_by_selectors(w: World, tmp_path: Path) -> None:
    ids = [w.lab.submit("alice@example.com", [f"u{n}@kunde{n}.test"], body(n)) for n in (1, 2, 3)]
    w.lab.wait_deferred(3)
    folder = tmp_path / "export"
    rescue = w.rescue("from")
    exported = rescue.run("export", "--to", str(folder), "--provider", "ionos", "--yes", "--json")
    assert exported.code == 0, exported.stderr
    assert w.lab.queue() == []

    by_domain = rescue.run(
        "flush", "--yes", "--from", str(folder), "--domain", "kunde2.test", "--json"
    )

    assert by_domain.code == 0, by_domain.stderr
    assert list(by_domain.outcomes) == [ids[1]]
    assert [r.rcpt_tos for r in w.smarthost.received] == [("u2@kunde2.test",)]

    by_id = rescue.run("flush", "--yes", "--from", str(folder), "--queue-id", ids[2], "--json")

    assert by_id.code == 0, by_id.stderr
    assert list(by_id.outcomes) == [ids[2]]
    assert len(w.smarthost.received) == 2
    # What no selector named is still in the export, waiting.
    pending = {p.name for p in folder.iterdir() if p.suffix in (".eml", ".json")}
    assert pending == {f"{ids[0]}.eml", f"{ids[0]}.json"}
    done = {p.name for p in (folder / "queue-rescue" / "done").rglob("*") if p.is_file()}
    assert done == {f"{q}{ext}" for q in ids[1:] for ext in (".eml", ".json")}


# -- secrets in -vv logs ---------------------------------------------------------------


def test_a_vv_flush_logs_no_secret(w: World, tmp_path: Path) -> None:
    password = "pw-Kx81-never-in-logs"
    certs = default_certs()
    pw_file = tmp_path / "password"
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    ids = [w.lab.submit("alice@example.com", [f"u{n}@kunde{n}.test"], body(n)) for n in (1, 2)]
    w.lab.wait_deferred(2)
    with RecordingSmarthost(
        starttls=True, certs=certs, require_auth=("rescue", password), auth_require_tls=True
    ) as server:
        rescue = w.rescue("secrets")
        rescue.smarthosts = [
            smarthost_entry(
                "relay1",
                server.port,
                tls="starttls",
                ca_file=str(certs.ca_file),
                username="rescue",
                password_file=str(pw_file),
            )
        ]

        result = rescue.run("-vv", "flush", "--yes", "--provider", "ionos", "--json")

        assert result.code == 0, result.stderr
        assert {r.auth_user for r in server.received} == {"rescue"}
    assert set(result.outcomes) == set(ids)
    assert "queue-rescue: INFO: held 2 of 2 selected messages" in result.stderr  # logging on
    output = result.stdout + result.stderr
    plain = base64.b64encode(f"\0rescue\0{password}".encode()).decode()
    login = base64.b64encode(password.encode()).decode()
    for secret in (password, plain, login, SRS_SECRET):
        assert secret not in output
