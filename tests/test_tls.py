"""TLS over our transports (asyncio.sslproto), differential."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from typing import Any

import pytest

# Under Wine, where cryptography does not load, .ci/steps/wine.sh provides a
# stand-in (compat/wine/trustme.py) serving certificates made with openssl.
trustme = pytest.importorskip("trustme", reason="trustme makes the test certificates")


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A CA and a server certificate for localhost/127.0.0.1, made at test time."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    client_ctx = ssl.create_default_context()
    ca = trustme.CA()
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def echo_handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    finally:
        w.close()


def test_tls_echo_and_extra_info(run: Any, tls: Any) -> None:
    server_ctx, client_ctx = tls

    async def main() -> tuple[bool, Any, Any]:
        srv = await asyncio.start_server(echo_handler, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        payload = os.urandom(2 << 20)

        async def send() -> None:
            w.write(payload)
            await w.drain()

        _, got = await asyncio.gather(send(), r.readexactly(len(payload)))
        cipher = w.get_extra_info("cipher")
        cert = w.get_extra_info("peercert")
        assert w.get_extra_info("sslcontext") is client_ctx
        assert w.get_extra_info("ssl_object") is not None
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()
        return got == payload, cipher, cert

    ok, cipher, cert = run(main())
    assert ok and cipher and cert and cert["subject"]


def test_tls_wrong_hostname_fails(run: Any, tls: Any) -> None:
    server_ctx, client_ctx = tls

    async def main() -> None:
        srv = await asyncio.start_server(echo_handler, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="wrong.example")
        srv.close()
        await srv.wait_closed()

    run(main())


def test_start_tls_upgrade(run: Any, tls: Any) -> None:
    server_ctx, client_ctx = tls

    async def main() -> tuple[bytes, bytes]:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            assert await r.readline() == b"STARTTLS\n"
            w.write(b"GO\n")
            await w.drain()
            await w.start_tls(server_ctx)
            line = await r.readline()
            w.write(b"secure:" + line)
            await w.drain()
            w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*srv.sockets[0].getsockname()[:2])
        w.write(b"STARTTLS\n")
        go = await r.readline()
        await w.start_tls(client_ctx, server_hostname="localhost")
        assert w.get_extra_info("ssl_object") is not None
        w.write(b"hello\n")
        reply = await r.readline()
        w.close()
        srv.close()
        await srv.wait_closed()
        return go, reply

    assert run(main()) == (b"GO\n", b"secure:hello\n")


def test_loop_start_tls_checks(run: Any, tls: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
        tr, pr = await loop.create_connection(asyncio.Protocol, *srv.sockets[0].getsockname()[:2])
        with pytest.raises(TypeError, match="sslcontext is expected"):
            await loop.start_tls(tr, pr, object())  # type: ignore[arg-type]
        tr.close()
        srv.close()
        await srv.wait_closed()

    run(main())


def test_tls_unclean_peer_shutdown(run: Any, tls: Any) -> None:
    """The peer drops TCP without a TLS close_notify: the reader sees the
    connection end, and nothing is reported to the loop's exception handler."""
    server_ctx, client_ctx = tls

    async def main() -> tuple[str, list[Any]]:
        loop = asyncio.get_running_loop()
        handled: list[Any] = []
        loop.set_exception_handler(lambda lp, ctx: handled.append(ctx))
        conns: list[asyncio.StreamWriter] = []

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            conns.append(w)
            w.write(b"partial")
            await w.drain()
            # abort() may drop bytes still queued (the ProactorEventLoop's does):
            # wait until the client has them, then drop TCP without close_notify.
            await r.readexactly(3)
            w.transport.abort()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1], ssl=client_ctx,
                                             server_hostname="localhost")
        first = await r.readexactly(7)
        w.write(b"ack")
        try:
            rest = await asyncio.wait_for(r.read(), 10)
            outcome = f"eof:{first!r}:{rest!r}"
        except (ConnectionResetError, ssl.SSLError) as exc:
            outcome = f"error:{type(exc).__name__}"
        w.close()
        srv.close()
        await srv.wait_closed()
        return outcome, handled

    outcome, handled = run(main())
    assert outcome.startswith("eof:b'partial'") or outcome.startswith("error:")
    assert handled == []


def test_tls_handshake_timeout(run: Any, tls: Any) -> None:
    server_ctx, client_ctx = tls

    async def main() -> None:
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        stop = threading.Event()

        def silent_server() -> None:  # accepts and never answers the handshake
            conn, _ = ls.accept()
            stop.wait(10)
            conn.close()

        t = threading.Thread(target=silent_server)
        t.start()
        try:
            with pytest.raises((asyncio.TimeoutError, ConnectionAbortedError)):
                await asyncio.open_connection(*ls.getsockname(), ssl=client_ctx, server_hostname="localhost",
                                              ssl_handshake_timeout=0.2)
        finally:
            stop.set()
            t.join()
            ls.close()

    run(main())


def test_tls_server_with_plain_client_does_not_kill_server(run: Any, tls: Any) -> None:
    server_ctx, client_ctx = tls

    async def main() -> bytes:
        srv = await asyncio.start_server(echo_handler, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        r0, w0 = await asyncio.open_connection("127.0.0.1", port)  # speaks plain text at a TLS server
        w0.write(b"GET / HTTP/1.0\r\n\r\n")
        await r0.read()
        w0.close()
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        w.write(b"still serving")
        got = await r.readexactly(13)
        w.close()
        srv.close()
        await srv.wait_closed()
        return got

    assert run(main()) == b"still serving"


def test_sendfile_over_tls_uses_fallback(run: Any, tls: Any, tmp_path: Any) -> None:
    server_ctx, client_ctx = tls
    content = os.urandom(100_000)
    p = tmp_path / "f"
    p.write_bytes(content)

    async def main() -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            got.set_result(await r.readexactly(len(content)))
            w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1], ssl=client_ctx,
                                             server_hostname="localhost")
        with open(p, "rb") as f:
            sent = await loop.sendfile(w.transport, f)
        data = await got
        w.close()
        srv.close()
        await srv.wait_closed()
        return sent, data

    sent, data = run(main())
    assert sent == len(content) and data == content
