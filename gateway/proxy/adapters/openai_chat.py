"""OpenAI ``/v1/chat/completions`` and the legacy ``/v1/completions``.

Scanned: each choice's assistant text (``message.content`` as a string, or
the text parts of a content list; ``text`` for legacy completions). Each
choice is its own segment, so ``n>1`` answers are judged one by one and a
block replaces all of them. Tool calls, function calls, refusals and
logprobs pass through unscanned; in streams, logprobs of scanned text are
dropped because they would repeat the text the gateway holds back.
"""

from __future__ import annotations

from typing import Any

from gateway.proxy.adapters.base import (
    Adapter,
    Done,
    End,
    Raw,
    RequestInfo,
    StreamTranslator,
    Text,
    dumps,
    gateway_id,
    last_user_text,
    loads_event,
    now,
    text_of_content,
)
from gateway.proxy.sse import SSEEvent, encode_event
from gateway.records.review import Ticket

_TEMPLATE_KEYS = ("id", "object", "created", "model", "system_fingerprint", "service_tier")


def _n(body: dict[str, Any]) -> int:
    n = body.get("n", 1)
    return n if isinstance(n, int) and n > 0 else 1


class ChatAdapter(Adapter):
    protocol = "openai-chat"

    def request_info(self, body: dict[str, Any]) -> RequestInfo:
        return RequestInfo(
            body,
            model=body.get("model"),
            stream=bool(body.get("stream")),
            query=last_user_text(body.get("messages")),
            n=_n(body),
        )

    def segments(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        out = []
        for pos, choice in enumerate(body.get("choices") or []):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", pos)
            content = (choice.get("message") or {}).get("content")
            if isinstance(content, str):
                out.append((str(index), content))
            elif isinstance(content, list):
                out.append((str(index), text_of_content(content)))
        return out

    def sources(self, body: dict[str, Any]):
        found = super().sources(body)
        for choice in body.get("choices") or []:
            context = ((choice or {}).get("message") or {}).get("context")
            if context is not None:
                found.extend(context, "message.context")
        return found

    object_name = "chat.completion"
    id_prefix = "chatcmpl-gw"

    def with_text(self, choice: dict[str, Any], text: str) -> dict[str, Any]:
        """A copy of ``choice`` whose answer text is ``text``."""
        message = dict(choice.get("message") or {}, content=text)
        return dict(choice, message=message)

    def blocked_choice(self, index: int, message: str) -> dict[str, Any]:
        return {
            "index": index,
            "message": {"role": "assistant", "content": message, "refusal": None},
            "finish_reason": "content_filter",
            "logprobs": None,
        }

    def rebuild(self, body: dict[str, Any], texts: dict[str, str], finish: str | None) -> dict:
        choices = []
        for pos, choice in enumerate(body.get("choices") or []):
            key = str(choice.get("index", pos))
            if key in texts:
                choice = self.with_text(choice, texts[key])
                if finish:
                    choice["finish_reason"] = finish
            choices.append(choice)
        return dict(body, choices=choices)

    def blocked(self, info: RequestInfo, upstream: dict[str, Any] | None, message: str) -> dict:
        base = upstream or {}
        return {
            "id": base.get("id") or gateway_id(self.id_prefix),
            "object": self.object_name,
            "created": base.get("created") or now(),
            "model": base.get("model") or info.model or "unknown",
            "choices": [self.blocked_choice(i, message) for i in range(info.n)],
            "usage": base.get("usage")
            or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    def translator(self, info: RequestInfo) -> StreamTranslator:
        return ChatStream(info)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(
            body, choices=[dict(c, finish_reason="stop") for c in body.get("choices") or []]
        )

    def synthesize(self, info: RequestInfo, texts: dict[str, str]) -> dict[str, Any]:
        # as many choices as the client asked for, or as the held stream had
        n = max([info.n, *[int(k) + 1 for k in texts if k.isdigit()]])
        wide = RequestInfo(info.body, model=info.model, query=info.query, n=n)
        return super().synthesize(wide, texts)

    def stream_answer(self, info: RequestInfo, message: str, decision_id: str) -> bytes:
        translator = self.translator(info)
        return translator.render_text("0", message) + translator.cut(
            ["0"], "content_filter", decision_id
        )


class ChatStream(StreamTranslator):
    object_name = "chat.completion.chunk"

    def __init__(self, info: RequestInfo):
        super().__init__(info)
        self.template: dict[str, Any] = {"id": gateway_id("chatcmpl-gw"), "created": now()}
        self.seen: list[str] = []

    def parse(self, ev: SSEEvent) -> list[Any]:
        if ev.data.strip() == "[DONE]":
            return [Done("[DONE]")]
        obj = loads_event(ev)
        if not isinstance(obj, dict):
            return [Raw(None, obj)]
        for name in ("sources", "citations", "context"):
            if name in obj:
                self.sources.extend(obj[name], name)
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices:
            return [Raw(None, obj)]
        for k in _TEMPLATE_KEYS:
            if k in obj:
                self.template[k] = obj[k]
        items: list[Any] = []
        for choice in choices:
            index = choice.get("index", 0)
            key = str(index)
            if key not in self.seen:
                self.seen.append(key)
            items.extend(self._choice_items(obj, choice, index, key))
        return items

    def _choice_items(self, obj: dict, choice: dict, index: int, key: str) -> list[Any]:
        items: list[Any] = []
        delta = choice.get("delta") or {}
        other = {k: v for k, v in delta.items() if k != "content"}
        if other:
            role_only = set(other) <= {"role", "refusal"} and not other.get("refusal")
            items.append(Raw(key, self._chunk(obj, index, other, None), lead=role_only))
        content = delta.get("content")
        if isinstance(content, str) and content:
            items.append(Text(key, content))
        if choice.get("finish_reason"):
            items.append(End(key, self._chunk(obj, index, {}, choice["finish_reason"])))
        return items

    def _chunk(self, obj: dict, index: int, delta: dict, finish: str | None) -> dict:
        chunk = {k: obj[k] for k in _TEMPLATE_KEYS if k in obj}
        chunk["choices"] = [
            {"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}
        ]
        if obj.get("usage") is not None:
            chunk["usage"] = obj["usage"]
        return chunk

    def _template_chunk(self, choices: list[dict]) -> dict:
        chunk = dict(self.template)
        chunk["object"] = self.object_name
        chunk["choices"] = choices
        return chunk

    def render_text(self, key: str, text: str) -> bytes:
        choice = {
            "index": int(key),
            "delta": {"content": text},
            "finish_reason": None,
            "logprobs": None,
        }
        return encode_event(dumps(self._template_chunk([choice])))

    def cut(
        self, open_keys: list[str], reason: str, decision_id: str, ticket: Ticket | None = None
    ) -> bytes:
        keys = open_keys or self.seen or ["0"]
        out = []
        for key in keys:
            choice = {"index": int(key), "delta": {}, "finish_reason": reason, "logprobs": None}
            out.append(encode_event(dumps(self._template_chunk([choice]))))
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)

    def review_marker(self, ticket: Ticket) -> bytes:
        # an empty ``choices`` chunk, as the usage chunk is: SDKs pass it through
        chunk = {"object": self.object_name, "choices": [], "x_governance": ticket.marker()}
        return encode_event(dumps(chunk))


class CompletionsAdapter(ChatAdapter):
    protocol = "openai-completions"

    def request_info(self, body: dict[str, Any]) -> RequestInfo:
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = "\n".join(p for p in prompt if isinstance(p, str)) or None
        return RequestInfo(
            body,
            model=body.get("model"),
            stream=bool(body.get("stream")),
            query=prompt if isinstance(prompt, str) else None,
            n=_n(body),
        )

    def segments(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        return [
            (str(c.get("index", pos)), c["text"])
            for pos, c in enumerate(body.get("choices") or [])
            if isinstance(c, dict) and isinstance(c.get("text"), str)
        ]

    object_name = "text_completion"
    id_prefix = "cmpl-gw"

    def with_text(self, choice: dict[str, Any], text: str) -> dict[str, Any]:
        return dict(choice, text=text)

    def blocked_choice(self, index: int, message: str) -> dict[str, Any]:
        return {
            "index": index,
            "text": message,
            "finish_reason": "content_filter",
            "logprobs": None,
        }

    def translator(self, info: RequestInfo) -> StreamTranslator:
        return CompletionsStream(info)


class CompletionsStream(ChatStream):
    object_name = "text_completion"

    def _choice_items(self, obj: dict, choice: dict, index: int, key: str) -> list[Any]:
        items: list[Any] = []
        text = choice.get("text")
        if isinstance(text, str) and text:
            items.append(Text(key, text))
        if choice.get("finish_reason"):
            chunk = {k: obj[k] for k in _TEMPLATE_KEYS if k in obj}
            chunk["choices"] = [
                {
                    "index": index,
                    "text": "",
                    "finish_reason": choice["finish_reason"],
                    "logprobs": None,
                }
            ]
            items.append(End(key, chunk))
        return items

    def render_text(self, key: str, text: str) -> bytes:
        choice = {"index": int(key), "text": text, "finish_reason": None, "logprobs": None}
        return encode_event(dumps(self._template_chunk([choice])))

    def cut(
        self, open_keys: list[str], reason: str, decision_id: str, ticket: Ticket | None = None
    ) -> bytes:
        keys = open_keys or self.seen or ["0"]
        out = [
            encode_event(
                dumps(
                    self._template_chunk(
                        [{"index": int(k), "text": "", "finish_reason": reason, "logprobs": None}]
                    )
                )
            )
            for k in keys
        ]
        out.append(b"data: [DONE]\n\n")
        return b"".join(out)
