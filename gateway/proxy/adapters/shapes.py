"""Shape checks for the JSON an adapter reads: the upstream's answers and the client's requests.

An adapter checks each value where it already reads it, with a plain type
test, never a schema over the whole body: the hot path pays only for the
fields the gateway uses, and fields it does not know pass through untouched.
A wrong shape from the upstream is ``UpstreamMalformed`` (502), from the
client ``BadRequest`` (400); both name the field and what was expected.

For optional fields ``null`` counts as absent, as OpenAI-compatible servers
often send it; a field the adapter cannot do without (``choices``,
``content``, ``output``) must be there.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import BadRequest, UpstreamMalformed

# choice indices and ``n``: enough for any real model; a bound keeps a broken
# upstream (or client) from making a held or blocked answer with a million choices
MAX_CHOICES = 1024

_JSON_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def json_type(value: Any) -> str:
    """``value``'s JSON type, for messages."""
    return _JSON_NAMES.get(type(value), type(value).__name__)


# -- the upstream ---------------------------------------------------------------
def malformed(name: str, expected: str) -> UpstreamMalformed:
    return UpstreamMalformed(f'upstream sent "{name}" that is not {expected}')


def missing(name: str, expected: str) -> UpstreamMalformed:
    return UpstreamMalformed(f'upstream sent no "{name}"; expected {expected}')


def event_object(obj: Any) -> dict[str, Any]:
    """An SSE event's JSON, which every governed protocol sends as an object."""
    if type(obj) is not dict:
        raise UpstreamMalformed(
            f"upstream sent an SSE event that is not a JSON object but {json_type(obj)}"
        )
    return obj


def body_list(body: dict[str, Any], field: str) -> list[Any]:
    """The list a whole answer cannot do without (``choices``, ``content``, ``output``)."""
    value = body.get(field)
    if type(value) is not list:
        if value is None:
            raise missing(field, "a list")
        raise malformed(field, "a list")
    return value


def index_of(value: Any, name: str, default: int) -> int:
    """A choice, block or output index: a small non-negative integer (null: ``default``)."""
    if value is None:
        return default
    if type(value) is not int or not 0 <= value < MAX_CHOICES:
        raise malformed(name, f"an integer from 0 to {MAX_CHOICES - 1}")
    return value


def picked(base: dict[str, Any], field: str, kind: type) -> Any:
    """``base[field]`` if it has the JSON type ``kind``, else None: for copying an
    upstream's id, model or usage into an answer the gateway writes, never garbage.

    A container nested deeper than any real one is left out too: the answer
    must still encode (orjson writes at most 254 levels).
    """
    value = base.get(field)
    if type(value) is not kind:
        return None
    if kind is dict or kind is list:
        return value if _shallow(value, MAX_COPIED_DEPTH) else None
    return value


# how deep a container copied from the upstream into a gateway answer may be
MAX_COPIED_DEPTH = 32


def _shallow(value: Any, depth: int) -> bool:
    if type(value) is dict:
        return depth > 0 and all(_shallow(v, depth - 1) for v in value.values())
    if type(value) is list:
        return depth > 0 and all(_shallow(v, depth - 1) for v in value)
    return True


def opt_str(value: Any, name: str) -> str | None:
    if value is None or type(value) is str:
        return value
    raise malformed(name, "a string")


def opt_dict(value: Any, name: str) -> dict[str, Any] | None:
    if value is None or type(value) is dict:
        return value
    raise malformed(name, "an object")


def opt_list(value: Any, name: str) -> list[Any] | None:
    if value is None or type(value) is list:
        return value
    raise malformed(name, "a list")


# -- the client -----------------------------------------------------------------------
def invalid(name: str, expected: str, value: Any) -> BadRequest:
    return BadRequest(f'"{name}" must be {expected}, not {json_type(value)}')


def request_model(body: dict[str, Any]) -> str | None:
    model = body.get("model")
    if model is None or type(model) is str:
        return model
    raise invalid("model", "a string", model)


def request_flag(body: dict[str, Any], field: str) -> bool:
    """A boolean request field such as ``stream``; null or absent is false."""
    value = body.get(field)
    if value is None:
        return False
    if type(value) is not bool:
        raise invalid(field, "a boolean", value)
    return value


def request_n(body: dict[str, Any]) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if type(n) is not int or not 1 <= n <= MAX_CHOICES:
        raise BadRequest(f'"n" must be an integer from 1 to {MAX_CHOICES}')
    return n


def request_messages(body: dict[str, Any], field: str = "messages") -> list[Any] | None:
    """A list of message objects, each with string, list or null ``content``."""
    messages = body.get(field)
    if messages is None:
        return None
    if type(messages) is not list:
        raise invalid(field, "a list", messages)
    for i, message in enumerate(messages):
        if type(message) is not dict:
            raise invalid(f"{field}[{i}]", "an object", message)
        content = message.get("content")
        if content is not None and type(content) is not str and type(content) is not list:
            raise invalid(f"{field}[{i}].content", "a string or a list of parts", content)
    return messages
