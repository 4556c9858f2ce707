"""One root error for the whole gateway.

Every error carries a stable kebab-case ``code`` and an HTTP ``status``; the
proxy renders it in the wire format of the client's protocol in one place
(``gateway.proxy.adapters.render_error``).
"""

from __future__ import annotations


class GatewayError(Exception):
    code = "gateway-error"
    status = 500
    # OpenAI's error objects carry a coarse ``type`` next to the code.
    type = "api_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class ConfigError(GatewayError, ValueError):
    """A configuration or policy file is invalid; ``errors`` holds every problem found."""

    code = "invalid-config"

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = errors or [message]


class BadRequest(GatewayError, ValueError):
    code = "invalid-request"
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError, ValueError):
    code = "request-too-large"
    status = 413
    type = "invalid_request_error"


class NoRoute(GatewayError, LookupError):
    code = "no-route"
    status = 404
    type = "invalid_request_error"


class UpstreamError(GatewayError):
    """The upstream answered, but not with something we can serve."""

    code = "upstream-error"
    status = 502


class UpstreamUnavailable(UpstreamError, ConnectionError):
    code = "upstream-unreachable"
    status = 502


class UpstreamDisconnected(UpstreamError, ConnectionError):
    """The upstream hung up in the middle of its response."""

    code = "upstream-disconnected"
    status = 502


class UpstreamTimeout(UpstreamError, TimeoutError):
    code = "upstream-timeout"
    status = 504


class UpstreamMalformed(UpstreamError, ValueError):
    code = "upstream-malformed-response"
    status = 502


class Unauthorized(GatewayError, PermissionError):
    code = "unauthorized"
    status = 401
    type = "authentication_error"


class Forbidden(GatewayError, PermissionError):
    code = "forbidden"
    status = 403
    type = "permission_error"


class NotFound(GatewayError, LookupError):
    code = "not-found"
    status = 404
    type = "invalid_request_error"


class Conflict(GatewayError):
    code = "conflict"
    status = 409
    type = "invalid_request_error"
