"""The relay endpoint's protocol, spoken to by a real client on loopback and a unix socket.

`deliver` is scripted here; what the relay does with a transaction (SRS, the smarthost
pool) is tested against the lab in tests/integration/test_route.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from rescue.route.relayserver import Answer, RelayServer, Transaction

Script = Callable[[Transaction], Awaitable[Answer]]


class Client:
    """A line-by-line SMTP/LMTP client: what Postfix's client sends, byte for byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> list[str]:
        lines = []
        while True:
            raw = await self.reader.readline()
            if not raw:
                raise ConnectionError(f"closed after {lines}")
            line = raw.decode().rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    async def send(self, *commands: str | bytes) -> list[list[str]]:
        """Pipelined: all commands in one write, then one reply for each."""
        data = b"".join(c if isinstance(c, bytes) else c.encode() + b"\r\n" for c in commands)
        self.writer.write(data)
        await self.writer.drain()
        return [await self.reply() for _ in commands]


async def serve(
    listen: tuple[str, str, int], deliver: Script
) -> tuple[RelayServer, Callable[[], Awaitable[Client]]]:
    server = RelayServer(deliver, hostname="relay.test")
    await server.start(listen)

    async def connect() -> Client:
        if listen[0] == "unix":
            reader, writer = await asyncio.open_unix_connection(listen[1])
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        client = Client(reader, writer)
        assert (await client.reply())[0].startswith("220 relay.test")
        return client

    return server, connect


def recording(answer: Answer, into: list[Transaction]) -> Script:
    async def deliver(tx: Transaction) -> Answer:
        into.append(tx)
        return answer

    return deliver


