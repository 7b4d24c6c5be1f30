"""No mail lost, none sent twice: SIGKILL at the worst moments, signals, the lock.

After every crash a second `flush` must leave each message accepted by the
smarthost exactly once, or back in Postfix's deferred queue; none on hold.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.integration.kill_runs import kill_runs, postsuper_running, submit_backlog
from tests.integration.rescue_cli import Rescue, smarthost_entry
from tests.integration.world import World, journal_states, submit
from tests.lab import wait_for
from tests.lab.faults import Fault
from tests.lab.smtpd import RecordingSmarthost

pytestmark = pytest.mark.postfix

WRAPPER = """#!/bin/sh
# Test stand-in for postsuper: stops before the real one while {flag} exists.
for arg in "$@"; do
    if [ "$arg" = "{option}" ] && [ -e "{flag}" ]; then
        touch "{reached}"
        while [ -e "{flag}" ]; do sleep 0.05; done
    fi
done
exec {real} "$@"
"""


def wrapped_commands(folder: Path, real_dir: Path, option: str) -> tuple[Path, Path, Path]:
    """A command folder whose postsuper blocks on `option` while a flag file exists."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("postqueue", "postcat", "postconf"):
        (folder / name).symlink_to(real_dir / name)
    flag, reached = folder / "block", folder / "reached"
    script = folder / "postsuper"
    script.write_text(
        WRAPPER.format(option=option, flag=flag, reached=reached, real=real_dir / "postsuper")
    )
    script.chmod(0o755)
    flag.touch()
    return folder, flag, reached


def one_session(w: World, *, timeout: str) -> list[dict[str, Any]]:
    """The smarthost, one session at a time, with this client timeout."""
    return [
        {
            "name": "relay1",
            "host": "127.0.0.1",
            "port": w.smarthost.port,
            "tls": "none",
            "max_connections": 1,
            "timeout": timeout,
        }
    ]


