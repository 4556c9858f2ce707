"""Every error the gateway raises, each with its stable code, in this one module.

Errors a client or operator sees are subclasses of ``GatewayError``: each
declares a kebab-case ``code``, an HTTP ``status`` and, for OpenAI-style
error bodies, a coarse ``type``. Where it helps callers, a subclass also
inherits the matching built-in (``ConfigError`` is a ``ValueError``,
``UpstreamTimeout`` a ``TimeoutError``). The proxy renders them in the wire
format of the client's protocol (``gateway.proxy.adapters``); the admin API
as OpenAI-shaped JSON.

Problems in a YAML file are reported as ``file:line:col: code: message``;
their codes are the members of ``Diag``. docs/errors.md documents every
code of both kinds, and a test keeps that list complete.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class GatewayError(Exception):
    code = "gateway-error"
    status = 500
    # OpenAI's error objects carry a coarse ``type`` next to the code.
    type = "api_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InternalError(GatewayError):
    """A bug of ours; the client still gets an error in its own format."""

    code = "internal-error"


# -- configuration --------------------------------------------------------------
class ConfigError(GatewayError, ValueError):
    """A configuration or policy file is invalid; ``errors`` holds every problem found."""

    code = "invalid-config"

    def __init__(self, message: str, errors: list[str] | None = None):
        super().__init__(message)
        self.errors = errors or [message]


class YamlSyntaxError(ConfigError):
    """A file is not YAML at all (or not UTF-8, or has a duplicate key)."""

    code = "invalid-yaml"

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors), errors)


class PluginLoadError(ConfigError):
    """An installed policy kind or subsystem could not be imported."""

    code = "plugin-load-failed"


class ListenError(ConfigError):
    """A listener cannot bind its address: the port is taken, privileged or the host not ours."""

    code = "listen-failed"


class Diag(StrEnum):
    """Codes of ``file:line:col: code: message`` lines about a YAML file."""

    FILE_NOT_FOUND = "file-not-found"
    UNREADABLE = "unreadable"
    INVALID_ENCODING = "invalid-encoding"
    YAML_SYNTAX = "yaml-syntax"
    YAML_TOO_DEEP = "yaml-too-deep"
    YAML_TOO_LARGE = "yaml-too-large"
    DUPLICATE_KEY = "duplicate-key"
    EMPTY_FILE = "empty-file"
    MISSING_FIELD = "missing-field"
    UNKNOWN_FIELD = "unknown-field"
    UNKNOWN_KIND = "unknown-kind"
    INVALID_VALUE = "invalid-value"
    INVALID_TYPE = "invalid-type"
    DUPLICATE_ID = "duplicate-id"
    BUILD_FAILED = "build-failed"


# -- the client's request ----------------------------------------------------------
class BadRequest(GatewayError, ValueError):
    code = "invalid-request"
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError, ValueError):
    code = "request-too-large"
    status = 413
    type = "invalid_request_error"


class RequestTimeout(GatewayError, TimeoutError):
    """The client took longer than ``limits.body_timeout`` to send its request."""

    code = "request-timeout"
    status = 408
    type = "invalid_request_error"


class MalformedHttp(GatewayError, ValueError):
    """Bytes on the connection that are not a well-formed HTTP request."""

    code = "malformed-http"
    status = 400
    type = "invalid_request_error"


class Overloaded(GatewayError):
    """A connection or stream limit is reached; the client should retry after a pause."""

    code = "overloaded"
    status = 503

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(GatewayError):
    """A client is over its per-key limit (``limits.per_key``): requests a minute or streams."""

    code = "rate-limited"
    status = 429
    # what OpenAI's own request-rate errors carry
    type = "requests"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class LimitsUnavailable(GatewayError):
    """Per-key limits are set, Redis cannot be reached and ``state.redis_down`` is ``closed``."""

    code = "limits-unavailable"
    status = 503

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class NoRoute(GatewayError, LookupError):
    code = "no-route"
    status = 404
    type = "invalid_request_error"


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


class MethodNotAllowed(GatewayError):
    """The path exists on the admin listener, but not for this HTTP method."""

    code = "method-not-allowed"
    status = 405
    type = "invalid_request_error"


class Conflict(GatewayError):
    code = "conflict"
    status = 409
    type = "invalid_request_error"


# -- governance outcomes the client sees as errors -----------------------------------
class ContentFiltered(GatewayError):
    """A policy with ``error_response: true`` withheld the answer."""

    code = "content-filtered"
    status = 400
    type = "invalid_request_error"


class HeldForReview(GatewayError):
    """A ``review`` policy with ``error_response: true`` held the answer."""

    code = "held-for-review"
    status = 400
    type = "invalid_request_error"


class RouteContained(GatewayError):
    """The route's kill switch is on and the protocol has no way to say so in-band."""

    code = "route-contained"
    status = 503


