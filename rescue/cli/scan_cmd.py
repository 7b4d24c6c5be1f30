"""`queue-rescue scan`: what is deferred, where it wants to go, since when, and why."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import click

from rescue.classify.reasons import normalize_reason
from rescue.cli.common import inventory_of, load_config
from rescue.cli.output import age, console, json_line, print_table
from rescue.inventory import Inventory

UNKNOWN = "(unknown)"


@dataclass
class Group:
    messages: set[str] = field(default_factory=set)
    recipients: int = 0
    oldest: float = 0.0
    reasons: set[str] = field(default_factory=set)


def group_by_provider(inventory: Inventory, now: float) -> dict[str, Group]:
    groups: dict[str, Group] = defaultdict(Group)
    for message in inventory.messages:
        if message.queue_name != "deferred":
            continue
        classes = inventory.classes[message.queue_id]
        for recipient, cls in zip(message.recipients, classes, strict=True):
            group = groups[cls.provider or UNKNOWN]
            group.messages.add(message.queue_id)
            group.recipients += 1
            group.oldest = max(group.oldest, now - message.arrival_time)
            if recipient.delay_reason:
                group.reasons.add(normalize_reason(recipient.delay_reason))
    return groups


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per queued message.")
@click.option("--no-dns", is_flag=True, help="Do not look up MX records; classify by reason only.")
@click.pass_context
def scan(ctx: click.Context, as_json: bool, no_dns: bool) -> None:
    """Show the deferred queue grouped by provider.

    For each provider: messages, recipients, the oldest message's age and the
    distinct delay reasons (addresses and queue ids masked).
    """
    cfg = load_config(ctx)
    view = inventory_of(cfg, use_dns=not no_dns)
    inventory = view.inventory
    if as_json:
        for message in inventory.messages:
            classes = inventory.classes[message.queue_id]
            json_line(
                {
                    "queue_id": message.queue_id,
                    "queue_name": message.queue_name,
                    "arrival_time": message.arrival_time,
                    "size": message.size,
                    "sender": message.sender,
                    "recipients": [
                        {
                            "address": r.address,
                            "provider": c.provider,
                            "mx": c.mx,
                            "reason": r.delay_reason,
                            "classified_by": c.classified_by,
                            "reason_matched": c.reason_matched,
                            "note": c.note or None,
                        }
                        for r, c in zip(message.recipients, classes, strict=True)
                    ],
                }
            )
        return
    now = time.time()
    groups = group_by_provider(inventory, now)
    out = console()
    if not groups:
        out.print("The deferred queue is empty.")
        return
    rows = []
    for name, group in sorted(groups.items(), key=lambda kv: -len(kv[1].messages)):
        label = view.catalog.by_name[name].label if name in view.catalog.by_name else name
        rows.append(
            (
                f"{name} ({label})" if label != name else name,
                str(len(group.messages)),
                str(group.recipients),
                age(group.oldest),
                "\n".join(sorted(group.reasons)[:5])
                + (f"\n(+{len(group.reasons) - 5} more)" if len(group.reasons) > 5 else ""),
            )
        )
    print_table(
        out,
        "Deferred mail by provider",
        ("provider", "messages", "recipients", "oldest", "reasons"),
        rows,
    )
    total = len({m.queue_id for m in inventory.messages if m.queue_name == "deferred"})
    out.print(f"{total} deferred messages.")