def kill_hard(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def assert_each_sent_once_or_deferred(w: World, ids: list[str]) -> None:
    counts = Counter(r.rcpt_tos for r in w.smarthost.received)
    assert all(c == 1 for c in counts.values()), counts
    assert w.lab.queue_ids("hold") == []
    left = set(w.lab.queue_ids("deferred"))
    assert len(counts) + len(left) == len(ids)


def test_sigkill_after_accepted_before_delete(w: World, tmp_path: Path) -> None:
    ids = submit(w, 6)
    commands, flag, reached = wrapped_commands(tmp_path / "bin", w.lab.command_dir, "-d")
    rescue = w.rescue("kill-accepted", command_dir=commands)

    proc = rescue.popen("flush", "--yes", "--provider", "ionos", "--json")
    wait_for(reached.exists, 60, "the delete to start")
    kill_hard(proc)

    assert len(w.smarthost.received) == 6
    assert sorted(w.lab.queue_ids("hold")) == sorted(ids)
    assert journal_states(rescue)["accepted"] == 6

    # postsuper runs in a session of its own: the kill did not reach it, and the delete
    # it was about to do goes on (as it would after the OOM killer).
    flag.unlink()
    wait_for(lambda: not postsuper_running(w.lab), 60, "postsuper to finish")
    again = rescue.run("flush", "--yes", "--provider", "ionos", "--json")

    assert again.code == 0, again.stderr
    recovered = next(o["recovery"] for o in again.lines if "recovery" in o)
    assert recovered["deleted"] + recovered["gone"] == 6 and recovered["uncertain"] == []
    assert again.summary["selected"] == 0
    assert len(w.smarthost.received) == 6  # nothing sent a second time
    assert w.lab.queue() == []
    assert journal_states(rescue)["deleted"] == 6


def test_sigkill_after_the_hold(w: World) -> None:
    ids = submit(w, 5)
    w.smarthost.script(Fault(stage="GREETING", action="hang", times=None))
    rescue = w.rescue("kill-held")

    proc = rescue.popen("flush", "--yes", "--provider", "ionos")
    w.lab.wait_for(lambda: len(w.lab.queue_ids("hold")) == 5, 60, "5 held messages")
    kill_hard(proc)
    w.smarthost.clear_faults()

    again = rescue.run("flush", "--yes", "--provider", "ionos", "--json")

    assert again.code == 0, again.stderr
    assert "5 released to Postfix" in again.stderr
    assert again.summary["rerouted"] == 5
    assert_each_sent_once_or_deferred(w, ids)
    assert len(w.smarthost.received) == 5


def test_sigkill_while_the_smarthost_answers_slowly(w: World) -> None:
    ids = submit(w, 4)
    w.smarthost.script(Fault(stage="DATA", action="hang", times=1))
    rescue = w.rescue(
        "kill-slow",
        smarthosts=one_session(w, timeout="60s"),
    )

    proc = rescue.popen("flush", "--yes", "--provider", "ionos")
    wait_for(lambda: w.smarthost.transactions_attempted >= 1, 60, "a transaction to start")
    kill_hard(proc)
    assert w.smarthost.received == []
    w.smarthost.clear_faults()

    again = rescue.run("flush", "--yes", "--provider", "ionos", "--json")

    assert again.code == 0, again.stderr
    # Named as maybe sent twice (it was `sending`), in the summary line and in --json.
    recovered = next(o["recovery"] for o in again.lines if "recovery" in o)
    named = [u["queue_id"] for u in recovered["uncertain"]]
    assert named and set(named) <= set(ids)
    assert all(u["uncertain"] is True and u["action"] == "released" for u in recovered["uncertain"])
    assert f"may be delivered twice: {', '.join(named)}" in again.stderr
    assert_each_sent_once_or_deferred(w, ids)
    assert len(w.smarthost.received) == 4


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_release_everything_held(w: World, sig: signal.Signals) -> None:
    ids = submit(w, 3)
    w.smarthost.script(Fault(stage="GREETING", action="hang", times=None))
    rescue = w.rescue(f"signal-{sig.name}")

    proc = rescue.popen("flush", "--yes", "--provider", "ionos", "--json")
    w.lab.wait_for(lambda: len(w.lab.queue_ids("hold")) == 3, 60, "3 held messages")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err
    assert "released" in err
    assert w.lab.queue_ids("hold") == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    assert journal_states(rescue) == Counter({"released": 3})
    assert '"released": 3' in out  # the summary still came out
    assert w.smarthost.received == []


def sigterm_while_postsuper(
    w: World, tmp_path: Path, option: str, n: int
) -> tuple[list[str], Rescue, str]:
    """Flush n messages; SIGTERM while `postsuper option` runs, then let it finish.

    Returns the queue ids, the Rescue and the flush's stdout (its exit code is checked).
    """
    ids = submit(w, n)
    commands, flag, reached = wrapped_commands(tmp_path / "bin", w.lab.command_dir, option)
    rescue = w.rescue(f"term{option}", command_dir=commands)

    proc = rescue.popen("flush", "--yes", "--provider", "ionos", "--json")
    wait_for(reached.exists, 60, f"postsuper {option} to start")
    proc.send_signal(signal.SIGTERM)
    flag.unlink()  # postsuper goes on, as a real one would after the signal
    out, err = proc.communicate(timeout=60)

    assert proc.returncode in (0, 130), err
    assert '"summary"' in out
    assert w.lab.queue_ids("hold") == [], (out, err)
    return ids, rescue, out


def test_sigterm_while_postsuper_holds_releases_what_it_held(w: World, tmp_path: Path) -> None:
    # The hold runs in a thread beside the SMTP sessions; cancelling the flush must still
    # learn what that postsuper call held, so that it is released and not left on hold.
    ids, rescue, _ = sigterm_while_postsuper(w, tmp_path, "-h", 4)

    assert_each_sent_once_or_deferred(w, ids)
    states = journal_states(rescue)
    assert sum(states.values()) == 4
    assert set(states) <= {"released", "deleted"}, states


def test_sigterm_while_deleting_never_gives_back_what_was_sent(w: World, tmp_path: Path) -> None:
    # The smarthost has the messages and postsuper -d is running when SIGTERM comes: the
    # flush must learn what that call deleted, and never release an accepted message
    # (Postfix would deliver it a second time).
    ids, rescue, _ = sigterm_while_postsuper(w, tmp_path, "-d", 5)

    assert_each_sent_once_or_deferred(w, ids)  # none both at the smarthost and deferred
    again = rescue.run("flush", "--yes", "--provider", "ionos", "--json")
    assert again.code == 0, again.stderr
    assert_each_sent_once_or_deferred(w, ids)
    assert len(w.smarthost.received) == 5
    assert w.lab.queue() == []


def sigterm_once_the_smarthost_has_the_text(w: World, rescue: Rescue) -> tuple[str, str]:
    """Flush; SIGTERM once the smarthost has a message's text; (stdout, stderr) of exit 130."""
    proc = rescue.popen("flush", "--yes", "--provider", "ionos", "--json")
    w.smarthost.wait_for(lambda: len(w.smarthost.received) == 1, 60, "a message's text")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    return out, err


def test_sigterm_after_the_final_dot_waits_for_the_answer(w: World) -> None:
    # SIGTERM while the smarthost has the message but has not answered yet: giving it
    # back to Postfix would deliver it twice. The flush waits for the 250 and deletes it.
    submit(w, 1)
    w.smarthost.script(Fault(stage="EOD", action="hang", seconds=2.0))
    rescue = w.rescue("term-eod")

    out, _ = sigterm_once_the_smarthost_has_the_text(w, rescue)

    assert '"rerouted": 1' in out
    assert len(w.smarthost.received) == 1
    assert w.lab.queue() == []  # deleted, not given back
    assert journal_states(rescue) == Counter({"deleted": 1})


def test_sigterm_then_no_answer_after_the_dot_sends_nothing_more(w: World) -> None:
    # The answer to the final dot never comes: after SIGTERM the flush waits out the
    # timeout, gives the message back marked as maybe sent, and starts no other message.
    ids = submit(w, 4)
    w.smarthost.script(Fault(stage="EOD", action="hang"))
    rescue = w.rescue("term-eod-silent", smarthosts=one_session(w, timeout="2s"))

    out, err = sigterm_once_the_smarthost_has_the_text(w, rescue)

    assert '"uncertain": 1' in out
    assert len(w.smarthost.received) == 1, (out, err)  # nothing more sent after the signal
    assert w.lab.queue_ids("hold") == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)


