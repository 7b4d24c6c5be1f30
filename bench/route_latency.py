"""How soon Postfix routes new mail by a transport table queue-rescue has replaced.

A private Postfix (the test lab) names a hash table first in transport_maps, written the
way the service writes it (rescue.postfix.lookuptable: postmap beside the live file, then
a rename). Each round points one domain at a different recording server, then submits a
message every `--every` seconds until one reaches the new server: the time from the
write to that submission is how long Postfix took to see the change. No reload.
Postfix's trivial-rewrite looks at its tables every 10 seconds, from its own start; each
write waits a random 0 to 10 seconds first, so the rounds sample that cycle's phase.

Run as root from the repository root: `python -m bench.route_latency [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import random
import time

from rescue.postfix.lookuptable import LookupTable
from tests.lab.postfix import PostfixLab, inline_map, new_lab_root, remove_lab_root
from tests.lab.smtpd import FakeProvider, RecordingSmarthost

SENDER = "bench@example.com"
GIVE_UP = 120.0
TRIVIAL_REWRITE_CHECK = 10.0  # seconds between its looks at its tables (trivial-rewrite.c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--every", type=float, default=0.2, help="seconds between messages")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    phase = random.Random(args.seed)
    root = new_lab_root("route-latency-")
    provider, first, second = FakeProvider(), RecordingSmarthost(), RecordingSmarthost()
    for server in (provider, first, second):
        server.start()
    lab = PostfixLab(
        root / "postfix",
        transports={f"d{n}.test": provider.next_hop for n in range(args.rounds + 1)},
        name="latency",
    )
    try:
        table = LookupTable(
            "hash", root / "route", command_dir=lab.command_dir, config_dir=lab.config_dir
        )
        table.write({"d0.test": first.next_hop})
        lab.postconf(transport_maps=f"hash:{root / 'route'}, {inline_map(lab._transports)}")
        lab.start()
        lab.submit(SENDER, ["u@d0.test"], b"Subject: warm up\n\nx\n")
        first.wait_for_count(1, GIVE_UP)
        seen = []
        for n in range(1, args.rounds + 1):
            target = second if n % 2 else first
            want = len(target.received) + 1
            time.sleep(phase.uniform(0, TRIVIAL_REWRITE_CHECK))
            table.write({f"d{n}.test": target.next_hop})
            written = time.monotonic()
            sent = 0
            while len(target.received) < want:
                if time.monotonic() - written > GIVE_UP:
                    raise SystemExit(f"round {n}: no message took the new route in {GIVE_UP}s")
                sent += 1
                lab.submit(SENDER, [f"u{sent}@d{n}.test"], b"Subject: probe\n\nx\n")
                time.sleep(args.every)
            seen.append(time.monotonic() - written)
            print(f"round {n}: new route taken {seen[-1]:.2f}s after the write ({sent} messages)")
            lab.flush()
        print(f"min {min(seen):.2f}s, max {max(seen):.2f}s over {len(seen)} rounds")
    finally:
        lab.stop()
        for server in (provider, first, second):
            server.stop()
        remove_lab_root(root)


if __name__ == "__main__":
    main()