class ReviewUnavailable(GatewayError):
    """An answer needs review but could not be stored; nothing was acknowledged."""

    code = "review-unavailable"
    status = 503


# -- the store --------------------------------------------------------------------------
class StoreUnavailable(GatewayError, ConnectionError):
    """The store cannot be used right now: locked, closed, unreadable, or its server is down."""

    code = "store-unavailable"
    status = 503


class LeaderUnavailable(GatewayError):
    """A person's action on an incident was queued, but no process applied it in time."""

    code = "leader-unavailable"
    status = 503


class ExchangeInterrupted(GatewayError):
    """The process stopped mid-exchange; its record was rebuilt from the journal."""

    code = "interrupted"


# -- the upstream ---------------------------------------------------------------------
class VariantUnavailable(GatewayError):
    """No variant of a split route can serve: every one with traffic is an unresolved alias."""

    code = "variant-unavailable"
    status = 503


class RegistryError(GatewayError):
    """The model registry that names route variants refused or could not be reached."""

    code = "registry-error"
    status = 502


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


class UpstreamCredentialMissing(GatewayError):
    """A route injects its upstream key from an environment variable that is unset."""

    code = "upstream-credential-missing"
    status = 500


# -- detector inputs (reported as the policy's ``error`` status) ------------------------
class SourceMetadataError(GatewayError, ValueError):
    """A RAG source's metadata (dates, versions) cannot be read."""

    code = "malformed-source-metadata"
    status = 502


class RetrievalInputError(GatewayError, ValueError):
    """A ``retrieval_quality`` policy cannot judge: no query, or no source text."""

    code = "retrieval-quality-input"
    status = 502


# -- indexes ----------------------------------------------------------------------------
class IndexUnavailable(GatewayError):
    """An index directory is missing, incomplete or from another format."""

    code = "index-unavailable"
    status = 503


class IndexMissing(IndexUnavailable, FileNotFoundError):
    code = "index-missing"


class IndexReloadFailed(GatewayError):
    """A rebuilt index did not load; the previous one keeps serving."""

    code = "index-reload-failed"
    status = 422


# -- reviews and incidents ------------------------------------------------------------------
class ItemChanged(Conflict):
    """A review item was changed (or deleted) by someone else since it was read."""

    code = "item-changed"

    def __init__(self, current: Any):
        super().__init__("the review item changed since it was read")
        # the item as it is now, or None when it is gone
        self.current = current


class SinkCredentialMissing(GatewayError):
    """A sink's credential variable is unset; delivery is retried, as it may be set later."""

    code = "sink-credential-missing"
    status = 500


class AdminApiError(GatewayError):
    """A CLI command could not get what it asked of a running gateway's admin API."""

    code = "admin-api-error"
    status = 502


def error_classes() -> list[type[GatewayError]]:
    """``GatewayError`` and every subclass declared here."""
    out: list[type[GatewayError]] = []
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop()
        out.append(cls)
        pending.extend(cls.__subclasses__())
    return out
