"""Real applications from PyPI, unchanged, on our loop (and the stdlib's)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from typing import Any

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402


def test_aiohttp_server_client_and_websocket(run: Any) -> None:
    async def main() -> dict[str, Any]:
        async def hello(request: web.Request) -> web.Response:
            body = await request.read()
            loop = asyncio.get_running_loop()
            return web.json_response({"loop": type(loop).__name__, "echo": body.decode(),
                                      "backend": getattr(loop, "backend", "stdlib")})

        async def ws_handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str("ws:" + msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data[::-1])
            return ws

        app = web.Application()
        app.router.add_post("/hello", hello)
        app.router.add_get("/ws", ws_handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        result: dict[str, Any] = {}
        async with aiohttp.ClientSession() as session:
            replies = []
            for i in range(20):
                async with session.post(f"http://127.0.0.1:{port}/hello", data=f"req{i}") as resp:
                    assert resp.status == 200
                    replies.append(await resp.json())
            result["replies"] = replies
            big = os.urandom(1 << 20)
            async with session.ws_connect(f"http://127.0.0.1:{port}/ws") as ws:
                await ws.send_str("ping")
                result["ws_text"] = (await ws.receive()).data
                await ws.send_bytes(big)
                result["ws_binary_ok"] = (await ws.receive()).data == big[::-1]
                await ws.close()
        await runner.cleanup()
        return result

    result = run(main())
    assert [r["echo"] for r in result["replies"]] == [f"req{i}" for i in range(20)]
    assert result["ws_text"] == "ws:ping"
    assert result["ws_binary_ok"] is True


def test_aiohttp_runs_on_our_loop(port_name: str) -> None:
    import iocp_policy

    async def main() -> str:
        async def handler(request: web.Request) -> web.Response:
            return web.Response(text=getattr(asyncio.get_running_loop(), "backend", "?"))

        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{runner.addresses[0][1]}/") as r:
            text = await r.text()
        await runner.cleanup()
        return text

    with asyncio.Runner(loop_factory=lambda: iocp_policy.new_event_loop(backend=port_name)) as r:
        assert r.run(main()) == port_name


APP = textwrap.dedent('''
    import asyncio, json

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        loop = asyncio.get_running_loop()
        payload = json.dumps({"loop": type(loop).__module__ + "." + type(loop).__name__,
                              "backend": getattr(loop, "backend", None), "len": len(body)}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})
''')


@pytest.mark.parametrize("backend", ["io_uring", "emulated"])
def test_uvicorn_serves_asgi_app_on_our_loop(backend: str, tmp_path: Any) -> None:
    pytest.importorskip("uvicorn")
    if backend == "io_uring":
        from iocp_policy import _port_uring

        if _port_uring._uring is None or sys.platform != "linux":
            pytest.skip("io_uring backend not available here")
    (tmp_path / "asgi_app.py").write_text(APP)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {**os.environ, "IOCP_POLICY_BACKEND": backend, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "asgi_app:app", "--loop", "iocp_policy:new_event_loop",
         "--port", str(port), "--log-level", "warning"],
        cwd=tempfile.gettempdir(), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/x", data=b"y" * 100_000, method="POST")
                with urllib.request.urlopen(req, timeout=5) as resp:
                    info = json.loads(resp.read())
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        # keep-alive: several requests on one connection through http.client
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for _ in range(10):
            conn.request("GET", "/")
            assert conn.getresponse().read()
        conn.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert info == {"loop": "iocp_policy._loop.Loop", "backend": backend, "len": 100_000}, out
