"""A small OpenAI- and Anthropic-compatible model simulator for the demo.

It is not a model: it picks a canned answer by keywords in the last user
message and streams it word by word with a steady delay, as a real model
paces its tokens. It lets a newcomer see the gateway work with no API key.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

from aiohttp import web

ANSWERS = {
    "clean": (
        "Tomatoes grow best in full sun with at least six hours of light a day. "
        "Water them deeply twice a week, mulch to keep the soil moist, and stake the "
        "plants early so the stems do not snap once the fruit sets."
    ),
    "secret": (
        "Here is the deployment note you asked for. INTERNAL USE ONLY: the staging "
        "cluster runs on the old certificates until Friday."
    ),
    "story": (
        "Once upon a time a lighthouse keeper kept a careful log of every ship that "
        "passed. Each night she wrote the names, the weather and the state of the sea. "
        "One stormy evening a stranger arrived and asked to borrow her terminal, and "
        "typed the key sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c into the console before "
        "anyone could stop him. The rest of the story is about what happened next."
    ),
    "contact": (
        "You can reach the support desk at help.desk@example.com or call the front "
        "office; the desk answers within one working day."
    ),
}
KEYWORDS = (
    ("history", ("history", "address", "speech")),
    ("secret", ("secret", "internal", "deploy")),
    ("story", ("story", "tale")),
    ("contact", ("contact", "email", "reach")),
)
_TOKEN = re.compile(r"\S+\s*|\s+")


def pick_answer(prompt: str, answers: dict[str, str] = ANSWERS) -> str:
    lowered = prompt.lower()
    for name, words in KEYWORDS:
        if name in answers and any(w in lowered for w in words):
            return answers[name]
    return answers["clean"]


def _prompt(body: dict) -> str:
    messages = body.get("messages") or []
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return str(body.get("prompt") or body.get("input") or "")


@web.middleware
async def _quiet_disconnects(request: web.Request, handler):
    # the gateway hangs up on purpose when it cuts a stream; that is no error here
    try:
        return await handler(request)
    except ConnectionResetError:
        return web.Response(status=499)


class DemoUpstream:
    def __init__(self, pace_ms: float = 15.0, extra_answers: dict[str, str] | None = None):
        self.pace = pace_ms / 1000
        self.answers = {**ANSWERS, **(extra_answers or {})}
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/messages", self.messages)
        self.app.router.add_get("/v1/models", self.models)
        self.app.middlewares.append(_quiet_disconnects)

    async def _tokens(self, text: str):
        for token in _TOKEN.findall(text):
            await asyncio.sleep(self.pace)
            yield token

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
        )
        await resp.prepare(request)
        return resp

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = pick_answer(_prompt(body), self.answers)
        model = body.get("model", "demo-model")
        base = {
            "id": f"chatcmpl-demo{uuid.uuid4().hex[:12]}",
            "created": int(time.time()),
            "model": model,
        }
        words = len(text.split())
        usage = {"prompt_tokens": 12, "completion_tokens": words, "total_tokens": 12 + words}
        if not body.get("stream"):
            await asyncio.sleep(self.pace * words)
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = await self._sse(request)
        chunk = {**base, "object": "chat.completion.chunk"}

        def event(delta: dict, finish: str | None = None) -> bytes:
            obj = {
                **chunk,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            return f"data: {json.dumps(obj)}\n\n".encode()

        await resp.write(event({"role": "assistant", "content": ""}))
        async for token in self._tokens(text):
            await resp.write(event({"content": token}))
        await resp.write(event({}, "stop"))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = pick_answer(_prompt(body), self.answers)
        msg = {
            "id": f"msg_demo{uuid.uuid4().hex[:12]}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "demo-model"),
            "stop_sequence": None,
        }
        if not body.get("stream"):
            await asyncio.sleep(self.pace * len(text.split()))
            return web.json_response(
                {
                    **msg,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": 12, "output_tokens": 40},
                }
            )
        resp = await self._sse(request)

        async def send(kind: str, obj: dict) -> None:
            await resp.write(
                f"event: {kind}\ndata: {json.dumps({'type': kind, **obj})}\n\n".encode()
            )

        await send(
            "message_start",
            {
                "message": {
                    **msg,
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 12, "output_tokens": 1},
                }
            },
        )
        await send(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        )
        async for token in self._tokens(text):
            await send(
                "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": token}}
            )
        await send("content_block_stop", {"index": 0})
        await send(
            "message_delta",
            {
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 40},
            },
        )
        await send("message_stop", {})
        return resp

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": "demo-model", "object": "model", "created": 0, "owned_by": "demo"}],
            }
        )
