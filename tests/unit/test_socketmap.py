"""The socketmap server: netstring framing and answers without sockets, then the real server."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rescue.postfix.socketmap import (
    MAX_REQUEST,
    InetAddress,
    NetstringDecoder,
    ProtocolError,
    Reply,
    UnixAddress,
    encode_netstring,
    parse_listen,
)
from rescue.srs.bouncemap import answer, serve_srs
from rescue.srs.rewriter import SrsRewriter

SECRET = "socketmap-test-secret-0123456789"


def make_rewriter() -> SrsRewriter:
    return SrsRewriter(domain="srs.test", secrets=[SECRET], exclude_domains=["partner.test"])


REWRITER = make_rewriter()
SIGNED = REWRITER.forward("alice@example.com")


# --- netstrings ---------------------------------------------------------------------------


def decode_all(data: bytes, limit: int = MAX_REQUEST) -> list[bytes]:
    decoder = NetstringDecoder(limit)
    decoder.feed(data)
    out = []
    while (payload := decoder.next()) is not None:
        out.append(payload)
    return out


def test_netstring_round_trip() -> None:
    assert encode_netstring(b"forward a@b") == b"11:forward a@b,"
    assert decode_all(b"11:forward a@b,0:,3:x y,") == [b"forward a@b", b"", b"x y"]


def test_netstring_arriving_byte_by_byte() -> None:
    decoder = NetstringDecoder()
    data = encode_netstring(b"reverse " + SIGNED.encode())
    for i, byte in enumerate(data):
        assert decoder.next() is None, i
        decoder.feed(bytes([byte]))
    assert decoder.next() == b"reverse " + SIGNED.encode()
    assert decoder.next() is None


def test_netstring_payload_may_hold_colons_and_commas() -> None:
    assert decode_all(b"7:a:b,c:d,") == [b"a:b,c:d"]


@pytest.mark.parametrize(
    "data",
    [
        b":abc,",  # no length
        b"x:abc,",
        b"3;abc,",
        b"3:abcd",  # no comma where it belongs
        b"03:abc,",  # leading zero (djb's netstrings.txt)
        b"-1:,",
        b" 3:abc,",
    ],
)
def test_malformed_netstrings(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        decode_all(data)


@pytest.mark.parametrize("data", [b"10001:", b"99999999999999999999", b"123456"])
def test_oversized_requests_are_refused_before_their_data_arrives(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="longer than 10000"):
        decode_all(data)


def test_request_at_the_limit_is_fine() -> None:
    payload = b"x" * MAX_REQUEST
    assert decode_all(encode_netstring(payload)) == [payload]


# --- answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "reply"),
    [
        (b"reverse " + SIGNED.encode(), Reply("OK", "alice@example.com")),
        (b"reverse " + SIGNED.upper().encode(), Reply("OK", "ALICE@EXAMPLE.COM")),
        (b"forward alice@example.com", Reply("OK", SIGNED)),
        # Needs no rewriting: NOTFOUND, so Postfix keeps the address as it is.
        (b"forward ", Reply("NOTFOUND")),
        (b"forward bob@srs.test", Reply("NOTFOUND")),
        (b"forward bob@partner.test", Reply("NOTFOUND")),
        # Cannot be rewritten safely: kept as well.
        (b"forward john doe@example.com", Reply("NOTFOUND")),
        # Forged, expired, malformed, not ours: never a rewrite.
        (b"reverse " + SIGNED.replace("alice", "mallory").encode(), Reply("NOTFOUND")),
        (b"reverse " + SIGNED.replace("srs.test", "other.test").encode(), Reply("NOTFOUND")),
        (b"reverse postmaster@srs.test", Reply("NOTFOUND")),
        (b"reverse @srs.test", Reply("NOTFOUND")),
        (b"reverse ", Reply("NOTFOUND")),
        (b"reverse SRS0=\xff\xfe=JR=x=y@srs.test", Reply("NOTFOUND")),
    ],
)
def test_answers(request_: bytes, reply: Reply) -> None:
    assert answer(REWRITER, request_) == reply


@pytest.mark.parametrize("request_", [b"", b"forward", b"lookup a@b", b"Forward a@b"])
def test_unknown_maps_are_a_permanent_error(request_: bytes) -> None:
    assert answer(REWRITER, request_).status == "PERM"


def test_a_bug_becomes_temp_so_postfix_defers_instead_of_losing_mail() -> None:
    class Broken(SrsRewriter):
        def reverse(self, address: str) -> str:
            raise RuntimeError("boom")

    broken = Broken(domain="srs.test", secrets=[SECRET])
    assert answer(broken, b"reverse " + SIGNED.encode()) == Reply("TEMP", "internal error")


def test_reply_encoding() -> None:
    assert Reply("NOTFOUND").encode() == b"9:NOTFOUND ,"
    assert Reply("OK", "a@b").encode() == b"6:OK a@b,"


# --- listen addresses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "address"),
    [
        ("unix:/run/queue-rescue/srs.sock", UnixAddress(Path("/run/queue-rescue/srs.sock"))),
        ("inet:127.0.0.1:10003", InetAddress("127.0.0.1", 10003)),
        ("inet:localhost:1", InetAddress("localhost", 1)),
        ("inet:[::1]:10003", InetAddress("::1", 10003)),
    ],
)
def test_parse_listen(spec: str, address: object) -> None:
    assert parse_listen(spec) == address


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "/run/srs.sock",
        "unix:",
        "inet:127.0.0.1",
        "inet::10003",
        "inet:127.0.0.1:0",
        "inet:127.0.0.1:65536",
        "inet:127.0.0.1:http",
        "tcp:127.0.0.1:10003",
        "unix:/" + "x" * 200,
    ],
)
def test_bad_listen_specs(spec: str) -> None:
    with pytest.raises(ValueError, match=r"unix:|inet:|at most 107"):
        parse_listen(spec)


# --- the real server on a unix socket -----------------------------------------------------


@contextlib.asynccontextmanager
async def running(listen: str, **kwargs: object) -> AsyncIterator[asyncio.Task[None]]:
    ready = asyncio.Event()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve_srs(make_rewriter(), listen, ready=ready.set, stop=stop, **kwargs)  # type: ignore[arg-type]
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        await task  # raises the reason it could not start
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


class Client:
    """A socketmap client as Postfix's: one connection, many lookups."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = NetstringDecoder(limit=100_000)

    @classmethod
    async def connect(cls, path: Path) -> Client:
        return cls(*await asyncio.open_unix_connection(path))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> bytes | None:
        """The next reply, or None at end of stream."""
        while (payload := self.decoder.next()) is None:
            data = await asyncio.wait_for(self.reader.read(4096), 5)
            if not data:
                return None
            self.decoder.feed(data)
        return payload

    async def lookup(self, name: str, key: str) -> bytes | None:
        await self.send(encode_netstring(f"{name} {key}".encode()))
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_persistent_connection_with_pipelined_requests(tmp_path: Path) -> None:
    sock = tmp_path / "srs.sock"

    async def scenario() -> None:
        async with running(f"unix:{sock}"):
            client = await Client.connect(sock)
            requests = [f"reverse {SIGNED}", "forward alice@example.com", "reverse x@srs.test"]
            await client.send(b"".join(encode_netstring(r.encode()) for r in requests * 50))
            for _ in range(50):
                assert await client.reply() == b"OK alice@example.com"
                assert await client.reply() == b"OK " + SIGNED.encode()
                assert await client.reply() == b"NOTFOUND "
            assert await client.lookup("reverse", SIGNED) == b"OK alice@example.com"
            await client.close()

    run(scenario())


