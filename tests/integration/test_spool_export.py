"""Rescue without the live queue: from a copy of a Postfix spool, and through an export.

The copy is taken of the shared lab's queue directory with nothing in flight, and from
then on it is a dead host's spool: no Postfix runs on it. Every test checks what the
smarthost received (once each, byte for byte what `postcat -bh` showed of the original,
with CRLF line ends, only the pending recipients), what is left where, and that a second
run sends nothing twice.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.kill_runs import postsuper_running
from tests.integration.test_crash_safety import kill_hard, wrapped_commands
from tests.integration.test_flush import queue_files
from tests.integration.world import ACCEPTING_DOMAIN, OTHER_DOMAIN, World, body
from tests.lab import wait_for
from tests.lab.faults import Fault, Received
from tests.lab.postfix import PostfixLab
from tests.lab.submission import Submission

pytestmark = pytest.mark.postfix

EIGHT_BIT = (
    b"From: alice@example.com\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
    b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
    b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\n.\n..leading dots\n\n" + b"x" * 5000 + b"\nend\n"
)


def copy_spool(lab: PostfixLab, dest: Path) -> Path:
    """What an admin carries away from a dead host: the queue folders, modes kept.

    Sockets and fifos (private/, public/) and the pid files are left behind.
    """
    shutil.copytree(
        lab.queue_dir,
        dest,
        symlinks=True,
        ignore=shutil.ignore_patterns("private", "public", "pid"),
    )
    return dest


def submit_tricky(w: World) -> dict[str, str]:
    """Queue ids by role: partial (one recipient delivered), eightbit (DSN too), null
    sender, plain ones, and one to a provider we do not reroute."""
    ids = {
        "partial": w.lab.submit(
            "alice@example.com", [f"done@{ACCEPTING_DOMAIN}", "later@kunde1.test"], body(1)
        ),
        "eightbit": w.lab.submit(
            "alice@example.com",
            ["bob@kunde2.test"],
            EIGHT_BIT,
            dsn_notify="SUCCESS,FAILURE",
            dsn_orcpt="rfc822;Bob+2Btag@Kunde2.test",
            envid="env+3D42",
            ret="HDRS",
        ),
        "null": w.lab.submit("", ["bounce-to@kunde3.test"], body(3)),
        "other": w.lab.submit("alice@example.com", [f"boss@{OTHER_DOMAIN}"], body(4)),
    }
    plain = w.lab.submit_many(
        Submission("alice@example.com", (f"p{n}@kunde{n % 30 + 5}.test",), body(n))
        for n in range(10, 18)
    )
    ids.update((f"plain{n}", qid) for n, qid in enumerate(plain))
    w.lab.wait_deferred(len(ids))
    assert w.accepting.wait_for_count(1)[0].rcpt_tos == (f"done@{ACCEPTING_DOMAIN}",)
    return ids


def by_recipients(received: list[Received]) -> dict[tuple[str, ...], Received]:
    counts = Counter(r.rcpt_tos for r in received)
    assert all(n == 1 for n in counts.values()), counts  # nothing twice
    return {r.rcpt_tos: r for r in received}


def assert_rescued(w: World, ids: dict[str, str], originals: dict[str, bytes]) -> None:
    """The smarthost has each selected message once, as queued, to its pending recipients."""
    got = by_recipients(w.smarthost.received)
    assert len(got) == len(ids) - 1  # all but the other provider's
    assert got[("later@kunde1.test",)].content == originals["partial"].replace(b"\n", b"\r\n")
    eightbit = got[("bob@kunde2.test",)]
    assert eightbit.content == originals["eightbit"].replace(b"\n", b"\r\n")
    assert b"\r\n" + b"x" * 5000 + b"\r\nend\r\n" in eightbit.content
    assert {"RET=HDRS", "ENVID=env+3D42", "BODY=8BITMIME"} <= set(eightbit.mail_options)
    assert set(eightbit.rcpt_options[0]) == {
        "NOTIFY=SUCCESS,FAILURE",
        "ORCPT=rfc822;Bob+2Btag@Kunde2.test",
    }
    assert got[("bounce-to@kunde3.test",)].mail_from == ""
    for role in ids:
        if role.startswith("plain"):
            [match] = [
                r for r in got.values() if r.content == originals[role].replace(b"\n", b"\r\n")
            ]
            assert match.mail_from.startswith("SRS0=")


def postcat_all(w: World, ids: dict[str, str]) -> dict[str, bytes]:
    return {role: w.lab.postcat(qid, "-bh") for role, qid in ids.items()}


def files_below(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# -- a copy of the spool ---------------------------------------------------------------


def test_rescue_from_a_copied_spool_leaves_the_live_queue_alone(w: World, tmp_path: Path) -> None:
    ids = submit_tricky(w)
    originals = postcat_all(w, ids)
    live_before = queue_files(w.lab)
    copy = copy_spool(w.lab, tmp_path / "spool")
    rescue = w.rescue("spool")

    scan = rescue.run("scan", "--spool", str(copy), "--json")
    first = rescue.run("flush", "--spool", str(copy), "--provider", "ionos", "--json", "--yes")

    assert scan.code == 0, scan.stderr
    assert {json.loads(line)["queue_id"] for line in scan.stdout.splitlines()} == set(ids.values())
    assert first.code == 0, first.stderr
    selected = {qid for role, qid in ids.items() if role != "other"}
    assert set(first.outcomes) == selected
    assert {o["action"] for o in first.outcomes.values()} == {"rerouted"}
    assert first.outcomes[ids["partial"]]["recipients"] == ["later@kunde1.test"]
    assert_rescued(w, ids, originals)
    # The live lab is untouched: same files, same bytes.
    assert queue_files(w.lab) == live_before
    # In the copy, rerouted mail moved aside; the other provider's mail stays deferred.
    left = files_below(copy)
    for qid in selected:
        assert f"queue-rescue/done/deferred/{qid[0]}/{qid}" in left
        assert f"deferred/{qid[0]}/{qid}" not in left
    assert f"deferred/{ids['other'][0]}/{ids['other']}" in left
    assert not any(name.startswith("queue-rescue/held/") for name in left)

    second = rescue.run("flush", "--spool", str(copy), "--provider", "ionos", "--json", "--yes")

    assert second.code == 0, second.stderr
    assert second.summary["selected"] == 0
    assert len(w.smarthost.received) == len(selected)  # nothing sent twice


def test_spool_mail_in_active_and_incoming_and_bad_files(w: World, tmp_path: Path) -> None:
    ids = w.lab.submit_many(
        Submission("alice@example.com", (f"s{n}@kunde{n + 1}.test",), body(n)) for n in range(4)
    )
    w.lab.wait_deferred(4)
    originals = {qid: w.lab.postcat(qid, "-bh") for qid in ids}
    copy = copy_spool(w.lab, tmp_path / "spool")
    was_active, was_incoming, truncated, unfinished = ids

    def place(qid: str) -> Path:
        return copy / "deferred" / qid[0] / qid

    # A host that died mid-delivery: one message in active/, one complete in incoming/.
    (copy / "active" / was_active[0]).mkdir(parents=True, exist_ok=True)
    place(was_active).rename(copy / "active" / was_active[0] / was_active)
    (copy / "incoming" / was_incoming[0]).mkdir(parents=True, exist_ok=True)
    place(was_incoming).rename(copy / "incoming" / was_incoming[0] / was_incoming)
    # Damage: a truncated file, one cleanup had not finished, and foreign files.
    data = place(truncated).read_bytes()
    place(truncated).write_bytes(data[: len(data) // 2])
    half = copy / "incoming" / unfinished[0] / unfinished
    half.parent.mkdir(parents=True, exist_ok=True)
    place(unfinished).rename(half)
    half.chmod(0o600)
    foreign = copy / "deferred" / "F" / "F00BA12345"
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_bytes(b"\x00\x01 not a queue file at all " * 20)
    notes = copy / "deferred" / "notes.txt"
    notes.write_text("what the admin wrote down\n")

    result = w.rescue("spool-bad").run(
        "flush", "--spool", str(copy), "--provider", "ionos", "--json", "--yes"
    )

    assert result.code == 0, result.stderr
    assert set(result.outcomes) == {was_active, was_incoming}
    assert result.summary["rerouted"] == 2
    got = {r.rcpt_tos: r.content for r in w.smarthost.received}
    assert got == {
        ("s0@kunde1.test",): originals[was_active].replace(b"\n", b"\r\n"),
        ("s1@kunde2.test",): originals[was_incoming].replace(b"\n", b"\r\n"),
    }
    for bad in (place(truncated), half, foreign, notes):
        assert f"skipped {bad}: " in result.stderr
        assert bad.exists()  # reported and left where it was
    assert "not marked complete (mode 0600)" in result.stderr
    assert (copy / f"queue-rescue/done/active/{was_active[0]}/{was_active}").is_file()


def test_a_killed_spool_flush_is_repaired_by_the_next(w: World, tmp_path: Path) -> None:
    ids = w.lab.submit_many(
        Submission("alice@example.com", (f"k{n}@kunde{n + 1}.test",), body(n)) for n in range(5)
    )
    w.lab.wait_deferred(5)
    copy = copy_spool(w.lab, tmp_path / "spool")
    held = copy / "queue-rescue" / "held"
    w.smarthost.script(Fault(stage="GREETING", action="hang", times=None))
    rescue = w.rescue("spool-kill")

    proc = rescue.popen("flush", "--spool", str(copy), "--provider", "ionos", "--yes")
    wait_for(lambda: len(files_below(held)) == 5 if held.exists() else False, 60, "5 held")
    kill_hard(proc)
    w.smarthost.clear_faults()

    again = rescue.run("flush", "--spool", str(copy), "--provider", "ionos", "--json", "--yes")

    assert again.code == 0, again.stderr
    assert "5 released" in again.stderr
    assert set(again.outcomes) == set(ids)
    assert len(by_recipients(w.smarthost.received)) == 5
    assert files_below(held) == set()


def test_a_spool_postfix_runs_on_is_refused(w: World) -> None:
    w.lab.submit("alice@example.com", ["r@kunde1.test"], body(1))
    w.lab.wait_deferred(1)
    before = queue_files(w.lab)

    result = w.rescue("live-spool").run(
        "flush", "--spool", str(w.lab.queue_dir), "--provider", "ionos", "--yes"
    )

    assert result.code == 2
    assert "Postfix is running on" in result.stderr
    assert queue_files(w.lab) == before
    assert not (w.lab.queue_dir / "queue-rescue").exists()


# -- export and flush --from ------------------------------------------------------------


def test_export_then_flush_from_the_folder(w: World, tmp_path: Path) -> None:
    ids = submit_tricky(w)
    originals = postcat_all(w, ids)
    listed = {m["queue_id"]: m for m in w.lab.queue()}
    folder = tmp_path / "export"
    rescue = w.rescue("export")

    exported = rescue.run("export", "--to", str(folder), "--provider", "ionos", "--json", "--yes")

    assert exported.code == 0, exported.stderr
    selected = {qid for role, qid in ids.items() if role != "other"}
    assert set(exported.outcomes) == selected
    assert {o["action"] for o in exported.outcomes.values()} == {"exported"}
    assert exported.summary["exported"] == len(selected)
    # Gone from Postfix (nothing on hold); the other provider's mail stays deferred.
    assert w.lab.queue_ids() == [ids["other"]]
    assert w.smarthost.received == []
    for role, qid in ids.items():
        if role == "other":
            continue
        assert (folder / f"{qid}.eml").read_bytes() == originals[role]
        envelope = json.loads((folder / f"{qid}.json").read_text())
        assert envelope["queue_id"] == qid
        assert envelope["arrival_time"] == listed[qid]["arrival_time"]
        assert envelope["size"] == listed[qid]["message_size"]
        assert envelope["hostname"].endswith(".test")
        assert all("invalid sender domain" in r["delay_reason"] for r in envelope["recipients"])
    partial = json.loads((folder / f"{ids['partial']}.json").read_text())
    assert [r["address"] for r in partial["recipients"]] == ["later@kunde1.test"]
    eightbit = json.loads((folder / f"{ids['eightbit']}.json").read_text())
    # Stored decoded, as Postfix keeps them (sent as xtext again: see assert_rescued).
    assert (eightbit["envid"], eightbit["ret"]) == ("env=42", "HDRS")
    assert eightbit["recipients"][0]["orcpt"] == "rfc822;Bob+tag@Kunde2.test"
    assert eightbit["recipients"][0]["notify"] == "SUCCESS,FAILURE"
    assert json.loads((folder / f"{ids['null']}.json").read_text())["sender"] == ""

    sent = rescue.run("flush", "--from", str(folder), "--json", "--yes")

    assert sent.code == 0, sent.stderr
    assert set(sent.outcomes) == selected
    assert {o["action"] for o in sent.outcomes.values()} == {"rerouted"}
    assert_rescued(w, ids, originals)
    done = folder / "queue-rescue" / "done"
    assert files_below(done) == {f"{q}{ext}" for q in selected for ext in (".eml", ".json")}
    assert not any(p.suffix in (".eml", ".json") for p in folder.iterdir())

    again = rescue.run("flush", "--from", str(folder), "--json", "--yes")

    assert again.code == 0 and again.summary["selected"] == 0
    assert len(w.smarthost.received) == len(selected)


def test_export_keep_leaves_the_mail_on_hold(w: World, tmp_path: Path) -> None:
    ids = [w.lab.submit("alice@example.com", [f"h{n}@kunde{n}.test"], body(n)) for n in (1, 2)]
    w.lab.wait_deferred(2)
    folder = tmp_path / "export"

    result = w.rescue("keep").run(
        "export", "--to", str(folder), "--provider", "ionos", "--keep", "--json", "--yes"
    )

    assert result.code == 0, result.stderr
    assert {o["action"] for o in result.outcomes.values()} == {"exported"}
    assert sorted(w.lab.queue_ids("hold")) == sorted(ids)
    assert files_below(folder) >= {f"{q}{ext}" for q in ids for ext in (".eml", ".json")}


def test_export_dry_run_changes_nothing(w: World, tmp_path: Path) -> None:
    ids = [w.lab.submit("alice@example.com", [f"d{n}@kunde{n}.test"], body(n)) for n in (1, 2)]
    w.lab.wait_deferred(2)
    before = queue_files(w.lab)
    folder = tmp_path / "export"

    result = w.rescue("export-dry").run(
        "export", "--to", str(folder), "--provider", "ionos", "--dry-run", "--json"
    )

    assert result.code == 0, result.stderr
    assert {o["action"] for o in result.outcomes.values()} == {"would-export"}
    assert set(result.outcomes) == set(ids)
    assert result.outcomes[ids[0]]["eml"] == str(folder / f"{ids[0]}.eml")
    assert queue_files(w.lab) == before
    assert not folder.exists()


def test_a_message_that_cannot_be_written_is_released(w: World, tmp_path: Path) -> None:
    ids = [w.lab.submit("alice@example.com", [f"c{n}@kunde{n}.test"], body(n)) for n in (1, 2)]
    w.lab.wait_deferred(2)
    folder = tmp_path / "export"
    folder.mkdir()
    # Another host's message with the same queue id is already there.
    theirs = {"format": "queue-rescue-export", "version": 1, "sender": "x@elsewhere.test"}
    theirs |= {"arrival_time": 1, "recipients": [{"address": "y@elsewhere.test"}]}
    (folder / f"{ids[0]}.json").write_text(json.dumps(theirs))
    (folder / f"{ids[0]}.eml").write_bytes(b"Subject: theirs\n\n")

    result = w.rescue("conflict").run(
        "export", "--to", str(folder), "--provider", "ionos", "--json", "--yes"
    )

    assert result.code == 1
    assert result.outcomes[ids[0]]["action"] == "released"
    assert "holds another message with this queue id" in result.outcomes[ids[0]]["detail"]
    assert result.outcomes[ids[1]]["action"] == "exported"
    assert w.lab.queue_ids("deferred") == [ids[0]]
    assert w.lab.queue_ids("hold") == []
    assert (folder / f"{ids[0]}.eml").read_bytes() == b"Subject: theirs\n\n"  # not overwritten


def test_an_export_killed_before_the_delete_is_finished_by_the_next_run(
    w: World, tmp_path: Path
) -> None:
    ids = [w.lab.submit("alice@example.com", [f"x{n}@kunde{n}.test"], body(n)) for n in (1, 2, 3)]
    w.lab.wait_deferred(3)
    commands, flag, reached = wrapped_commands(tmp_path / "bin", w.lab.command_dir, "-d")
    folder = tmp_path / "export"
    rescue = w.rescue("export-kill", command_dir=commands)

    proc = rescue.popen("export", "--to", str(folder), "--provider", "ionos", "--yes")
    wait_for(reached.exists, 60, "the delete to start")
    kill_hard(proc)
    assert sorted(w.lab.queue_ids("hold")) == sorted(ids)  # written, but not yet deleted
    # postsuper runs in a session of its own: the kill did not reach it, and the delete
    # it was about to do goes on.
    flag.unlink()
    wait_for(lambda: not postsuper_running(w.lab), 60, "postsuper to finish")

    again = rescue.run("export", "--to", str(folder), "--provider", "ionos", "--json", "--yes")

    assert again.code == 0, again.stderr
    recovered = next(o["recovery"] for o in again.lines if "recovery" in o)
    assert recovered["deleted"] + recovered["gone"] == 3 and recovered["uncertain"] == []
    assert again.summary["selected"] == 0
    assert w.lab.queue() == []
    sent = rescue.run("flush", "--from", str(folder), "--json", "--yes")
    assert sent.summary["rerouted"] == 3
    assert len(by_recipients(w.smarthost.received)) == 3


def test_broken_pairs_are_reported_and_the_rest_is_sent(w: World, tmp_path: Path) -> None:
    ids = [w.lab.submit("alice@example.com", [f"b{n}@kunde{n}.test"], body(n)) for n in (1, 2, 3)]
    w.lab.wait_deferred(3)
    folder = tmp_path / "export"
    rescue = w.rescue("broken-pairs")
    assert rescue.run("export", "--to", str(folder), "--all", "--yes").code == 0
    cut, bad_json, good = ids
    eml = folder / f"{cut}.eml"
    eml.write_bytes(eml.read_bytes()[:20])
    js = folder / f"{bad_json}.json"
    js.write_text(js.read_text()[:50])
    foreign = folder / "photo.jpg"
    foreign.write_bytes(b"\xff\xd8\xff\xe0 not mail")

    result = rescue.run("flush", "--from", str(folder), "--json", "--yes")

    assert result.code == 0, result.stderr
    assert set(result.outcomes) == {good}
    assert [r.rcpt_tos for r in w.smarthost.received] == [("b3@kunde3.test",)]
    for path in (eml, js, foreign):
        assert f"skipped {path}: " in result.stderr
        assert path.exists()
