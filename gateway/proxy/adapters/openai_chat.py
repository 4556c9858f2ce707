"""OpenAI ``/v1/chat/completions`` and the legacy ``/v1/completions``.

Scanned: each choice's assistant text (``message.content`` as a string, or
the text parts of a content list; ``text`` for legacy completions). Each
choice is its own segment, so ``n>1`` answers are judged one by one and a
block replaces all of them. Tool calls, function calls, refusals and
logprobs pass through unscanned; in streams, logprobs of scanned text are
dropped because they would repeat the text the gateway holds back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.contract.detector import ImagePart
from gateway.errors import UpstreamMalformed
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
    image_link,
    last_user_text,
    loads_event,
    now,
    text_of_content,
)
from gateway.proxy.adapters.shapes import (
    MAX_CHOICES,
    body_list,
    event_object,
    index_of,
    invalid,
    malformed,
    picked,
    request_flag,
    request_messages,
    request_model,
    request_n,
)
from gateway.proxy.sse import SSEEvent, encode_event
from gateway.records.review import Ticket

_TEMPLATE_KEYS = ("id", "object", "created", "model", "system_fingerprint", "service_tier")


def choices_of(body: dict[str, Any]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Each choice of a whole answer with its position and segment key, checked.

    Two choices with one index would be one segment: the second would go out
    unscanned, so that is malformed too.
    """
    seen: set[str] = set()
    for pos, choice in enumerate(body_list(body, "choices")):
        if type(choice) is not dict:
            raise malformed(f"choices[{pos}]", "an object")
        key = str(index_of(choice.get("index"), f"choices[{pos}].index", pos))
        if key in seen:
            raise UpstreamMalformed(f'upstream sent two choices with "index" {key}')
        seen.add(key)
        yield pos, key, choice


def message_of(choice: dict[str, Any], pos: int) -> dict[str, Any] | None:
    message = choice.get("message")
    if message is not None and type(message) is not dict:
        raise malformed(f"choices[{pos}].message", "an object")
    return message


def content_text(content: Any, name: str) -> str | None:
    """The text of a message ``content``: a string, or the text parts of a list."""
    if content is None or type(content) is str:
        return content
    if type(content) is not list:
        raise malformed(name, "a string or a list of parts")
    for j, part in enumerate(content):
        if type(part) is not dict:
            raise malformed(f"{name}[{j}]", "an object")
        text = part.get("text")
        if text is not None and type(text) is not str:
            raise malformed(f"{name}[{j}].text", "a string")
    return text_of_content(content)