def test_smtp_transaction_reaches_deliver_as_sent() -> None:
    got: list[Transaction] = []

    async def scenario() -> None:
        server, connect = await serve(
            ("inet", "127.0.0.1", 0), recording(Answer(250, "2.0.0 Ok: relayed"), got)
        )
        try:
            c = await connect()
            [ehlo] = await c.send("EHLO postfix.test")
            assert {"250-PIPELINING", "250-DSN", "250-8BITMIME", "250-SMTPUTF8"} <= set(ehlo)
            replies = await c.send(
                "MAIL FROM:<> SIZE=40 BODY=8BITMIME RET=HDRS ENVID=env+2B1",
                "RCPT TO:<bob@kunde1.de> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+40x@kunde1.de",
                'RCPT TO:<"john doe"@kunde1.de>',
                "DATA",
            )
            assert [r[0][:3] for r in replies] == ["250", "250", "250", "354"]
            [done] = await c.send(b"Subject: x\r\n\r\n..dot\r\nbare\rcr\r\n\xc3\xa4\r\n.\r\n")
            assert done == ["250 2.0.0 Ok: relayed"]
            assert (await c.send("QUIT"))[0][0].startswith("221")
        finally:
            await server.close()

    asyncio.run(scenario())
    [tx] = got
    assert tx.sender == ""
    assert tx.params == {"SIZE": "40", "BODY": "8BITMIME", "RET": "HDRS", "ENVID": "env+1"}
    assert tx.recipients == [
        ("bob@kunde1.de", {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;Bob@x@kunde1.de"}),
        ("john doe@kunde1.de", {}),
    ]
    assert tx.data == b"Subject: x\r\n\r\n.dot\r\nbare\rcr\r\n\xc3\xa4\r\n"


def test_lmtp_on_a_unix_socket_answers_once_per_recipient(tmp_path: Path) -> None:
    got: list[Transaction] = []
    sock = tmp_path / "private" / "relay"

    async def scenario() -> list[list[str]]:
        answer = Answer(451, "4.4.0 queue-rescue relay: relay1: 421 busy")
        server, connect = await serve(("unix", str(sock), 0), recording(answer, got))
        try:
            assert oct(sock.stat().st_mode & 0o777) == "0o660"
            c = await connect()
            [helo] = await c.send("EHLO postfix.test")
            assert helo[0].startswith("500") or helo[0].startswith("502")
            await c.send("LHLO postfix.test")
            await c.send("MAIL FROM:<a@example.com>", "RCPT TO:<x@kunde1.de>")
            await c.send("RCPT TO:<y@kunde1.de>", "DATA")
            c.writer.write(b"Subject: y\r\n\r\nhi\r\n.\r\n")
            return [await c.reply(), await c.reply()]
        finally:
            await server.close()

    replies = asyncio.run(scenario())
    assert replies == [["451 4.4.0 queue-rescue relay: relay1: 421 busy"]] * 2
    assert [a for a, _ in got[0].recipients] == ["x@kunde1.de", "y@kunde1.de"]


@pytest.mark.parametrize(
    ("commands", "code"),
    [
        # About a transaction: always 4xx, so that Postfix keeps the mail.
        (["MAIL FROM:<a@example.com>"], "451 4.5.1"),  # no EHLO yet
        (["EHLO x", "RCPT TO:<b@kunde1.de>"], "451 4.5.1"),
        (["EHLO x", "MAIL FROM:<a@example.com> AUTH=<>"], "451 4.5.4"),
        (["EHLO x", "MAIL FROM:<a@example.com> SIZE=99999999999"], "452 4.3.4"),
        (["EHLO x", "MAIL FROM:<ä@example.com>"], "451 4.6.7"),  # UTF-8 without SMTPUTF8
        (["EHLO x", "MAIL FROM:a@example.com"], "451 4.1.7"),
        (["EHLO x", "MAIL FROM:<a@example.com>", "RCPT TO:<postmaster>"], "451 4.1.3"),
        (["EHLO x", "MAIL FROM:<a@example.com>", "DATA"], "451 4.5.1"),
        # Not Postfix's words at all.
        (["EHLO x", "STARTTLS"], "502"),
        (["EHLO x", "AUTH PLAIN AGFAAGI="], "502"),
    ],
)
def test_what_postfix_would_not_send_is_refused(commands: list[str], code: str) -> None:
    async def scenario() -> str:
        async def never(tx: Transaction) -> Answer:
            raise AssertionError("nothing may reach deliver")

        server, connect = await serve(("inet", "127.0.0.1", 0), never)
        try:
            c = await connect()
            replies = await c.send(*commands)
            return replies[-1][-1]
        finally:
            await server.close()

    assert asyncio.run(scenario()).startswith(code)


def test_close_waits_for_a_transaction_in_flight_and_cuts_idle_sessions() -> None:
    async def scenario() -> list[str]:
        release = asyncio.Event()
        entered = asyncio.Event()

        async def slow(tx: Transaction) -> Answer:
            entered.set()
            await release.wait()
            return Answer(250, "2.0.0 Ok")

        server, connect = await serve(("inet", "127.0.0.1", 0), slow)
        busy = await connect()
        idle = await connect()
        await busy.send("EHLO x", "MAIL FROM:<a@example.com>", "RCPT TO:<b@kunde1.de>", "DATA")
        busy.writer.write(b"x\r\n.\r\n")
        await busy.writer.drain()
        await entered.wait()
        closing = asyncio.create_task(server.close(grace=30))
        # The idle session is cut at once; the busy one is waited for.
        assert await idle.reader.read() == b""
        release.set()
        answer = await busy.reply()
        await closing
        return answer

    assert asyncio.run(scenario()) == ["250 2.0.0 Ok"]


def test_commands_pipelined_after_the_final_dot_are_answered_after_it() -> None:
    """Postfix may send QUIT (or the next MAIL) in the same write as the final dot."""
    got: list[Transaction] = []

    async def scenario() -> list[list[str]]:
        server, connect = await serve(
            ("inet", "127.0.0.1", 0), recording(Answer(250, "2.0.0 Ok: relayed"), got)
        )
        try:
            c = await connect()
            await c.send("EHLO postfix.test")
            await c.send("MAIL FROM:<a@example.com>", "RCPT TO:<b@kunde1.de>", "DATA")
            first = [*await c.send(b"one\r\n.\r\nMAIL FROM:<c@example.com>\r\n"), await c.reply()]
            second = await c.send("RCPT TO:<d@kunde2.de>", "DATA")
            c.writer.write(b".\r\nQUIT\r\n")
            return [*first, *second, await c.reply(), await c.reply()]
        finally:
            await server.close()

    replies = asyncio.run(scenario())
    assert [r[0][:3] for r in replies] == ["250", "250", "250", "354", "250", "221"]
    assert [(tx.sender, tx.data) for tx in got] == [
        ("a@example.com", b"one\r\n"),
        ("c@example.com", b""),
    ]
