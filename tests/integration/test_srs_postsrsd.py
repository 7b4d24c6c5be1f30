"""Our SRS against the real thing: Debian's postsrsd, and Postfix's own socketmap client.

postsrsd runs on loopback ports with the same secrets and domain; it needs no root (no
-u, no -c here). Its tcp_table protocol: ``get ADDRESS\\n`` -> ``200 RESULT`` or
``500 REASON``, both %-encoded.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rescue.errors import SrsError
from rescue.srs.bouncemap import serve_srs
from rescue.srs.rewriter import SECONDS_PER_DAY, SrsRewriter

POSTSRSD = shutil.which("postsrsd") or shutil.which("postsrsd", path="/usr/sbin:/usr/local/sbin")
POSTMAP = shutil.which("postmap") or shutil.which("postmap", path="/usr/sbin:/usr/local/sbin")

DOMAIN = "srs.test"
SIGNING = "interop-signing-secret-0123456789"
OLDER = "interop-older-secret-9876543210ab"
EXCLUDED = "partner.test"

SENDERS = [
    "alice@example.com",
    "Alice.Smith@Example.COM",
    "a=b==c@example.com",
    "o'brien+tag@mail.example.org",
    "x@sub.srs.test",  # a subdomain is not our domain
    "SRS0=abcd=TT=orig.test=bob@first.test",
    "srs0+opaque@first.test",
    "SRS1=XXXX=first.test==abcd=TT=orig.test=bob@second.test",
]
KEPT = ["bob@srs.test", "BOB@SRS.TEST", f"carol@{EXCLUDED}"]


@dataclass
class Postsrsd:
    forward_port: int
    reverse_port: int

    def query(self, port: int, address: str) -> tuple[int, str]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"get " + tcp_table_encode(address).encode() + b"\n")
            reply = conn.makefile("rb").readline().decode().rstrip("\n")
        code, _, text = reply.partition(" ")
        return int(code), urllib.parse.unquote(text)

    def forward(self, address: str) -> tuple[int, str]:
        return self.query(self.forward_port, address)

    def reverse(self, address: str) -> tuple[int, str]:
        return self.query(self.reverse_port, address)


def tcp_table_encode(text: str) -> str:
    """Postfix's tcp_table(5) quoting: %XX for whitespace, controls, '%' and non-ASCII."""
    return "".join(
        c if c.isascii() and c.isprintable() and c not in " %" else f"%{ord(c):02X}" for c in text
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"postsrsd exited with {proc.returncode}: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"postsrsd did not listen on port {port}")


@pytest.fixture(scope="module")
def postsrsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postsrsd]:
    if POSTSRSD is None:
        pytest.skip("postsrsd is not installed (apt-get install postsrsd)")
    secrets = tmp_path_factory.mktemp("postsrsd") / "secrets"
    secrets.write_text(f"{SIGNING}\n{OLDER}\n")
    secrets.chmod(0o600)
    ports = Postsrsd(free_port(), free_port())
    # No -A: like us, postsrsd then leaves senders at the SRS domain alone.
    # -X takes its argument attached (getopt "X::").
    command = [POSTSRSD, "-s", str(secrets), "-d", DOMAIN, "-4", "-l", "127.0.0.1"]
    command += ["-f", str(ports.forward_port), "-r", str(ports.reverse_port), f"-X{EXCLUDED}"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(ports.forward_port, proc)
        wait_for_port(ports.reverse_port, proc)
        yield ports
    finally:
        proc.terminate()
        proc.wait(10)


def ours(*, secrets: tuple[str, ...] = (SIGNING, OLDER), days_ago: float = 0) -> SrsRewriter:
    now = time.time() - days_ago * SECONDS_PER_DAY
    return SrsRewriter(
        domain=DOMAIN, secrets=secrets, exclude_domains=[EXCLUDED], clock=lambda: now
    )


@pytest.mark.parametrize("sender", SENDERS)
def test_same_forward_as_postsrsd(postsrsd: Postsrsd, sender: str) -> None:
    assert postsrsd.forward(sender) == (200, ours().forward(sender))


@pytest.mark.parametrize("sender", KEPT)
def test_both_keep_our_domain_and_excluded_domains(postsrsd: Postsrsd, sender: str) -> None:
    assert ours().forward(sender) == sender
    # postsrsd says "200 <the same address>" for its own domain, "500" for an excluded
    # one; Postfix keeps the sender either way.
    code, text = postsrsd.forward(sender)
    assert (code, text) == (200, sender) or code == 500


@pytest.mark.parametrize("sender", SENDERS)
def test_each_reverses_the_others(postsrsd: Postsrsd, sender: str) -> None:
    theirs = postsrsd.forward(sender)[1]
    mine = ours().forward(sender)
    assert ours().reverse(theirs) == postsrsd.reverse(mine)[1]
    assert postsrsd.reverse(mine) == (200, ours().reverse(mine))


def test_rotation_across_implementations(postsrsd: Postsrsd) -> None:
    # postsrsd signs with SIGNING; after a rotation we sign with a new one and still verify.
    rotated = ours(secrets=("a-brand-new-secret-000000000000", SIGNING))
    assert rotated.reverse(postsrsd.forward("alice@example.com")[1]) == "alice@example.com"
    # postsrsd verifies with its second secret what we signed with it.
    signed_with_older = ours(secrets=(OLDER,)).forward("alice@example.com")
    assert postsrsd.reverse(signed_with_older) == (200, "alice@example.com")


@pytest.mark.parametrize(("days", "valid"), [(21, True), (22, False)])
def test_same_expiry_as_postsrsd(postsrsd: Postsrsd, days: int, valid: bool) -> None:
    # Signed as if `days` ago (a few hours off the day boundary would not change the day
    # count for either of us, as both count whole days since the epoch).
    old = ours(days_ago=days).forward("alice@example.com")
    assert (postsrsd.reverse(old)[0] == 200) is valid
    if valid:
        assert ours().reverse(old) == "alice@example.com"
    else:
        with pytest.raises(SrsError, match="expired"):
            ours().reverse(old)


def test_both_refuse_short_and_forged_hashes(postsrsd: Postsrsd) -> None:
    address = ours().forward("alice@example.com")
    digest = address[5:9]
    for forged in (
        address.replace(digest, digest[:1], 1),
        address.replace(digest, digest[:3], 1),
        address.replace("alice", "mallory"),
    ):
        assert postsrsd.reverse(forged)[0] == 500, forged
        with pytest.raises(SrsError, match=r"shorter|does not verify"):
            ours().reverse(forged)


# --- Postfix's own socketmap client -------------------------------------------------------


async def postmap(config_dir: Path, table: str, *keys: str) -> tuple[int, str]:
    """Query through Postfix's dict_sockmap client; several keys share one connection."""
    args = [str(POSTMAP), "-c", str(config_dir), "-q", "-" if len(keys) > 1 else keys[0], table]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    feed = "".join(f"{key}\n" for key in keys).encode() if len(keys) > 1 else b""
    out, err = await asyncio.wait_for(proc.communicate(feed), 30)
    assert b"fatal" not in err, err
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def test_postfix_socketmap_client_speaks_with_our_server(tmp_path: Path) -> None:
    if POSTMAP is None:
        pytest.skip("Postfix's postmap is not installed (apt-get install postfix)")
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "main.cf").write_text("")  # Postfix's defaults; nothing of the machine's
    sock = tmp_path / "srs.sock"
    reverse = f"socketmap:unix:{sock}:reverse"
    forward = f"socketmap:unix:{sock}:forward"
    srs = ours()
    signed = srs.forward("Alice.Smith@Example.COM")
    forged = signed.replace("Alice", "Mallory")

    async def scenario() -> None:
        ready = asyncio.Event()
        stop = asyncio.Event()
        server = asyncio.create_task(serve_srs(srs, f"unix:{sock}", ready=ready.set, stop=stop))
        await asyncio.wait_for(ready.wait(), 5)
        try:
            assert await postmap(config_dir, reverse, signed) == (0, "Alice.Smith@Example.COM\n")
            assert await postmap(config_dir, reverse, forged) == (1, "")
            assert await postmap(config_dir, reverse, "postmaster@srs.test") == (1, "")
            assert await postmap(config_dir, forward, "alice@example.com") == (
                0,
                srs.forward("alice@example.com") + "\n",
            )
            assert await postmap(config_dir, forward, f"carol@{EXCLUDED}") == (1, "")
            # Many lookups on one connection: only the found ones are printed.
            senders = [f"user{i}@example.com" for i in range(200)]
            keys = [srs.forward(s) for s in senders] + [forged]
            code, out = await postmap(config_dir, reverse, *keys)
            assert code == 0
            assert out.splitlines() == [f"{k}\t{s}" for k, s in zip(keys, senders, strict=False)]
        finally:
            stop.set()
            await asyncio.wait_for(server, 5)

    asyncio.run(scenario())
