"""An upstream that misbehaves on purpose, one way per request.

The client names the misbehaviour in an ``x-hostile`` header, which the
gateway forwards like any other header; without it the upstream answers a
normal chat completion. It runs in the test's process over real loopback
HTTP, while the gateway under test runs as its own process.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct

from aiohttp import web

from tests.gateway_process import free_port

ANSWER = "A perfectly ordinary answer."


def chat_body(text: str = ANSWER) -> dict:
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
    }


def chunk(text: str) -> bytes:
    event = {
        "id": "chatcmpl-hostile",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class HostileUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # per mode: bytes written before the gateway hung up (or the mode finished)
        self.sent: dict[str, int] = {}
        self.hung_up: dict[str, bool] = {}
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(self.app, handler_cancellation=True)

    async def __aenter__(self) -> HostileUpstream:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        asked = await request.json()
        mode = request.headers.get("x-hostile", "")
        handler = getattr(self, "mode_" + mode.replace("-", "_"), None)
        if handler is not None:
            return await handler(request)
        if not asked.get("stream"):
            return web.json_response(chat_body())

        async def parts():
            yield chunk(ANSWER) + b"data: [DONE]\n\n"

        return await self._stream(request, "", parts())

    async def _stream(self, request: web.Request, mode: str, parts) -> web.StreamResponse:
        """Write ``parts`` (an async iterator of bytes) as an event stream, counting bytes."""
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        self.sent[mode] = 0
        self.hung_up[mode] = False
        try:
            async for data in parts:
                await resp.write(data)
                self.sent[mode] += len(data)
            await resp.write_eof()
        except ConnectionError:
            self.hung_up[mode] = True
        except asyncio.CancelledError:
            self.hung_up[mode] = True
            raise
        return resp

    # -- the modes -----------------------------------------------------------------
    async def mode_garbage(self, request: web.Request) -> web.Response:
        return web.Response(body=os.urandom(4096), content_type="application/json")

    async def mode_wrong_shape(self, request: web.Request) -> web.Response:
        body = chat_body()
        body["choices"] = {"0": body["choices"][0]}
        return web.json_response(body)

    async def mode_huge_body(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        await resp.prepare(request)
        self.sent["huge-body"] = 0
        self.hung_up["huge-body"] = False
        piece = b'{"pad": "' + b"x" * 65536
        try:
            for _ in range(1600):  # 100 MiB
                await resp.write(piece)
                self.sent["huge-body"] += len(piece)
        except ConnectionError:
            self.hung_up["huge-body"] = True
        except asyncio.CancelledError:
            self.hung_up["huge-body"] = True
            raise
        return resp

    async def mode_stall_headers(self, request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def mode_stall_body(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"id": "chatcmpl-hostile", "choices": [')
        await asyncio.sleep(3600)
        return resp

    async def mode_garbage_stream(self, request: web.Request) -> web.StreamResponse:
        async def parts():
            yield b"data: " + bytes([0xFF, 0xFE, 0xFD]) * 100 + b"\n\n"

        return await self._stream(request, "garbage-stream", parts())

    async def mode_huge_event(self, request: web.Request) -> web.StreamResponse:
        """100 MiB of ``data:`` lines that never end their event."""
        line = b"data: " + b"y" * 1018 + b"\n"

        async def parts():
            block = line * 64
            for _ in range(100 * 1024 * 1024 // len(block)):
                yield block

        return await self._stream(request, "huge-event", parts())

    async def mode_endless(self, request: web.Request) -> web.StreamResponse:
        """Valid chunks, forever, a little at a time."""

        async def parts():
            while True:
                yield chunk("and on ")
                await asyncio.sleep(0.01)

        return await self._stream(request, "endless", parts())

    async def mode_fast_endless(self, request: web.Request) -> web.StreamResponse:
        """Valid chunks as fast as the gateway takes them (for a client that stops reading)."""
        block = chunk("word " * 200) * 16

        async def parts():
            while True:
                yield block

        return await self._stream(request, "fast-endless", parts())

    async def mode_reset(self, request: web.Request) -> web.StreamResponse:
        """Half an answer, then a TCP reset."""
        return await self._reset(
            request, "application/json", b'{"id": "chatcmpl-hostile", "choices": ['
        )

    async def mode_reset_stream(self, request: web.Request) -> web.StreamResponse:
        # enough text that the scanned part is released before the reset
        text = b"".join(chunk(f"word {i} ") for i in range(300))
        return await self._reset(request, "text/event-stream", text)

    async def _reset(self, request: web.Request, ctype: str, first: bytes) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": ctype})
        await resp.prepare(request)
        await resp.write(first)
        await asyncio.sleep(0.2)
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        # linger 0: closing sends RST instead of FIN
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        await asyncio.sleep(1)
        return resp
