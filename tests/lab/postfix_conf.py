"""Text of a lab Postfix's configuration: inline maps and master.cf."""

from __future__ import annotations

from collections.abc import Mapping

# master.cf's fifth column: whether a service runs chrooted (master(5)).
CHROOT_COLUMN = 4


def inline_map(entries: Mapping[str, str]) -> str:
    """A Postfix inline: table (Postfix >= 3.0) holding `entries`, or "" when empty."""
    if not entries:
        return ""
    return "inline:{ " + ", ".join(f"{key}={value}" for key, value in entries.items()) + " }"


def lab_master_cf(system_text: str, smtpd_port: int, *, chroot_smtp: bool = False) -> str:
    """The system's master.cf with smtpd on 127.0.0.1:PORT and no service chrooted
    (other inet listeners would clash with the machine's own).

    With `chroot_smtp`, the smtp client alone runs chrooted in the queue directory,
    where PostfixLab put the lab's own hosts file (see its `hosts`).
    """
    lines = []
    for line in system_text.splitlines():
        fields = line.split()
        is_service = bool(fields) and not line[0].isspace() and not line.startswith("#")
        if not is_service or len(fields) < 8:
            lines.append(line)
        elif fields[1] == "inet":
            if fields[0] == "smtp":
                lines.append(f"127.0.0.1:{smtpd_port} inet n - n - - smtpd")
            else:
                lines.append("#" + line)
        else:
            chrooted = chroot_smtp and fields[0] == "smtp" and fields[1] == "unix"
            fields[CHROOT_COLUMN] = "y" if chrooted else "n"
            lines.append("  ".join(fields))
    return "\n".join(lines) + "\n"
