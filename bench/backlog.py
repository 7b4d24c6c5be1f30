"""The backlog: N deferred messages, always the same bytes, in a private Postfix."""

from __future__ import annotations

import base64
import email.utils
import os
import random
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    DOMAINS,
    FIRST_DATE,
    MESSAGE_SIZE,
    PARAGRAPHS,
    QUEUE_FOLDERS,
    SECOND_RECIPIENT_EVERY,
    SENDERS,
)
from tests.lab.postfix import PostfixLab
from tests.lab.submission import Submission

# -- the backlog ---------------------------------------------------------------------------


def message(n: int) -> Submission:
    """Message number `n`: always the same bytes, about MESSAGE_SIZE of them, 8bit UTF-8."""
    rng = random.Random(n)
    name, sender = SENDERS[n % len(SENDERS)]
    sender_domain = sender.split("@")[1]
    domain = DOMAINS[n % len(DOMAINS)]
    recipients = [f"kunde{n:05d}@{domain}"]
    if n % SECOND_RECIPIENT_EVERY == 0:
        recipients.append(f"buchhaltung{n:05d}@{domain}")
    date = email.utils.format_datetime(FIRST_DATE + timedelta(seconds=n))
    signature = base64.b64encode(rng.randbytes(256)).decode()
    body_hash = base64.b64encode(rng.randbytes(32)).decode()
    folded = "\n\t".join(signature[i : i + 72] for i in range(0, len(signature), 72))
    headers = [
        f"Received: from app{n % 4:02d}.{sender_domain} (app{n % 4:02d}.{sender_domain}"
        f" [192.0.2.{n % 250 + 1}])",
        f"\tby mail.{sender_domain} (Postfix) with ESMTPS id 4X{n:08X}",
        f"\tfor <{recipients[0]}>; {date}",
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={sender_domain};",
        f"\ts=mail2024; t={int((FIRST_DATE + timedelta(seconds=n)).timestamp())};",
        f"\tbh={body_hash};",
        "\th=From:To:Subject:Date:Message-ID:MIME-Version:Content-Type;",
        f"\tb={folded}",
        f'From: "{name}" <{sender}>',
        f"To: {', '.join(f'<{r}>' for r in recipients)}",
        f"Subject: Ihre Anfrage Nr. {100000 + n} - Bestätigung",
        f"Date: {date}",
        f"Message-ID: <{n:08d}.{rng.getrandbits(48):012x}@{sender_domain}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8; format=flowed",
        "Content-Transfer-Encoding: 8bit",
        f"List-Unsubscribe: <mailto:abmelden@{sender_domain}?subject=unsubscribe>",
        "X-Mailer: Bench-Mailer 1.0",
    ]
    lines = [*headers, "", "Sehr geehrte Damen und Herren,", ""]
    size = sum(len(line.encode()) + 2 for line in lines)
    while size < MESSAGE_SIZE - 80:
        paragraph = PARAGRAPHS[rng.randrange(len(PARAGRAPHS))]
        words = paragraph.split()
        line = ""
        for word in words:
            if len(line) + len(word) + 1 > 72:
                lines.append(line)
                size += len(line.encode()) + 2
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines += [line, ""]
        size += len(line.encode()) + 4
    lines.append(f"-- \n{name}\n{sender}")
    text = "\n".join(lines) + "\n"
    return Submission(sender, tuple(recipients), text.encode())


def backlog(n: int) -> list[Submission]:
    return [message(i) for i in range(n)]


def create_backlog(
    lab: PostfixLab, messages: Sequence[Submission], sessions: int
) -> dict[str, Any]:
    """Submit `messages` and wait until every one is deferred with a delay reason."""
    start = time.perf_counter()
    lab.submit_many(messages, sessions=sessions)
    submitted = time.perf_counter() - start
    lab.wait_deferred(len(messages), timeout=120 + len(messages) / 20)
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "submit_seconds": round(submitted, 2),
        "sessions": sessions,
    }


def queued_files(queue_dir: Path) -> int:
    """Message files in the queue: 0 when Postfix holds no mail at all."""
    count = 0
    for folder in QUEUE_FOLDERS:
        for _, _, files in os.walk(queue_dir / folder):
            count += len(files)
    return count