def test_many_concurrent_clients(tmp_path: Path) -> None:
    sock = tmp_path / "srs.sock"
    senders = [f"user{i}@example{i % 7}.test" for i in range(200)]
    expected = {s: REWRITER.forward(s) for s in senders}

    async def one_client(sender: str) -> None:
        client = await Client.connect(sock)
        for _ in range(10):
            assert await client.lookup("forward", sender) == b"OK " + expected[sender].encode()
            assert await client.lookup("reverse", expected[sender]) == b"OK " + sender.encode()
            assert await client.lookup("reverse", "forged" + expected[sender]) == b"NOTFOUND "
        await client.close()

    async def scenario() -> None:
        async with running(f"unix:{sock}"):
            await asyncio.gather(*(one_client(s) for s in senders))

    run(scenario())


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"hello world\n", b"malformed"),
        (b"3:abcd,", b"malformed"),  # declared 3, no comma after them
        (b"10001:", b"longer than 10000 bytes"),
        (b"999999999999:", b"longer than 10000 bytes"),
    ],
)
def test_bad_client_gets_perm_and_is_closed_others_carry_on(
    tmp_path: Path, garbage: bytes, reason: bytes
) -> None:
    sock = tmp_path / "srs.sock"

    async def scenario() -> None:
        async with running(f"unix:{sock}"):
            good = await Client.connect(sock)
            assert await good.lookup("reverse", SIGNED) == b"OK alice@example.com"
            bad = await Client.connect(sock)
            # A first good request on the same connection is answered as usual.
            await bad.send(encode_netstring(f"reverse {SIGNED}".encode()) + garbage)
            assert await bad.reply() == b"OK alice@example.com"
            perm = await bad.reply()
            assert perm is not None and perm.startswith(b"PERM ") and reason in perm
            assert await bad.reply() is None  # closed
            await bad.close()
            assert await good.lookup("reverse", SIGNED) == b"OK alice@example.com"
            late = await Client.connect(sock)
            assert await late.lookup("forward", "") == b"NOTFOUND "
            await good.close()
            await late.close()

    run(scenario())


