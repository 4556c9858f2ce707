"""OpenAI ``/v1/images/generations``, ``/v1/images/edits`` and ``/v1/images/variations``.

Scanned: every image of ``data``, each its own image segment keyed
``image.N`` (``b64_json``; an image given only as ``url`` is passed to the
policies as a link, which the gateway does not fetch). There is no text to
scan. A blocked answer keeps the shape, with an empty ``data`` and a
``governance`` object saying why; a policy with ``error_response`` answers
with an OpenAI error instead, which the SDKs raise.

Edits and variations arrive as ``multipart/form-data``: only the form's text fields
(``model``, ``n``, ``stream``…) are read, and the body goes upstream as it
came. The form is read by one linear scan for its boundaries, on the event
loop: file parts are stepped over without a copy, and a form of more than
``MAX_PARTS`` parts is refused, so a body of thousands of tiny parts costs no
more than one of a few. Streamed image generation (``stream: true``) is refused: partial images
would leave before the whole image could be checked.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.contract.detector import ImagePart
from gateway.errors import BadRequest
from gateway.proxy.adapters.base import Adapter, RequestInfo, StreamTranslator, now
from gateway.proxy.adapters.shapes import (
    body_list,
    malformed,
    opt_str,
    picked,
    request_flag,
    request_model,
    request_n,
)

# form fields of an edit that are read (file parts are never copied or decoded)
FORM_FIELDS = frozenset({"model", "prompt", "n", "stream", "response_format", "size", "user"})
# an edit has a few fields and up to 16 images; more parts than this is no edit
MAX_PARTS = 64
# a part's header block; a real one is a Content-Disposition and a Content-Type
MAX_PART_HEADER = 8 * 1024
# ``; name=value`` or ``; name="quoted \"value\""`` in a header
_PARAM = re.compile(r';\s*([A-Za-z0-9_.*\-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')
_ESCAPED = re.compile(r"\\(.)")
NOT_A_FORM = "the request body is not valid multipart/form-data"


def header_params(value: str) -> dict[str, str]:
    """The parameters of a header value (its part before the first ``;`` is ignored)."""
    out: dict[str, str] = {}
    for m in _PARAM.finditer(value):
        raw = m.group(2)
        if raw.startswith('"'):
            raw = _ESCAPED.sub(r"\1", raw[1:-1])
        out.setdefault(m.group(1).lower(), raw)
    return out


def form_fields(body: bytes, content_type: str, wanted: frozenset[str]) -> dict[str, str]:
    """The text fields named in ``wanted`` of a ``multipart/form-data`` body.

    Parts with a file name are stepped over: only their end is looked for.
    """
    mime = content_type.partition(";")[0].strip().lower()
    boundary = header_params(content_type).get("boundary", "")
    if mime != "multipart/form-data" or not 0 < len(boundary) <= 70:
        raise BadRequest(f"{NOT_A_FORM} (no boundary in its content type)")
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    sep = b"\r\n" + delimiter
    if body.startswith(delimiter):
        pos = len(delimiter)
    else:  # a preamble before the first part is allowed, and ignored
        start = body.find(sep)
        if start < 0:
            raise BadRequest(NOT_A_FORM)
        pos = start + len(sep)
    out: dict[str, str] = {}
    parts = 0
    while not body.startswith(b"--", pos):  # "--" after a delimiter ends the form
        eol = body.find(b"\r\n", pos, pos + 1024)
        if eol < 0:
            raise BadRequest(f"{NOT_A_FORM} (a boundary line does not end)")
        parts += 1
        if parts > MAX_PARTS:
            raise BadRequest(
                f"the form has more than {MAX_PARTS} parts; an image edit has a few fields "
                "and images"
            )
        pos = eol + 2
        if body.startswith(b"\r\n", pos):  # a part without headers
            head, content = b"", pos + 2
        else:
            end_head = body.find(b"\r\n\r\n", pos, pos + MAX_PART_HEADER)
            if end_head < 0:
                raise BadRequest(f"{NOT_A_FORM} (a part's headers do not end)")
            head, content = body[pos:end_head], end_head + 4
        end = body.find(sep, content)
        if end < 0:
            raise BadRequest(f"{NOT_A_FORM} (a part has no closing boundary)")
        pos = end + len(sep)
        disposition = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                disposition = value
        params = header_params(disposition)
        name = params.get("name")
        if name in wanted and "filename" not in params and "filename*" not in params:
            out[name] = body[content:end].decode("utf-8", "replace")
    return out


class ImagesAdapter(Adapter):
    protocol = "openai-images"

    def parse_form(self, body: bytes, content_type: str) -> dict[str, Any]:
        """The text fields of a ``multipart/form-data`` request, typed as JSON would be."""
        out: dict[str, Any] = {}
        for name, value in form_fields(body, content_type, FORM_FIELDS).items():
            if name == "n":
                out[name] = int(value) if value.strip().isdecimal() else value
            elif name == "stream":
                out[name] = value.strip().lower() == "true"
            else:
                out[name] = value
        return out

    def request_info(self, body: dict[str, Any]) -> RequestInfo:
        if request_flag(body, "stream"):
            raise BadRequest(
                "streamed image generation is not governed: partial images would reach the "
                'client before the whole image is checked; send "stream": false'
            )
        prompt = body.get("prompt")
        return RequestInfo(
            body=body,
            model=request_model(body),
            stream=False,
            query=prompt if isinstance(prompt, str) else None,
            n=request_n(body),
        )

    def segments(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        self.images(body)  # the shape is checked here too, where a text answer's would be
        return []

    def images(self, body: dict[str, Any]) -> list[tuple[str, ImagePart]]:
        out: list[tuple[str, ImagePart]] = []
        for i, item in enumerate(body_list(body, "data")):
            if type(item) is not dict:
                raise malformed(f"data[{i}]", "an object")
            data = opt_str(item.get("b64_json"), f"data[{i}].b64_json")
            url = opt_str(item.get("url"), f"data[{i}].url")
            if data is not None:
                out.append((f"image.{i}", ImagePart(f"data[{i}].b64_json", data=data)))
            elif url is not None:
                out.append((f"image.{i}", ImagePart(f"data[{i}].url", url=url)))
            else:
                raise malformed(f"data[{i}]", 'an image (neither "b64_json" nor "url" is set)')
        return out

    def rebuild(self, body: dict[str, Any], texts: dict[str, str], finish: str | None) -> dict:
        return dict(body)

    def blocked(self, info: RequestInfo, upstream: dict[str, Any] | None, message: str) -> dict:
        base = upstream or {}
        out: dict[str, Any] = {
            "created": picked(base, "created", int) or now(),
            "data": [],
            "governance": {"withheld": True, "message": message},
        }
        usage = picked(base, "usage", dict)
        if usage is not None:
            out["usage"] = usage
        return out

    def translator(self, info: RequestInfo) -> StreamTranslator:
        # request_info refuses streams, so no exchange of this adapter streams
        raise BadRequest("streamed image generation is not governed")
