"""Shared by every part of the benchmark: the backlog's shape, errors, progress, tools."""

from __future__ import annotations

import re
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOMAINS = tuple(f"kunde{i}.test" for i in range(1, 31))
PROVIDER = "ionos"
# Every this many messages one has a second recipient (same domain, so one transaction).
SECOND_RECIPIENT_EVERY = 10
MESSAGE_SIZE = 4096  # bytes, about; headers included
SENDERS = (
    ("Webshop Müller", "bestellung@shop-mueller.example"),
    ("Stadtwerke Nordstadt", "rechnung@stadtwerke-nordstadt.example"),
    ("TSV Blau-Weiß", "vorstand@tsv-blau-weiss.example"),
    ("Praxis Dr. Weber", "termine@praxis-weber.example"),
    ("Hausverwaltung Schmidt", "info@hv-schmidt.example"),
    ("Kanzlei Becker", "sekretariat@kanzlei-becker.example"),
)
PARAGRAPHS = (
    "vielen Dank für Ihre Nachricht. Wir haben Ihre Anfrage erhalten und melden uns "
    "so bald wie möglich mit einer ausführlichen Antwort bei Ihnen.",
    "Bitte beachten Sie, dass sich unsere Öffnungszeiten über die Feiertage ändern: "
    "Montag bis Freitag von 8 bis 16 Uhr, Samstag geschlossen.",
    "Anbei finden Sie die Übersicht der offenen Posten. Falls Sie Fragen zur Rechnung "
    "haben, antworten Sie einfach auf diese E-Mail oder rufen Sie uns an.",
    "Die Lieferung erfolgt voraussichtlich in drei bis fünf Werktagen. Den Status Ihrer "
    "Sendung können Sie jederzeit in Ihrem Kundenkonto einsehen.",
    "Für Rückfragen stehen wir Ihnen gerne zur Verfügung. Mit freundlichen Grüßen aus "
    "der Geschäftsstelle, Ihr Team vom Kundenservice.",
)
FIRST_DATE = datetime(2024, 11, 25, 9, 0, tzinfo=UTC)

# Queue folders a message can sit in (a message file each); the queue is empty when
# they hold no file.
QUEUE_FOLDERS = ("maildrop", "incoming", "active", "deferred", "hold")
POSTFIX_SETTINGS = (
    "default_destination_concurrency_limit",
    "smtp_destination_concurrency_limit",
    "initial_destination_concurrency",
    "default_destination_recipient_limit",
    "default_process_limit",
    "qmgr_message_active_limit",
    "max_use",
    "in_flow_delay",
    "smtp_connection_cache_on_demand",
)
# pyinstrument's report format by the --profile file's suffix; text otherwise.
PROFILE_RENDERERS = {".html": "html", ".json": "json", ".pyisession": "pyisession"}
SINK_POLL = 0.01  # seconds between looks at the sink's counter while Postfix drains
IDLE_SHARE = 0.3  # --wait-idle: CPUs busier than this are not idle
SINK_MESG = re.compile(rb"mesg=(\d+)")
_QSHAPE_TOTAL = re.compile(r"^\s*TOTAL\s+(\d+)", re.MULTILINE)


class BenchError(RuntimeError):
    """A step of the benchmark failed or its result did not check out."""


def say(text: str) -> None:
    """Progress, on stderr (stdout carries the result)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def sbin(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise BenchError(f"{name} not found (it ships with the postfix package)")
    return found
