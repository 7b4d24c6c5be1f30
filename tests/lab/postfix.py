"""A private Postfix instance under one folder, driven the way a test needs it.

Never touches the machine's own /etc/postfix: every command gets `-c ROOT/etc`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.lab import Running, wait_for
from tests.lab.errors import PostfixLabError
from tests.lab.postfix_conf import inline_map, lab_master_cf
from tests.lab.submission import Submission, transaction
from tests.lab.system import (
    SUBMISSION_PATH,
    alive,
    command_name,
    free_port,
    gone,
    kill,
    open_path,
    postconf_default,
    processes_in,
)

SYSTEM_MASTER_CF = Path("/etc/postfix/master.cf")
# Longer than any test or benchmark run, so Postfix never retries deferred mail by itself;
# only flush() (postqueue -f) makes it try again.
NO_RETRY = "4000s"
# Short enough that a test of a silent server ends in seconds, long enough for a busy machine.
CLIENT_TIMEOUT = "10s"
# Seconds into the past that config files are dated (see _write_config).
CONFIG_AGE = 5
# A port chosen free can be taken before Postfix binds it; that many tries.
START_ATTEMPTS = 3
# The default transport for domains a test did not route: smtpd refuses such recipients
# at RCPT, and a bounce to an unrouted sender is dropped, so no stray message lingers.
NO_ROUTE = "error:5.1.2 this domain has no route in the lab"

_HELD = re.compile(r"^postsuper: ([0-9A-Za-z]+): placed on hold$", re.MULTILINE)
# Queues a message passes through before its first delivery attempt ends.
_IN_FLIGHT = frozenset({"maildrop", "incoming", "active"})


class PostfixLab(Running):
    """A Postfix instance living entirely under `root`, listening on a loopback port.

    `transports` maps a domain to a next hop such as "smtp:[127.0.0.1]:2525"; `settings`
    overrides or adds any main.cf value. `hosts` maps host names to loopback addresses
    for the smtp client alone (it then runs chrooted in the queue directory, with this
    hosts file in its etc/), so a next hop can be "smtp:[mx00.kundenserver.de]:2525" and
    Postfix's delay reasons name that host, as they do in real life.
    """

    def __init__(
        self,
        root: Path,
        *,
        transports: Mapping[str, str] | None = None,
        relayhost: str | None = None,
        name: str = "lab",
        settings: Mapping[str, str] | None = None,
        hosts: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self._hosts = dict(hosts or {})
        self.name = name
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.maillog = self.root / "postfix.log"
        self.command_dir = Path(postconf_default("command_directory"))
        self.smtpd_port = free_port()
        self.syslog_name = f"postfix-{name}-{os.getpid()}-{self.smtpd_port}"
        self._transports = dict(transports or {})
        self._settings: dict[str, str] = {"relayhost": relayhost or ""}
        if relayhost:
            self._settings["default_transport"] = "smtp"
        self._settings.update(settings or {})
        self._initial = (dict(self._transports), dict(self._settings))
        self._create_folders()
        self._write_config()

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start the instance and wait until its smtpd answers connections."""
        if self.master_pid() is not None:
            return
        open_path(self.root)  # again: something may have closed a folder above it since
        for attempt in range(START_ATTEMPTS):
            self._write_config()
            logged = self._log_size()
            result = self._command("postfix", "start", check=False)
            if result.returncode == 0:
                break
            # The port chosen free may be taken by now: then choose another and try again.
            story = result.stderr + self._log_since(logged)
            if "Address already in use" not in story or attempt == START_ATTEMPTS - 1:
                raise PostfixLabError(f"postfix start failed: {story.strip()}")
            self.smtpd_port = free_port()
        wait_for(self._smtpd_listening, timeout=30, what=f"Postfix {self.name} to listen")

    def stop(self) -> None:
        """Stop the instance and every process of it; safe to call when it is not running."""
        if self.master_pid() is not None:
            self._command("postfix", "stop", check=False)
            if not gone(self.master_pid, timeout=20):
                kill(self.master_pid())
        # Daemons exit once the master is gone; any that hang on get killed.
        if not gone(lambda: next(iter(self._processes()), None), timeout=10):
            for pid in self._processes():
                kill(pid)

    def reload(self) -> None:
        """Make the running instance read main.cf and master.cf again."""
        if self.master_pid() is None:
            return
        logged = self._log_size()
        # An idle smtpd of the old generation may still take the next connection, with
        # the old maps: wait until those on the submission path have gone.
        old = {pid for pid in self._processes() if command_name(pid) in SUBMISSION_PATH}
        self._command("postfix", "reload")
        # The master logs this once it has read the files again; daemons started from
        # then on (all of them, soon: the old ones exit) use the new settings.
        self.wait_for(
            lambda: "reload -- version" in self._log_since(logged),
            timeout=30,
            what=f"Postfix {self.name} to reload",
        )
        self.wait_for(
            lambda: not old.intersection(self._processes()),
            timeout=30,
            what=f"Postfix {self.name}'s old smtpd, cleanup and trivial-rewrite to exit",
        )

    def set_transports(self, transports: Mapping[str, str]) -> None:
        """Route exactly these domains (domain -> "smtp:[127.0.0.1]:PORT") and reload."""
        self._transports = dict(transports)
        self._write_config()
        self.reload()

    def postconf(self, **settings: str) -> None:
        """Set main.cf values and reload; `postconf(**{"2bounce_notice_recipient": "x"})`."""
        self._settings.update(settings)
        self._write_config()
        self.reload()

    def restore_config(self) -> None:
        """Back to the transports and settings it was made with; reloads only on a change."""
        transports, settings = self._initial
        if (self._transports, self._settings) != (transports, settings):
            self._transports, self._settings = dict(transports), dict(settings)
            self._write_config()
            self.reload()

    # -- putting mail in ---------------------------------------------------------------

    def submit(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        dsn_notify: str | None = None,
        dsn_orcpt: str | Mapping[str, str] | None = None,
        envid: str | None = None,
        ret: str | None = None,
        smtputf8: bool | None = None,
    ) -> str:
        """Send one message to this instance's smtpd; return its queue id."""
        submission = Submission(
            sender, tuple(recipients), message, dsn_notify, dsn_orcpt, envid, ret, smtputf8
        )
        return self.submit_many([submission])[0]

    def submit_many(self, submissions: Iterable[Submission], *, sessions: int = 1) -> list[str]:
        """Send many messages over `sessions` SMTP sessions; return queue ids in order.

        One session keeps arrival order; about 4 is fastest (Postfix's cleanup per message
        is the limit, not the client): 10,000 small messages take some 10-40 seconds.
        """
        todo = list(submissions)
        sessions = max(1, min(sessions, len(todo)))
        ids: list[str] = [""] * len(todo)

        def run_session(first: int) -> None:
            with self._smtp_session() as client:
                for index in range(first, len(todo), sessions):
                    ids[index] = transaction(client, todo[index])

        if sessions == 1:
            run_session(0)
        else:
            with ThreadPoolExecutor(sessions) as pool:
                for done in [pool.submit(run_session, first) for first in range(sessions)]:
                    done.result()
        return ids

    def _smtp_session(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.smtpd_port, "client.lab.test", timeout=60)
        client.ehlo()
        return client

    # -- looking at the queue ----------------------------------------------------------

    def queue(self) -> list[dict[str, Any]]:
        """Every queued message, as `postqueue -j` describes it (one dict per message)."""
        out = self._command("postqueue", "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def queue_ids(self, queue_name: str | None = None) -> list[str]:
        """Queue ids of all messages, or of those in one queue ("deferred", "hold", ...)."""
        return [
            entry["queue_id"]
            for entry in self.queue()
            if queue_name is None or entry["queue_name"] == queue_name
        ]

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 30, what: str = "a condition"
    ) -> None:
        """Poll `predicate`; on timeout the error shows the queue and the log's tail."""
        wait_for(predicate, timeout, what, describe=self.describe)

    def wait_deferred(self, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until exactly `n` messages are deferred, each recipient with a delay reason,
        and nothing waits for a first delivery attempt; return those messages."""
        found: list[dict[str, Any]] = []

        def settled() -> bool:
            entries = self.queue()
            found[:] = [entry for entry in entries if entry["queue_name"] == "deferred"]
            return (
                len(found) == n
                and not any(entry["queue_name"] in _IN_FLIGHT for entry in entries)
                and all(rcpt.get("delay_reason") for entry in found for rcpt in entry["recipients"])
            )

        self.wait_for(settled, timeout, f"{n} deferred messages")
        return found

    def wait_empty(self, timeout: float = 30) -> None:
        """Wait until the queue holds no message at all."""
        self.wait_for(lambda: not self.queue(), timeout, "an empty queue")

    def describe(self) -> str:
        """The queue's size per queue and the log's last lines, for error messages."""
        counts: dict[str, int] = {}
        try:
            for entry in self.queue():
                counts[entry["queue_name"]] = counts.get(entry["queue_name"], 0) + 1
        except PostfixLabError as exc:
            counts = {f"unreadable: {exc}": 0}
        tail = "\n".join(self.log().splitlines()[-15:])
        return f"queue {counts or 'empty'}; log ends:\n{tail}"

    def log(self) -> str:
        """Everything this instance has logged so far."""
        return self._log_since(0)

    def _log_size(self) -> int:
        try:
            return self.maillog.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.maillog.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def master_pid(self) -> int | None:
        """The master process id while the instance runs, else None."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if alive(pid) else None

    # -- acting on the queue -----------------------------------------------------------

    def flush(self) -> None:
        """Ask for delivery of all deferred mail now (`postqueue -f`); this also wakes
        destinations the queue manager had marked dead."""
        self._command("postqueue", "-f")

    def clear(self) -> None:
        """Delete every message (`postsuper -d ALL`) and wait until the queue is empty."""
        self._command("postsuper", "-d", "ALL")
        # A destination that failed stays "dead" in the queue manager's memory for
        # minimal_backoff_time; a flush forgets that, so the next test starts fresh.
        self.flush()
        self.wait_empty()

    def set_arrival(self, queue_id: str, when: int, queue_name: str = "deferred") -> None:
        """Date a deferred message's arrival back to `when` (epoch seconds), in its queue file.

        Rewrites the digits of the file's time record in place (same length: a time with
        as many digits), as if the message had arrived then; showq, qshape and the queue
        manager read the arrival time from there. Only for a message Postfix is not working
        on (deferred, with the lab's long retry times, or on hold).
        """
        [path] = [p for p in (self.queue_dir / queue_name).rglob(queue_id) if p.is_file()]
        with path.open("r+b") as queue_file:
            data = queue_file.read()
            pos = 0
            while pos < len(data):
                kind, pos = data[pos], pos + 1
                length = shift = 0
                while True:  # the length: 7 bits a byte, low bits first, high bit = more
                    byte, pos = data[pos], pos + 1
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                if kind == ord("T"):
                    seconds = data[pos : pos + length].partition(b" ")[0]
                    new = str(when).encode()
                    if len(new) != len(seconds):
                        raise PostfixLabError(f"{queue_id}: {when} does not fit {seconds!r}")
                    queue_file.seek(pos)
                    queue_file.write(new)
                    return
                pos += length
        raise PostfixLabError(f"{queue_id}: no time record in {path}")

    def hold_ids(self, ids: Iterable[str], queue_name: str | None = None) -> list[str]:
        """Put messages on hold (`postsuper -h -`); return the ids postsuper did hold."""
        args = ["-h", "-"] + ([queue_name] if queue_name else [])
        result = self._command("postsuper", *args, stdin="".join(f"{i}\n" for i in ids))
        return _HELD.findall(result.stderr)

    def postcat(self, queue_id: str, *options: str) -> bytes:
        """`postcat -q ID` output with the given options (e.g. "-e", "-bh")."""
        cmd = [str(self.command_dir / "postcat"), "-c", str(self.config_dir)]
        result = subprocess.run([*cmd, *options, "-q", queue_id], capture_output=True, check=False)
        if result.returncode != 0:
            raise PostfixLabError(f"postcat {queue_id}: {result.stderr.decode(errors='replace')}")
        return result.stdout

    # -- internals ---------------------------------------------------------------------

    def _create_folders(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        open_path(self.root)
        for folder in (self.config_dir, self.queue_dir):
            folder.mkdir(exist_ok=True)
            folder.chmod(0o755)
        self.data_dir.mkdir(exist_ok=True)
        if self._hosts:
            # What a chrooted smtp client resolves names with (smtp_host_lookup = native):
            # this hosts file, and nothing else.
            jail_etc = self.queue_dir / "etc"
            jail_etc.mkdir(exist_ok=True)
            jail_etc.chmod(0o755)
            lines = [f"{address}\t{name}\n" for name, address in self._hosts.items()]
            (jail_etc / "hosts").write_text("".join(lines))
            (jail_etc / "nsswitch.conf").write_text("hosts: files\n")
            for name in ("hosts", "nsswitch.conf"):
                (jail_etc / name).chmod(0o644)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        self.data_dir.chmod(0o700)

    def _main_cf(self) -> dict[str, str]:
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "syslog_name": self.syslog_name,
            "myhostname": f"{self.name}.test",
            "myorigin": "$myhostname",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "transport_maps": inline_map(self._transports),
            "default_transport": NO_ROUTE,
            "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native",
            "queue_run_delay": NO_RETRY,
            "minimal_backoff_time": NO_RETRY,
            "maximal_backoff_time": NO_RETRY,
            "delay_warning_time": "0h",
            # Mail flows in as fast as a test or the benchmark can send it.
            "in_flow_delay": "0s",
            "default_destination_concurrency_limit": "20",
            # Fewer process restarts: the default (100) costs a third of the throughput.
            "max_use": "10000",
            "smtp_connect_timeout": "5s",
            "smtputf8_enable": "yes",
        }
        for stage in ("helo", "mail", "rcpt", "data_init", "data_xfer", "data_done", "quit"):
            settings[f"smtp_{stage}_timeout"] = CLIENT_TIMEOUT
        settings.update(self._settings)
        return settings

    def _write_config(self) -> None:
        main_cf = "".join(f"{key} = {value}\n" for key, value in self._main_cf().items())
        master_cf = lab_master_cf(
            SYSTEM_MASTER_CF.read_text(), self.smtpd_port, chroot_smtp=bool(self._hosts)
        )
        for name, text in (("main.cf", main_cf), ("master.cf", master_cf)):
            path = self.config_dir / name
            path.write_text(text)
            # Postfix sleeps while a config file's mtime is the current second (it might be
            # half written), up to 1.5s per command; a past mtime spares every command that.
            past = time.time() - CONFIG_AGE
            os.utime(path, (past, past))

    def _command(
        self, name: str, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.command_dir / name), "-c", str(self.config_dir), *args]
        # Files, not pipes: `postfix reload` leaves a postsuper running in the background
        # that would hold a pipe open, and us waiting, for seconds.
        feed: dict[str, Any] = {"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin}
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            done = subprocess.run(cmd, stdout=out, stderr=err, text=True, check=False, **feed)
            code = done.returncode
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(cmd, code, out.read(), err.read())
        if check and code != 0:
            raise PostfixLabError(
                f"{' '.join(cmd)} exited {code}: {result.stderr.strip()}\n{self.describe()}"
            )
        return result

    def _smtpd_listening(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.smtpd_port), timeout=1),
        ):
            return True
        return False

    def _processes(self) -> list[int]:
        """Ids of the processes working in this instance's queue folder (all its daemons)."""
        return processes_in(self.queue_dir)
