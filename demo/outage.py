"""A self-contained replay of the outage queue-rescue was written for.

A throwaway Postfix instance (its own folder, its own loopback ports) sends mail
for 31 customer domains whose MX is at 1&1/IONOS (a DNS server on loopback
says so); the "provider" answers every delivery with
"421 invalid sender domain, possibly misconfigured", so 70 mails pile up in the
deferred queue. Then queue-rescue shows the queue, tells why the provider refuses
the mail (the sender domain's MX record points at a CNAME; a Knot DNS server on
loopback serves every zone of the story), previews the reroute and flushes it
through a local smarthost, which prints what it received.

Run from the repository root, as root: `scripts/demo` (or `.venv/bin/python -m demo.outage`).
Nothing outside a temporary folder is touched; the machine's own Postfix is not used.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.integration.rescue_cli import SRS_DOMAIN, Rescue, smarthost_entry
from tests.lab.authdns import AuthoritativeDns, Zone
from tests.lab.postfix import PostfixLab
from tests.lab.smtpd import FakeProvider, RecordingSmarthost
from tests.lab.submission import Submission

DOMAINS = [f"kunde{n}.example" for n in range(1, 32)]
IONOS_MX = [(10, "mx00.kundenserver.de"), (10, "mx01.kundenserver.de")]
OTHER = "partner.example"
SENDER_DOMAIN = "shop.example"
SENDING_IP = "203.0.113.25"  # what the providers would see (a documentation address)
HELO = "out.shop.example"
BLOCK_LIST = "bl.example"
NS = ("ns1.shop.example",)


def zones() -> list[Zone]:
    """The story's DNS: customer domains at 1&1, and a sender domain whose MX is an alias."""
    customers = [Zone(d, "\n".join(f"@ MX {p} {h}." for p, h in IONOS_MX), ns=NS) for d in DOMAINS]
    shop = Zone(
        SENDER_DOMAIN,
        "\n".join(
            [
                "@ MX 10 mail",
                "mail CNAME srv1",  # the fault: an MX must name a host, not an alias
                "srv1 A 198.51.100.20",
                f"out A {SENDING_IP}",
                "ns1 A 127.0.0.1",
                f'@ TXT "v=spf1 ip4:{SENDING_IP} -all"',
                '_dmarc TXT "v=DMARC1; p=none"',
            ]
        ),
        ns=NS,
    )
    return [
        *customers,
        shop,
        Zone(OTHER, "@ MX 10 mx.partner-hosting.example.", ns=NS),
        Zone("113.0.203.in-addr.arpa", f"25 PTR {HELO}.", ns=NS),
        Zone(BLOCK_LIST, ns=NS),
        Zone(SRS_DOMAIN, '@ MX 10 srv1.shop.example.\n@ TXT "v=spf1 ip4:127.0.0.1 -all"', ns=NS),
    ]


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m" if sys.stdout.isatty() else f"\n== {title}", flush=True)


def show(rescue: Rescue, *args: str, lines: int = 0) -> int:
    """Run a queue-rescue command and print its output (the first `lines` lines, if set)."""
    print("$ queue-rescue " + " ".join(args), flush=True)
    proc = subprocess.run(
        rescue.command(*args),
        check=False,
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
    )
    output = proc.stdout.splitlines()
    if lines and len(output) > lines + 2:
        output = [*output[:lines], f"... ({len(output) - lines - 1} more lines)", output[-1]]
    print("\n".join(output))
    if proc.stderr:
        print(proc.stderr, end="", file=sys.stderr)
    return proc.returncode


def message(n: int) -> bytes:
    return (
        f"From: Buchhaltung <billing@{SENDER_DOMAIN}>\nTo: customer{n}\n"
        f"Subject: Rechnung {1000 + n}\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n\n"
        f"Guten Tag,\n\nanbei Ihre Rechnung Nr. {1000 + n}. Gr\u00fc\u00dfe aus K\u00f6ln.\n"
    ).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=70)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="queue-rescue-demo-"))
    root.chmod(0o755)
    provider = FakeProvider(reply="421 invalid sender domain, possibly misconfigured").start()
    smarthost = RecordingSmarthost(hostname="smarthost.example").start()
    dns = AuthoritativeDns(zones()).start()
    transports = {d: provider.next_hop for d in [*DOMAINS, OTHER]}
    lab = PostfixLab(root / "postfix", transports=transports, name="demo")
    try:
        lab.start()
        step(
            f"Postfix sends {args.messages} mails to {len(DOMAINS)} customer domains at 1&1,"
            f" and one to a partner ({OTHER}) at another provider"
        )
        lab.submit_many(
            Submission(f"billing@{SENDER_DOMAIN}", (f"customer{n}@{DOMAINS[n % 31]}",), message(n))
            for n in range(args.messages)
        )
        lab.submit(f"billing@{SENDER_DOMAIN}", [f"ceo@{OTHER}"], message(999))
        lab.wait_deferred(args.messages + 1, timeout=120)
        sample = lab.queue()[0]["recipients"][0]["delay_reason"]
        print(f"{args.messages + 1} mails deferred; Postfix says:\n  {sample}")

        rescue = Rescue(
            root / "rescue",
            lab,
            smarthosts=[smarthost_entry("relay1", smarthost.port)],
            extra=dns.dns_config("2s")
            + f'\n[diagnose]\npublic_ip = "{SENDING_IP}"\ndnsbl = ["{BLOCK_LIST}"]\n'
            + f"ns_port = {dns.port}\nprobe_port = {provider.port}\n",
        )
        step("What is stuck, where does it want to go, and why?")
        show(rescue, "scan")
        show(rescue, "scan", "--reasons")
        step("Why does 1&1 refuse the mail? What to fix in DNS (the probe sends no mail)")
        show(rescue, "diagnose", "--probe", "--helo", HELO)
        step("Preview: what would be rerouted (changes nothing)")
        show(rescue, "flush", "--provider", "ionos", "--dry-run", lines=6)
        step("Flush it through the smarthost, with SRS senders")
        code = show(rescue, "flush", "--provider", "ionos", "--yes", lines=6)
        step("What the smarthost received")
        for got in smarthost.received[:5]:
            print(f"  MAIL FROM:<{got.mail_from}>  RCPT TO:{','.join(got.rcpt_tos)}")
        print(f"  ... {len(smarthost.received)} messages in all")
        step("Left in Postfix (mail to another provider is not touched)")
        for entry in lab.queue():
            rcpts = ", ".join(r["address"] for r in entry["recipients"])
            print(f"  {entry['queue_id']} {entry['queue_name']}: {rcpts}")
        return code
    finally:
        lab.stop()
        for server in (provider, smarthost, dns):
            server.stop()
        if args.keep:
            print(f"\nkept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
