"""sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET; silent when there is none."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Tells systemd READY, STATUS, WATCHDOG and STOPPING (a Type=notify service)."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace (sd_notify(3)).
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # Pinging at half the watchdog time, as sd_watchdog_enabled(3) advises.
        wanted = usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if wanted else None

    def send(self, *fields: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never wait for systemd: a full queue (BlockingIOError) drops this one;
                # the next status or watchdog ping follows soon.
                sock.sendto("\n".join(fields).encode(), socket.MSG_DONTWAIT, self._address)
        except OSError as exc:  # systemd gone or restarting: the service itself goes on
            log.debug("cannot notify systemd at %s: %s", self._address, exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")