def test_a_second_instance_says_who_holds_the_lock(w: World) -> None:
    submit(w, 1)
    w.smarthost.script(Fault(stage="GREETING", action="hang", times=None))
    rescue = w.rescue("lock")
    first = rescue.popen("flush", "--yes", "--provider", "ionos")
    try:
        w.lab.wait_for(lambda: len(w.lab.queue_ids("hold")) == 1, 60, "the message on hold")
        second = rescue.run("flush", "--yes", "--provider", "ionos", "--wait", "0")
        assert second.code == 3
        assert f"pid {first.pid}" in second.stderr
        assert "queue-rescue flush" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert w.lab.queue_ids("hold") == []


def test_smarthost_down_gives_everything_back(w: World) -> None:
    ids = submit(w, 4)
    w.smarthost.script(Fault(stage="GREETING", reply="421 4.3.2 closing", times=None))

    result = w.rescue("down").run("flush", "--yes", "--provider", "ionos", "--json")

    assert result.code == 1
    assert result.summary["released"] == 4
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    assert w.lab.queue_ids("hold") == []


def test_timeout_after_end_of_data_is_counted_and_given_back(w: World) -> None:
    [qid] = submit(w, 1)
    w.smarthost.script(Fault(stage="EOD", action="hang", seconds=30, times=1))
    rescue = w.rescue(
        "eod",
        smarthosts=[
            {
                "name": "relay1",
                "host": "127.0.0.1",
                "port": w.smarthost.port,
                "tls": "none",
                "timeout": "3s",
            },
        ],
    )

    result = rescue.run("flush", "--yes", "--provider", "ionos", "--json")

    assert result.code == 1
    outcome = result.outcomes[qid]
    assert outcome["action"] == "released" and outcome["uncertain"] is True
    assert "may be sent more than once" in outcome["detail"]
    assert result.summary["uncertain"] == 1
    assert w.lab.queue_ids("deferred") == [qid]
    warned = [line for line in result.stderr.splitlines() if "more than once" in line]
    assert len(warned) == 1, result.stderr  # once, by the dispatcher (it was twice)