class ChatAdapter(Adapter):
    protocol = "openai-chat"

    def ask(
        self, messages: list[dict[str, Any]], model: str, max_tokens: int
    ) -> tuple[str, dict[str, Any], dict[str, str]]:
        # the model's own limit applies: Chat Completions needs no max_tokens
        return "/v1/chat/completions", {"model": model, "messages": messages}, {}

    def request_info(self, body: dict[str, Any]) -> RequestInfo:
        return RequestInfo(
            body,
            model=request_model(body),
            stream=request_flag(body, "stream"),
            query=last_user_text(request_messages(body)),
            n=request_n(body),
        )

    def segments(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        out = []
        for pos, key, choice in choices_of(body):
            message = message_of(choice, pos)
            if message is None:
                continue
            text = content_text(message.get("content"), f"choices[{pos}].message.content")
            if text is not None:
                out.append((key, text))
        return out

    def images(self, body: dict[str, Any]) -> list[tuple[str, ImagePart]]:
        """Image parts of each message's ``content`` and its ``images`` list (as some
        OpenAI-compatible servers return generated images)."""
        out: list[tuple[str, ImagePart]] = []
        for pos, key, choice in choices_of(body):
            message = message_of(choice, pos)
            if message is None:
                continue
            for field in ("content", "images"):
                parts = message.get(field)
                if type(parts) is not list:
                    continue
                for j, part in enumerate(parts):
                    if type(part) is not dict or part.get("type") != "image_url":
                        continue
                    ref = part.get("image_url")
                    url = ref.get("url") if type(ref) is dict else ref
                    where = f"choices[{pos}].message.{field}[{j}].image_url"
                    image = image_link(url, where)
                    if image is None:
                        raise malformed(where, "an object with a URL string")
                    out.append((f"image.{key}.{field}.{j}", image))
        return out

    def sources(self, body: dict[str, Any]):
        found = super().sources(body)
        for pos, _, choice in choices_of(body):
            message = message_of(choice, pos)
            context = message.get("context") if message is not None else None
            if context is not None:
                found.extend(context, "message.context")
        return found

    object_name = "chat.completion"
    id_prefix = "chatcmpl-gw"

    def with_text(self, choice: dict[str, Any], pos: int, text: str) -> dict[str, Any]:
        """A copy of ``choice`` whose answer text is ``text``."""
        message = dict(message_of(choice, pos) or {}, content=text)
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
        for pos, key, choice in choices_of(body):
            if key in texts:
                choice = self.with_text(choice, pos, texts[key])
                if finish:
                    choice["finish_reason"] = finish
            choices.append(choice)
        return dict(body, choices=choices)

    def blocked(self, info: RequestInfo, upstream: dict[str, Any] | None, message: str) -> dict:
        # only well-typed fields of the upstream's answer are kept in ours
        base = upstream or {}
        return {
            "id": picked(base, "id", str) or gateway_id(self.id_prefix),
            "object": self.object_name,
            "created": picked(base, "created", int) or now(),
            "model": picked(base, "model", str) or info.model or "unknown",
            "choices": [self.blocked_choice(i, message) for i in range(info.n)],
            "usage": picked(base, "usage", dict)
            or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    def translator(self, info: RequestInfo) -> StreamTranslator:
        return ChatStream(info)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(body, choices=[dict(c, finish_reason="stop") for _, _, c in choices_of(body)])

    def synthesize(self, info: RequestInfo, texts: dict[str, str]) -> dict[str, Any]:
        # as many choices as the client asked for, or as the held stream had
        n = max([info.n, *[int(k) + 1 for k in texts if k.isdecimal()]])
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
        obj = event_object(loads_event(ev))
        for name in ("sources", "citations", "context"):
            if name in obj:
                self.sources.extend(obj[name], name)
        choices = obj.get("choices")
        if choices is None or choices == []:
            # a usage or sources chunk: passed on as it is
            return [Raw(None, obj)]
        if type(choices) is not list:
            raise malformed("choices", "a list")
        usage = obj.get("usage")
        if usage is not None and type(usage) is not dict:
            raise malformed("usage", "an object")
        for k in _TEMPLATE_KEYS:
            if k in obj:
                self.template[k] = obj[k]
        items: list[Any] = []
        for pos, choice in enumerate(choices):
            if type(choice) is not dict:
                raise malformed(f"choices[{pos}]", "an object")
            index = choice.get("index")
            if type(index) is not int or not 0 <= index < MAX_CHOICES:
                # absent or null is the first choice; anything else is malformed
                index = index_of(index, f"choices[{pos}].index", 0)
            finish = choice.get("finish_reason")
            if finish is not None and type(finish) is not str:
                raise malformed(f"choices[{pos}].finish_reason", "a string")
            key = str(index)
            if key not in self.seen:
                self.seen.append(key)
            items.extend(self._choice_items(obj, choice, pos, index, key))
        return items

    def _choice_items(self, obj: dict, choice: dict, pos: int, index: int, key: str) -> list[Any]:
        items: list[Any] = []
        delta = choice.get("delta")
        if delta is None:
            delta = {}
        elif type(delta) is not dict:
            raise malformed(f"choices[{pos}].delta", "an object")
        content = delta.get("content")
        if content is not None and type(content) is not str:
            raise malformed(f"choices[{pos}].delta.content", "a string")
        other = {k: v for k, v in delta.items() if k != "content"}
        if other:
            role_only = set(other) <= {"role", "refusal"} and not other.get("refusal")
            items.append(Raw(key, self._chunk(obj, index, other, None), lead=role_only))
        if content:
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
        if type(prompt) is list:
            prompt = "\n".join(p for p in prompt if type(p) is str) or None
        elif prompt is not None and type(prompt) is not str:
            raise invalid("prompt", "a string or a list", prompt)
        return RequestInfo(
            body,
            model=request_model(body),
            stream=request_flag(body, "stream"),
            query=prompt,
            n=request_n(body),
        )

    def segments(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        out = []
        for pos, key, choice in choices_of(body):
            text = choice.get("text")
            if type(text) is str:
                out.append((key, text))
            elif text is not None:
                raise malformed(f"choices[{pos}].text", "a string")
        return out

    def sources(self, body: dict[str, Any]):
        # legacy completions have no message, so no ``message.context``
        return Adapter.sources(self, body)

    object_name = "text_completion"
    id_prefix = "cmpl-gw"

    def with_text(self, choice: dict[str, Any], pos: int, text: str) -> dict[str, Any]:
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

    def _choice_items(self, obj: dict, choice: dict, pos: int, index: int, key: str) -> list[Any]:
        items: list[Any] = []
        text = choice.get("text")
        if text is not None and type(text) is not str:
            raise malformed(f"choices[{pos}].text", "a string")
        if text:
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
