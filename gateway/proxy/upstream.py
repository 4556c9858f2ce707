"""Calls to the upstream: headers, credentials, timeouts and error mapping."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import aiohttp
from multidict import CIMultiDict

from gateway.config import Route
from gateway.errors import (
    GatewayError,
    UpstreamCredentialMissing,
    UpstreamDisconnected,
    UpstreamMalformed,
    UpstreamTimeout,
    UpstreamUnavailable,
)

# never forwarded in either direction (RFC 9110 §7.6.1, plus what we recompute)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "content-encoding",
    }
)
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")


def upstream_headers(incoming: Mapping[str, str], route: Route, auto_header: str) -> CIMultiDict:
    """Headers for the upstream: the client's, minus hop-by-hop ones, with the
    route's injected key (in ``auto_header`` unless the route names one)."""
    headers = CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in HOP_BY_HOP)
    if route.api_key.mode == "inject":
        for name in CREDENTIAL_HEADERS:
            headers.popall(name, None)
        secret = os.environ.get(route.api_key.env or "")
        if not secret:
            raise UpstreamCredentialMissing(
                f"route {route.name} injects its upstream key from ${route.api_key.env}, "
                "which is not set"
            )
        header = auto_header if route.api_key.header == "auto" else route.api_key.header
        headers[header] = f"Bearer {secret}" if header == "authorization" else secret
    return headers


def upstream_url(route: Route, path: str, query: str) -> str:
    if route.strip_prefix and path.startswith(route.strip_prefix):
        path = path[len(route.strip_prefix) :] or "/"
    return route.upstream + path + (f"?{query}" if query else "")


def response_headers(upstream: Mapping[str, str]) -> CIMultiDict:
    """Upstream response headers worth passing on (request ids, rate limits…)."""
    return CIMultiDict(
        (k, v)
        for k, v in upstream.items()
        if k.lower() not in HOP_BY_HOP and k.lower() != "content-type"
    )


async def send(
    session: aiohttp.ClientSession,
    route: Route,
    method: str,
    url: str,
    headers: CIMultiDict,
    body: bytes | None,
) -> aiohttp.ClientResponse:
    """Send the request and wait for the response headers, within the route's timeouts."""
    t = route.timeouts
    timeout = aiohttp.ClientTimeout(
        total=None, connect=t.connect, sock_connect=t.connect, sock_read=t.idle
    )
    try:
        async with asyncio.timeout(min(t.first_byte, t.total)):
            return await session.request(
                method, url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            )
    except TimeoutError:
        raise UpstreamTimeout(
            f"upstream {route.name} did not answer within {min(t.first_byte, t.total):g}s"
        ) from None
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnavailable(
            f"cannot connect to upstream {route.name}: {exc.os_error}"
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnavailable(f"upstream {route.name} failed: {exc}") from None


async def error_detail(resp: aiohttp.ClientResponse) -> str:
    """The start of an upstream's error body, for the log and the error message."""
    try:
        async with asyncio.timeout(2):
            text = (await resp.content.read(300)).decode("utf-8", "replace").strip()
    except Exception:
        return ""
    return f": {text}" if text else ""


def map_read_error(route: Route, exc: BaseException) -> GatewayError:
    """The gateway error for a failure while reading an upstream body."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(f"upstream {route.name} stalled while sending its response")
    return UpstreamDisconnected(f"upstream {route.name} dropped the connection mid-response: {exc}")


async def read_body(
    resp: aiohttp.ClientResponse, route: Route, limit: int, deadline: float
) -> bytes:
    loop = asyncio.get_running_loop()
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise UpstreamMalformed(f"upstream {route.name} sent a body over {limit} bytes")
                parts.append(chunk)
    except TimeoutError:
        raise UpstreamTimeout(
            f"upstream {route.name} did not finish within {route.timeouts.total:g}s"
        ) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise map_read_error(route, exc) from None
    return b"".join(parts)