STOPPED_PART_WAY = """#!/bin/sh
# Test stand-in for postsuper: its first call with {option} acts on all but the last
# {skip} id(s) it is given, loses its last report line and exits 2, as a postsuper
# stopped part way would; the calls after it are the real postsuper.
for arg in "$@"; do
    if [ "$arg" = "{option}" ] && [ -e "{flag}" ]; then
        rm -f "{flag}"
        cat > "{folder}/ids"
        head -n -{skip} "{folder}/ids" | {real} "$@" 2> "{folder}/report"
        last=$(grep -n -E ': (placed on hold|released from hold|removed)$' "{folder}/report" \\
               | tail -n 1 | cut -d: -f1)
        if [ -n "$last" ]; then sed "${{last}}d" "{folder}/report" >&2; fi
        exit 2
    fi
done
exec {real} "$@"
"""


def stopped_part_way(folder: Path, real_dir: Path, option: str, skip: int) -> Path:
    """A command folder whose postsuper's first `option` call stops part way."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("postqueue", "postcat", "postconf"):
        (folder / name).symlink_to(real_dir / name)
    script = folder / "postsuper"
    script.write_text(
        STOPPED_PART_WAY.format(
            option=option,
            skip=skip,
            flag=folder / "first",
            folder=folder,
            real=real_dir / "postsuper",
        )
    )
    script.chmod(0o755)
    (folder / "first").touch()
    return folder


def test_a_hold_that_loses_a_report_line_leaves_nothing_on_hold(w: World, tmp_path: Path) -> None:
    # postsuper held all four but its last "placed on hold" line is lost, and it exits 2:
    # the message it did not report may be on hold and must be released, not forgotten.
    # A hold that fails sends none of its messages (README, exit code 4).
    ids = submit(w, 4)
    commands = stopped_part_way(tmp_path / "bin", w.lab.command_dir, "-h", skip=0)

    result = w.rescue("hold-lost-line", command_dir=commands).run(
        "flush", "--yes", "--provider", "ionos", "--json"
    )

    assert w.lab.queue_ids("hold") == []
    assert result.code == 4, result.stderr
    assert "after acting on 3 of 4 messages" in result.stderr
    assert w.smarthost.received == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    assert {o["action"] for o in result.outcomes.values()} == {"released"}


def test_a_release_stopped_part_way_is_tried_again(w: World, tmp_path: Path) -> None:
    # The smarthost refuses everything; the first release does all but the last message,
    # loses its last report line and exits 2. What it did not report stays the flush's
    # to settle: nothing stays on hold, and no message is said to be released that
    # is not back in the deferred queue.
    ids = submit(w, 4)
    w.smarthost.script(Fault(stage="MAIL", reply="550 5.7.1 not today", times=None))
    commands = stopped_part_way(tmp_path / "bin", w.lab.command_dir, "-H", skip=1)

    result = w.rescue("release-part-way", command_dir=commands).run(
        "flush", "--yes", "--provider", "ionos", "--json"
    )

    assert result.code == 1, result.stderr
    assert w.lab.queue_ids("hold") == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    # The one whose report line was lost: the second postsuper finds it back in the
    # deferred queue already, so it is skipped (Postfix has it), not "release failed".
    assert {o["action"] for o in result.outcomes.values()} <= {"released", "skipped"}
    assert result.summary["released"] >= 1
    assert w.smarthost.received == []


def test_a_second_ctrl_c_does_not_stop_the_release(w: World, tmp_path: Path) -> None:
    # Ctrl-C at a terminal signals the whole process group. The first one stops the
    # flush, which then releases what it holds; postsuper must not be stopped by it,
    # and a second Ctrl-C while it runs must not cut the release short.
    ids = submit(w, 3)
    w.smarthost.script(Fault(stage="GREETING", action="hang", times=None))
    commands, flag, reached = wrapped_commands(tmp_path / "bin", w.lab.command_dir, "-H")
    rescue = w.rescue("ctrl-c-twice", command_dir=commands)

    proc = rescue.popen("flush", "--yes", "--provider", "ionos", "--json")
    w.lab.wait_for(lambda: len(w.lab.queue_ids("hold")) == 3, 60, "3 held messages")
    os.killpg(proc.pid, signal.SIGINT)
    wait_for(reached.exists, 60, "the release to start")
    os.killpg(proc.pid, signal.SIGINT)
    flag.unlink()
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err
    assert w.lab.queue_ids("hold") == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    assert '"released": 3' in out
    assert journal_states(rescue) == Counter({"released": 3})


def test_ctrl_c_that_also_ends_the_output_reader_still_says_interrupted(w: World) -> None:
    # `queue-rescue flush --json | jq .` and Ctrl-C: the signal ends jq as well, so the
    # flush's last report finds its output closed. It is still an interruption (130, said
    # on stderr) that released everything, not a quiet end for a closed pipe (141).
    ids = submit(w, 3)
    w.smarthost.script(Fault(stage="GREETING", action="hang", times=None))
    rescue = w.rescue("ctrl-c-closed-output")

    proc = rescue.popen("flush", "--yes", "--provider", "ionos", "--json")
    w.lab.wait_for(lambda: len(w.lab.queue_ids("hold")) == 3, 60, "3 held messages")
    assert proc.stdout is not None
    proc.stdout.close()  # jq has gone
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert w.lab.queue_ids("hold") == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)


@pytest.mark.parametrize("n", [3, 200], ids=["read-when-sent", "read-ahead"])
def test_a_message_released_by_hand_is_not_sent(w: World, tmp_path: Path, n: int) -> None:
    # While the flush waits on the smarthost, the admin runs `postsuper -H ALL`: the
    # messages not sent yet are Postfix's again. Reading them from another queue (as
    # postcat would find them), or sending what was read ahead from hold before, would
    # deliver each twice. (From 200 messages on, a helper reads queue files ahead.)
    ids = submit(w, n)
    gate = threading.Event()
    # One session: the first message waits for its answer to MAIL, the others to be read.
    w.smarthost.script(Fault(stage="MAIL", reply="550 5.7.1 no", action="hang", gate=gate))
    rescue = w.rescue("released-by-hand", smarthosts=one_session(w, timeout="60s"))

    proc = rescue.popen("flush", "--yes", "--provider", "ionos", "--json")
    wait_for(lambda: w.smarthost.transactions_attempted >= 1, 60, "the first transaction")
    assert sorted(w.lab.queue_ids("hold")) == sorted(ids)
    subprocess.run(
        [str(w.lab.command_dir / "postsuper"), "-c", str(w.lab.config_dir), "-H", "ALL"],
        check=True,
        capture_output=True,
    )
    gate.set()
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 1, err
    outcomes = [o for o in map(json.loads, out.splitlines()) if "queue_id" in o]
    # Every message is Postfix's again, none was sent: each is skipped. The one the
    # smarthost refused was no longer on hold to be given back (no "release failed").
    assert len(outcomes) == n and all(o["action"] == "skipped" for o in outcomes), outcomes
    unread = [o for o in outcomes if "no longer on hold" in o["detail"]]
    refused = [o for o in outcomes if "did not find it on hold" in o["detail"]]
    assert (len(unread), len(refused)) == (n - 1, 1), outcomes
    assert "550" in refused[0]["detail"]
    assert w.smarthost.received == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)


def test_sigkill_at_random_moments_loses_nothing_and_announces_every_duplicate(
    w: World,
) -> None:
    # A slow smarthost (30 ms before each reply, 4 sessions): flushes killed at random
    # moments, then one run to the end. bench/kill_bench.py does the same with many kills.
    with RecordingSmarthost(reply_delay=0.03) as slow:
        ids_by_rcpt = submit_backlog(w.lab, 80)
        rescue = w.rescue(
            "kill-random",
            smarthosts=[smarthost_entry("relay1", slow.port, max_connections=4, timeout="30s")],
        )

        report = kill_runs(w.lab, slow, rescue, ids_by_rcpt, kills=6, rng=random.Random(13))

    assert report.kills >= 3, report.as_dict()
    assert report.lost == []
    assert report.on_hold == []
    assert report.orphans == 0
    assert report.unannounced == [], report.as_dict()
    assert w.lab.queue() == []  # the last run sent everything