def test_clients_that_vanish_midway_do_not_hurt(tmp_path: Path) -> None:
    sock = tmp_path / "srs.sock"

    async def scenario() -> None:
        async with running(f"unix:{sock}"):
            for partial in (b"", b"12", b"30:reverse SRS0", b"11:forward a@b,11:forw"):
                client = await Client.connect(sock)
                await client.send(partial)
                client.writer.transport.abort()
            # One that sends lookups and never reads the answers.
            rude = await Client.connect(sock)
            await rude.send(encode_netstring(b"forward alice@example.com") * 1000)
            rude.writer.transport.abort()
            client = await Client.connect(sock)
            assert await client.lookup("reverse", SIGNED) == b"OK alice@example.com"
            await client.close()

    run(scenario())


def test_idle_connections_are_closed(tmp_path: Path) -> None:
    sock = tmp_path / "srs.sock"

    async def scenario() -> None:
        async with running(f"unix:{sock}", idle_timeout=0.2):
            client = await Client.connect(sock)
            # Read before the lookup: the server's idle time starts after it answered.
            started = time.monotonic()
            assert await client.lookup("reverse", SIGNED) == b"OK alice@example.com"
            # The end of the stream comes (reply() waits up to 5 s for it), not before
            # the idle timeout.
            assert await client.reply() is None
            assert time.monotonic() - started >= 0.2
            await client.close()

    run(scenario())


def test_stop_with_clients_connected_removes_the_socket(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sock = tmp_path / "srs.sock"

    async def scenario() -> None:
        async with running(f"unix:{sock}") as task:
            clients = [await Client.connect(sock) for _ in range(5)]
            assert await clients[0].lookup("forward", "a@partner.test") == b"NOTFOUND "
            assert stat.S_ISSOCK(sock.lstat().st_mode)
        assert task.done() and task.exception() is None
        assert not sock.exists()
        for client in clients:
            assert await client.reply() is None
            await client.close()

    run(scenario())
    # Cut sessions end quietly (asyncio 3.11 logs a cancelled stream callback as an error).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(("mode", "expected"), [({}, 0o666), ({"socket_mode": 0o660}, 0o660)])
def test_socket_mode(tmp_path: Path, mode: dict[str, int], expected: int) -> None:
    sock = tmp_path / "srs.sock"

    async def scenario() -> None:
        async with running(f"unix:{sock}", **mode):
            assert stat.S_IMODE(sock.stat().st_mode) == expected

    run(scenario())


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    sock = tmp_path / "srs.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens: what a killed server leaves

    async def scenario() -> None:
        async with running(f"unix:{sock}"):
            client = await Client.connect(sock)
            assert await client.lookup("reverse", SIGNED) == b"OK alice@example.com"
            await client.close()

    run(scenario())


def test_live_socket_is_not_taken_over(tmp_path: Path) -> None:
    sock = tmp_path / "srs.sock"

    async def scenario() -> None:
        async with running(f"unix:{sock}"):
            with pytest.raises(OSError) as info:
                async with running(f"unix:{sock}"):
                    pass
            assert info.value.errno == errno.EADDRINUSE
            # The first server still owns and serves its socket.
            client = await Client.connect(sock)
            assert await client.lookup("reverse", SIGNED) == b"OK alice@example.com"
            await client.close()

    run(scenario())


def test_a_file_in_the_way_is_not_deleted(tmp_path: Path) -> None:
    path = tmp_path / "srs.sock"
    path.write_text("not a socket")

    async def scenario() -> None:
        with pytest.raises(FileExistsError):
            async with running(f"unix:{path}"):
                pass

    run(scenario())
    assert path.read_text() == "not a socket"


def test_inet_listener(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> None:
        async with running(f"inet:127.0.0.1:{port}"):
            client = Client(*await asyncio.open_connection("127.0.0.1", port))
            assert await client.lookup("reverse", SIGNED) == b"OK alice@example.com"
            await client.close()

    run(scenario())
