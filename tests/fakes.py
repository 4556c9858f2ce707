"""A scripted fake of the LLM upstream, speaking the real wire formats.

OpenAI chat/completions/responses and Anthropic messages, streamed or not,
with the chunk splits and faults a test asks for. Only the upstream is
faked: the gateway under test is the real one, over real loopback HTTP.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Script:
    text: str = "Hello! How can I help you today?"
    # streamed pieces; default: the text in pieces of ``chunk`` characters
    chunks: list[str] | None = None
    chunk: int = 4
    # "", "500", "refuse", "malformed-json", "bad-sse", "no-terminator", "hang",
    # "stall-mid-stream", "html", "drop-mid-stream"
    fault: str = ""
    delay: float = 0.0
    n: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    tool_call: bool = False
    # the answer's text from the request body, when the text depends on the prompt
    reply: Callable[[dict[str, Any]], str] | None = None

    def pieces(self) -> list[str]:
        if self.chunks is not None:
            return self.chunks
        return [self.text[i : i + self.chunk] for i in range(0, len(self.text), self.chunk)]


class FakeUpstream:
    def __init__(self) -> None:
        self.script = Script()
        self.requests: list[dict[str, Any]] = []
        self.cancelled = 0
        self.finished_streams = 0
        self.name = "primary"
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/responses", self.responses)
        self.app.router.add_post("/v1/messages", self.messages)
        self.app.router.add_post("/rag/answer", self.rag)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/embeddings", self.embeddings)

    # -- helpers -------------------------------------------------------------
    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.requests.append(
            {"path": request.path, "body": body, "headers": request.headers.copy()}
        )
        if self.script.delay:
            await asyncio.sleep(self.script.delay)
        return body

    def _fault_response(self) -> web.Response | None:
        fault = self.script.fault
        if fault == "500":
            return web.json_response(
                {"error": {"message": "boom", "type": "server_error"}}, status=500
            )
        if fault == "malformed-json":
            return web.Response(text='{"id": "x", "choices": [', content_type="application/json")
        if fault == "html":
            return web.Response(text="<html>bad gateway</html>", content_type="text/html")
        return None

    async def _stream(
        self, request: web.Request, events: list[bytes], terminator: bytes | None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "content-type": "text/event-stream",
                "x-request-id": "req_fake",
                **self.script.headers,
            }
        )
        await resp.prepare(request)
        fault = self.script.fault
        try:
            if fault == "hang":
                await asyncio.sleep(3600)
            for i, data in enumerate(events):
                if fault == "bad-sse" and i == len(events) // 2:
                    await resp.write(b"data: {not json\n\n")
                    return resp
                if fault == "stall-mid-stream" and i == len(events) // 2:
                    await asyncio.sleep(3600)
                if fault == "drop-mid-stream" and i == len(events) // 2:
                    request.transport.close()
                    return resp
                await resp.write(data)
                await asyncio.sleep(self.script.delay)
            if fault != "no-terminator" and terminator:
                await resp.write(terminator)
            self.finished_streams += 1
            await resp.write_eof()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        except ConnectionResetError:
            self.cancelled += 1
        return resp

    @staticmethod
    def _sse(obj: Any, event: str | None = None) -> bytes:
        head = f"event: {event}\n" if event else ""
        return f"{head}data: {json.dumps(obj)}\n\n".encode()

    # -- OpenAI chat -------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        bad = self._fault_response()
        if bad is not None:
            return bad
        s = self.script
        n = body.get("n", 1)
        base = {
            "id": "chatcmpl-fake",
            "created": int(time.time()),
            "model": body.get("model", "gpt-test"),
            "system_fingerprint": "fp_fake",
        }
        if not body.get("stream"):
            if s.fault == "hang":
                await asyncio.sleep(3600)
            text = s.reply(body) if s.reply is not None else s.text
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            if s.tool_call:
                message["tool_calls"] = [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                    }
                ]
            choices = [
                {
                    "index": i,
                    "message": dict(message),
                    "logprobs": None,
                    "finish_reason": "tool_calls" if s.tool_call else "stop",
                }
                for i in range(n)
            ]
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": choices,
                    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
                    **s.extra,
                },
                headers={"x-request-id": "req_fake", **s.headers},
            )
        chunk = {**base, "object": "chat.completion.chunk"}
        events = []
        for i in range(n):
            events.append(
                self._sse(
                    {
                        **chunk,
                        "choices": [
                            {
                                "index": i,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    }
                )
            )
        for piece in s.pieces():
            for i in range(n):
                events.append(
                    self._sse(
                        {
                            **chunk,
                            "choices": [
                                {
                                    "index": i,
                                    "delta": {"content": piece},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ],
                        }
                    )
                )
        if s.tool_call:
            events.append(
                self._sse(
                    {
                        **chunk,
                        "choices": [
                            {
                                "index": 0,
                                "delta": {
                                    "tool_calls": [
                                        {
                                            "index": 0,
                                            "id": "call_1",
                                            "type": "function",
                                            "function": {
                                                "name": "lookup",
                                                "arguments": '{"q": "x"}',
                                            },
                                        }
                                    ]
                                },
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    }
                )
            )
        for i in range(n):
            events.append(
                self._sse(
                    {
                        **chunk,
                        "choices": [
                            {
                                "index": i,
                                "delta": {},
                                "logprobs": None,
                                "finish_reason": "tool_calls" if s.tool_call else "stop",
                            }
                        ],
                    }
                )
            )
        if s.extra:
            events.append(self._sse({**chunk, "choices": [], **s.extra}))
        return await self._stream(request, events, b"data: [DONE]\n\n")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        bad = self._fault_response()
        if bad is not None:
            return bad
        s = self.script
        base = {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "gpt-test"),
        }
        if not body.get("stream"):
            return web.json_response(
                {
                    **base,
                    "choices": [
                        {"index": 0, "text": s.text, "logprobs": None, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
        events = [
            self._sse(
                {
                    **base,
                    "choices": [{"index": 0, "text": p, "logprobs": None, "finish_reason": None}],
                }
            )
            for p in s.pieces()
        ]
        events.append(
            self._sse(
                {
                    **base,
                    "choices": [
                        {"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}
                    ],
                }
            )
        )
        return await self._stream(request, events, b"data: [DONE]\n\n")

    # -- OpenAI responses ------------------------------------------------------------
    def _response_obj(self, body: dict, text: str, status: str) -> dict:
        return {
            "id": "resp_fake",
            "object": "response",
            "created_at": int(time.time()),
            "model": body.get("model", "gpt-test"),
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "metadata": {},
            "output": []
            if status == "in_progress"
            else [
                {
                    "type": "message",
                    "id": "msg_fake",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "usage": {
                "input_tokens": 3,
                "output_tokens": 5,
                "total_tokens": 8,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        bad = self._fault_response()
        if bad is not None:
            return bad
        s = self.script
        if not body.get("stream"):
            return web.json_response(self._response_obj(body, s.text, "completed"))
        seq = iter(range(10_000))
        ev = []
        ev.append(
            self._sse(
                {
                    "type": "response.created",
                    "sequence_number": next(seq),
                    "response": self._response_obj(body, "", "in_progress"),
                },
                "response.created",
            )
        )
        item = {
            "type": "message",
            "id": "msg_fake",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        ev.append(
            self._sse(
                {
                    "type": "response.output_item.added",
                    "sequence_number": next(seq),
                    "output_index": 0,
                    "item": item,
                },
                "response.output_item.added",
            )
        )
        ev.append(
            self._sse(
                {
                    "type": "response.content_part.added",
                    "sequence_number": next(seq),
                    "item_id": "msg_fake",
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                },
                "response.content_part.added",
            )
        )
        for piece in s.pieces():
            ev.append(
                self._sse(
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": next(seq),
                        "item_id": "msg_fake",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": piece,
                        "logprobs": [],
                    },
                    "response.output_text.delta",
                )
            )
        ev.append(
            self._sse(
                {
                    "type": "response.output_text.done",
                    "sequence_number": next(seq),
                    "item_id": "msg_fake",
                    "output_index": 0,
                    "content_index": 0,
                    "text": s.text,
                    "logprobs": [],
                },
                "response.output_text.done",
            )
        )
        ev.append(
            self._sse(
                {
                    "type": "response.content_part.done",
                    "sequence_number": next(seq),
                    "item_id": "msg_fake",
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": s.text, "annotations": []},
                },
                "response.content_part.done",
            )
        )
        done_item = {
            "type": "message",
            "id": "msg_fake",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": s.text, "annotations": []}],
        }
        ev.append(
            self._sse(
                {
                    "type": "response.output_item.done",
                    "sequence_number": next(seq),
                    "output_index": 0,
                    "item": done_item,
                },
                "response.output_item.done",
            )
        )
        final = self._sse(
            {
                "type": "response.completed",
                "sequence_number": next(seq),
                "response": self._response_obj(body, s.text, "completed"),
            },
            "response.completed",
        )
        return await self._stream(request, ev, final)

    # -- Anthropic messages ----------------------------------------------------------
    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        bad = self._fault_response()
        if bad is not None:
            return bad
        s = self.script
        msg = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-test"),
            "stop_sequence": None,
            "usage": {"input_tokens": 4, "output_tokens": 6},
        }
        if not body.get("stream"):
            return web.json_response(
                {**msg, "content": [{"type": "text", "text": s.text}], "stop_reason": "end_turn"}
            )
        ev = [
            self._sse(
                {
                    "type": "message_start",
                    "message": {
                        **msg,
                        "content": [],
                        "stop_reason": None,
                        "usage": {"input_tokens": 4, "output_tokens": 1},
                    },
                },
                "message_start",
            )
        ]
        ev.append(
            self._sse(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
                "content_block_start",
            )
        )
        ev.append(self._sse({"type": "ping"}, "ping"))
        for piece in s.pieces():
            ev.append(
                self._sse(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                    "content_block_delta",
                )
            )
        ev.append(self._sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
        ev.append(
            self._sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 6},
                },
                "message_delta",
            )
        )
        return await self._stream(request, ev, self._sse({"type": "message_stop"}, "message_stop"))

    # -- rag-json ----------------------------------------------------------------------
    async def rag(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        s = self.script
        sources = s.extra.get("sources", [])
        if not body.get("stream"):
            return web.json_response({"result": {"answer": s.text, "documents": sources}})
        ev = [self._sse({"result": {"documents": sources}})]
        ev.extend(self._sse({"delta": p}) for p in s.pieces())
        return await self._stream(request, ev, b"data: [DONE]\n\n")

    # -- passthrough ------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        self.requests.append({"path": request.path, "headers": request.headers.copy()})
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": "gpt-test", "object": "model", "created": 0, "owned_by": self.name}
                ],
            }
        )

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        return web.json_response(
            {
                "object": "list",
                "model": body.get("model"),
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )
