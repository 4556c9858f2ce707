"""TCP listeners that hostile or careless clients cannot pin open or crash.

aiohttp bounds idle keep-alive connections, but not a client that opens a
connection and sends its headers a byte at a time, nor how many connections
one process accepts; and what its parser says about bad bytes is plain text.
``GuardedSite`` serves an ``AppRunner``'s application through
``GuardedHandler``, which adds:

- a deadline for the first request's headers (``limits.header_timeout``);
  later requests on the connection are bounded by the keep-alive timeout,
  which aiohttp keeps running until a whole request has arrived;
- a cap on open connections (``limits.max_connections``), over which a
  connection is answered 503 with ``Retry-After`` and closed;
- JSON errors (the OpenAI error object, as everywhere else) for requests
  aiohttp's parser rejects and for failures outside our handlers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus

import orjson
from aiohttp import web

from gateway.config import Limits
from gateway.errors import (
    GatewayError,
    InternalError,
    MalformedHttp,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
)
from gateway.proxy.adapters.base import openai_error

log = logging.getLogger(__name__)


def raw_error(err: GatewayError, *, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 error response, for writing to a connection with no request object."""
    body = orjson.dumps(openai_error(err))
    lines = [
        f"HTTP/1.1 {err.status} {HTTPStatus(err.status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


class Connections:
    """The open connections of one listener, against its cap.

    ``refused`` counts what the listener turned away, by reason
    (``connections``, ``header_timeout``); ``count`` is told of each too,
    so the figures reach the metrics.
    """

    __slots__ = ("open", "refused", "count")

    def __init__(self, count: Callable[[str], None] | None = None) -> None:
        self.open = 0
        self.refused: dict[str, int] = {}
        self.count = count

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self.count is not None:
            self.count(reason)


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection handler with a header deadline, a connection cap and JSON errors."""

    def __init__(
        self, manager: web.Server, *, limits: Limits, connections: Connections, **kwargs
    ) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._connections = connections
        self._counted = False
        self._deadline: asyncio.TimerHandle | None = None
        # aiohttp counts the requests its parser completed: that, not a byte
        # pattern (leading blank lines, bare LFs), says the headers are in
        if not isinstance(getattr(self, "_request_count", None), int):
            raise RuntimeError("this aiohttp does not count parsed requests; pin aiohttp 3.x")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        conns = self._connections
        if conns.open >= self._limits.max_connections:
            conns.refuse("connections")
            retry = self._limits.retry_after
            err = Overloaded("the gateway has too many open connections; retry shortly", retry)
            self._refuse(transport, raw_error(err, retry_after=retry))
            return
        conns.open += 1
        self._counted = True
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._limits.header_timeout, self._headers_late)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._deadline is not None and self._request_count:
            self._cancel_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_deadline()
        if self._counted:
            self._counted = False
            self._connections.open -= 1
        super().connection_lost(exc)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self._request_count or self.transport is None:
            return
        self._connections.refuse("header_timeout")
        err = RequestTimeout(
            f"the request's headers did not arrive within {self._limits.header_timeout:g}s"
        )
        self._refuse(self.transport, raw_error(err))

    def _refuse(self, transport: asyncio.BaseTransport, response: bytes) -> None:
        # uvloop's transports do not derive from asyncio's classes: ask for the method
        write = getattr(transport, "write", None)
        if write is not None and not transport.is_closing():
            write(response)
        # the written response is flushed before the socket closes
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The error aiohttp answers itself (bad HTTP, a crash outside our handlers), as JSON."""
        err: GatewayError
        if status == 400:
            first = (message or "malformed HTTP request").strip().splitlines()[0][:300]
            err = MalformedHttp(f"malformed HTTP request: {first}")
            log.info("malformed HTTP request from %s: %s", request.remote, first)
        elif status == 413:
            err = PayloadTooLarge(message or "the request is too large")
        else:
            err = InternalError("the gateway failed to handle this request")
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:
            # the answer has started: the connection can only be dropped
            raise ConnectionError("an error after the response started")
        resp = web.Response(
            status=err.status, body=orjson.dumps(openai_error(err)), content_type="application/json"
        )
        resp.force_close()
        return resp


class GuardedSite(web.BaseSite):
    """A TCP listener serving ``runner``'s application through ``GuardedHandler``."""

    __slots__ = ("_host", "_port", "_limits", "_reuse_port", "connections", "port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limits: Limits,
        count: Callable[[str], None] | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        # a burst of connections waits in the kernel's queue rather than being
        # dropped and retried by the client seconds later (the kernel caps it
        # at net.core.somaxconn)
        super().__init__(runner, backlog=min(max(limits.max_connections, 128), 4096))
        self._host = host
        self._port = port
        self._limits = limits
        # SO_REUSEPORT: several worker processes bind the same port, and the
        # kernel spreads new connections over them
        self._reuse_port = reuse_port
        self.connections = Connections(count)
        # the port actually bound, once started (``port=0`` lets the system pick one)
        self.port = port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    def _protocol(self) -> GuardedHandler:
        server = self._runner.server
        assert server is not None
        # the runner's own handler options (parser limits, logging…), then ours
        options = {**getattr(server, "_kwargs", {}), "access_log": None}
        options["keepalive_timeout"] = self._limits.keepalive_timeout
        return GuardedHandler(
            server,
            limits=self._limits,
            connections=self.connections,
            loop=asyncio.get_running_loop(),
            **options,
        )

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self._protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
        )
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1]) if server.sockets else self._port
