"""OpenAI ``/v1/images/generations``, ``/v1/images/edits`` and ``/v1/images/variations``.

Scanned: every image of ``data``, each its own image segment keyed
``image.N`` (``b64_json``; an image given only as ``url`` is passed to the
policies as a link, which the gateway does not fetch). There is no text to
scan. A blocked answer keeps the shape, with an empty ``data`` and a
``governance`` object saying why; a policy with ``error_response`` answers
with an OpenAI error instead, which the SDKs raise.

Edits and variations arrive as ``multipart/form-data``: only the form's text fields
(``model``, ``n``, ``stream``…) are read, and the body goes upstream as it
came. Streamed image generation (``stream: true``) is refused: partial images
would leave before the whole image could be checked.
"""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import HTTP
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

# form fields of an edit that are read (the files are never parsed into memory twice)
FORM_FIELDS = frozenset({"model", "prompt", "n", "stream", "response_format", "size", "user"})


class ImagesAdapter(Adapter):
    protocol = "openai-images"

    def parse_form(self, body: bytes, content_type: str) -> dict[str, Any]:
        """The text fields of a ``multipart/form-data`` request, typed as JSON would be."""
        head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
        message = BytesParser(policy=HTTP).parsebytes(head + body)
        if not message.is_multipart():
            raise BadRequest("the request body is not valid multipart/form-data")
        out: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str) or name not in FORM_FIELDS or part.get_filename():
                continue
            payload = part.get_payload(decode=True)
            value = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
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
