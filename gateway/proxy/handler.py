"""The governed data path: route, call upstream, scan, act, record.

Non-streamed answers are read whole, scanned, and served as the upstream
sent them unless a policy acts. Streams go through the hold-back protocol of
``gateway.policy.engine``: response headers are sent only with the first
released text, so until then a breach can still fall back to another route.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections import deque
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.config import Route
from gateway.detectors.base import ScanContext
from gateway.errors import (
    BadRequest,
    GatewayError,
    NoRoute,
    NotFound,
    PayloadTooLarge,
    UpstreamError,
    UpstreamMalformed,
)
from gateway.incidents.containment import HOLD_ALL, Switch, blocked_answer, switch_for
from gateway.observability.logs import decision_id_var
from gateway.policy.engine import ResponseGuard, new_decision_id
from gateway.policy.models import Action, Status
from gateway.proxy import upstream as up
from gateway.proxy.adapters import Adapter, RequestInfo, adapter_for
from gateway.proxy.adapters.anthropic import AnthropicAdapter
from gateway.proxy.adapters.base import Done, End, Raw, Text, normalize_sources, openai_error
from gateway.proxy.sse import SSEParser
from gateway.proxy.state import GATEWAY, Gateway

log = logging.getLogger(__name__)

HELD_MESSAGE = "This response is held for review."


class Stopwatch:
    """Accumulates the time the gateway itself spends, excluding waits on peers."""

    __slots__ = ("total", "_since")

    def __init__(self) -> None:
        self.total = 0.0
        self._since: float | None = None

    def start(self) -> None:
        self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            self.total += time.perf_counter() - self._since
            self._since = None


def coalesce(items: list) -> list:
    """Merge neighbouring text pieces of one segment that arrived in one read.

    When the upstream outpaces us, a read holds many events; scanning their
    text once instead of once per event keeps the gateway from falling
    further behind, and adds no delay when it keeps up.
    """
    out: list = []
    for item in items:
        if isinstance(item, Text) and out and isinstance(out[-1], Text) and out[-1].key == item.key:
            out[-1] = Text(item.key, out[-1].text + item.text)
        else:
            out.append(item)
    return out


class FallbackWanted(Exception):
    """Raised inside an attempt to move on to the route's fallback."""

    def __init__(self, reason: str):
        self.reason = reason


async def read_request_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body is {request.content_length} bytes; the limit is {limit}"
        )
    body = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
    return bytes(body)


def choose_route(gw: Gateway, path: str, model: str | None) -> Route:
    for route in gw.settings.routes:
        if not path.startswith(route.path_prefix):
            continue
        if route.models and not (
            model and any(fnmatch.fnmatchcase(model, m) for m in route.models)
        ):
            continue
        return route
    raise NoRoute(f"no route serves {path}" + (f" for model {model!r}" if model else ""))


def error_response(err: GatewayError, adapter: Adapter | None, decision_id: str) -> web.Response:
    body = adapter.error_body(err) if adapter is not None else openai_error(err)
    return web.Response(
        status=err.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={
            "x-governance-decision": "error",
            "x-governance-decision-id": decision_id,
            "x-governance-error-code": err.code,
        },
    )


async def handle(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    decision_id = new_decision_id()
    decision_id_var.set(decision_id)
    adapter: Adapter | None = None
    try:
        if request.path.startswith("/governance/"):
            # never forward governance paths (and the tokens they carry) upstream
            raise NotFound("the governance API is served on the admin listener")
        body = b""
        if request.method in ("POST", "PUT", "PATCH"):
            body = await read_request_body(request, gw.settings.limits.max_body_bytes)
        # a path the adapters know is governed on POST; everything else passes through
        parsed: dict[str, Any] | None = None
        model = None
        if request.method == "POST" and any(
            adapter_for(r.protocol, request.path, gw.rag_adapters.get(r.name)) is not None
            for r in gw.settings.routes
            if request.path.startswith(r.path_prefix)
        ):
            parsed = parse_json_body(body, request)
            model = parsed.get("model") if isinstance(parsed.get("model"), str) else None
        route = choose_route(gw, request.path, model)
        if parsed is not None:
            adapter = adapter_for(route.protocol, request.path, gw.rag_adapters.get(route.name))
        if adapter is None or parsed is None:
            return await passthrough(gw, request, route, body, decision_id)
        exchange = Exchange(
            gw, request, route, adapter, adapter.request_info(parsed), body, decision_id
        )
        return await exchange.run()
    except GatewayError as err:
        return error_response(err, adapter, decision_id)
    except (asyncio.CancelledError, web.HTTPException):
        raise
    except Exception:
        # a bug of ours still answers in the client's format, and is logged loudly
        log.exception("internal error while handling %s %s", request.method, request.path)
        failure = GatewayError("the gateway failed to handle this request", code="internal-error")
        return error_response(failure, adapter, decision_id)


def parse_json_body(body: bytes, request: web.Request) -> dict[str, Any]:
    if not body:
        raise BadRequest("the request body is empty; expected a JSON object")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BadRequest(f"the request body must be a JSON object, not {type(parsed).__name__}")
    return parsed


async def passthrough(
    gw: Gateway, request: web.Request, route: Route, body: bytes, decision_id: str
) -> web.StreamResponse:
    """Forward an ungoverned request (``/v1/models``, embeddings…) untouched."""
    gw.metrics.passthrough.labels(route.name).inc()
    headers = up.upstream_headers(request.headers, route, anthropic=False)
    url = up.upstream_url(route, request.path, request.query_string)
    resp = await up.send(gw.http, route, request.method, url, headers, body or None)
    try:
        out = web.StreamResponse(status=resp.status, headers=up.response_headers(resp.headers))
        if "content-type" in resp.headers:
            out.content_type = resp.content_type
        out.headers["x-governance-decision"] = "passthrough"
        out.headers["x-governance-decision-id"] = decision_id
        await out.prepare(request)
        try:
            async with asyncio.timeout(route.timeouts.total):
                async for chunk in resp.content.iter_any():
                    await out.write(chunk)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("passthrough body from %s broke off: %s", route.name, exc)
            return out
        await out.write_eof()
        return out
    finally:
        resp.close()


class Exchange:
    """One governed request, across its attempts (primary, then fallback)."""

    def __init__(
        self,
        gw: Gateway,
        request: web.Request,
        route: Route,
        adapter: Adapter,
        info: RequestInfo,
        body: bytes,
        decision_id: str,
    ):
        self.gw = gw
        self.request = request
        self.route = route
        self.adapter = adapter
        self.info = info
        self.body = body
        self.decision_id = decision_id
        self.started = time.perf_counter()
        self.busy = Stopwatch()
        self.attempts: list[dict[str, Any]] = []
        self.policy_set = gw.policies.current
        self.guard: ResponseGuard | None = None
        self.record: dict[str, Any] = {}
        self.response: web.StreamResponse | None = None
        self.client_gone = False
        self.upstream_seconds = 0.0
        # the upstream stream has ended: nothing may wait any longer
        self.upstream_done = False
        # text is about to leave: preamble events may go ahead of it
        self.text_ready = False
        self.pending: deque[Any] = deque()
        # what a review hold still has to read of a stream cut short
        self.unread: tuple[Any, SSEParser, list] | None = None
        # the incident containment switch this request was answered under
        self.containment: Switch | None = None

    # -- the attempt loop ------------------------------------------------------
    async def run(self) -> web.StreamResponse:
        self.busy.start()
        route: Route | None = self.route
        used: set[str] = set()
        try:
            # incident containment, read from memory: kill switch, fallback or hold all
            switch = switch_for(self.gw, self.route.name)
            if switch is not None:
                self.containment = switch
                if switch.mode == "block":
                    return await self.kill_switch(switch)
                if switch.mode == "fallback" and self.route.fallback:
                    used.add(self.route.name)
                    self.attempts.append(
                        {
                            "route": self.route.name,
                            "upstream": self.route.upstream,
                            "skipped": "containment",
                        }
                    )
                    route = self.gw.settings.route(self.route.fallback)
            while route is not None:
                used.add(route.name)
                nxt = self.gw.settings.route(route.fallback) if route.fallback else None
                can_fall_back = nxt is not None and nxt.name not in used
                try:
                    return await self.attempt(route)
                except FallbackWanted as wanted:
                    self.attempts[-1]["fell_back"] = wanted.reason
                    if not can_fall_back:
                        raise AssertionError("fallback wanted without a fallback route") from None
                    route = nxt
                except UpstreamError as err:
                    self.gw.metrics.upstream_errors.labels(route.name, err.code).inc()
                    if self.attempts and self.attempts[-1]["route"] == route.name:
                        self.attempts[-1]["error"] = err.code
                    else:
                        self.attempts.append(
                            {"route": route.name, "upstream": route.upstream, "error": err.code}
                        )
                    if can_fall_back and (self.response is None or not self.response.prepared):
                        log.warning(
                            "upstream %s failed (%s); falling back to %s",
                            route.name,
                            err.code,
                            nxt.name if nxt else None,
                        )
                        route = nxt
                        continue
                    log.warning(
                        "upstream %s failed: %s",
                        route.name,
                        err.message,
                        extra={"fields": {"code": err.code, "route": route.name}},
                    )
                    self.finish_record(action="error", error=err)
                    return error_response(err, self.adapter, self.decision_id)
            raise AssertionError("unreachable")  # pragma: no cover
        except asyncio.CancelledError:
            self.client_gone = True
            self.finish_record(action=self.record.get("action", "cancelled"))
            raise
        finally:
            if not self.record:
                self.finish_record(action="error")
            if self.containment is not None:
                self.record["containment"] = {
                    "mode": self.containment.mode,
                    "route": self.route.name,
                    "incident_id": self.containment.incident_id,
                }
            self.gw.decisions.add(self.record)

    async def kill_switch(self, switch: Switch) -> web.StreamResponse:
        """Answer without calling any upstream: the route's kill switch is on."""
        response = await blocked_answer(self, switch, self.route.containment.block_message)
        self.finish_record(action="block", scanned=False)
        return response

    def fallback_possible(self, route: Route) -> bool:
        return route.fallback is not None and route.fallback not in {
            a["route"] for a in self.attempts
        }

    def scan_context(self, route: Route, sources: list, errors: list) -> ScanContext:
        return ScanContext(
            route=route.name,
            model=self.info.model,
            query=self.info.query,
            sources=sources,
            source_errors=errors,
            request=self.info.body,
        )

    async def attempt(self, route: Route) -> web.StreamResponse:
        self.attempts.append({"route": route.name, "upstream": route.upstream})
        anthropic = isinstance(self.adapter, AnthropicAdapter)
        headers = up.upstream_headers(self.request.headers, route, anthropic=anthropic)
        url = up.upstream_url(route, self.request.path, self.request.query_string)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + route.timeouts.total
        self.busy.stop()
        sent = time.perf_counter()
        resp = await up.send(self.gw.http, route, "POST", url, headers, self.body)
        self.busy.start()
        self.attempts[-1]["status"] = resp.status
        try:
            if resp.status >= 500:
                detail = await self._error_detail(resp)
                raise UpstreamError(f"upstream {route.name} answered {resp.status}{detail}")
            if resp.status >= 400:
                # the client's own mistake (bad key, unknown model): theirs to see, unchanged
                return await self.relay_client_error(resp, route, sent, deadline)
            if self.info.stream:
                return await self.stream(resp, route, sent, deadline)
            return await self.whole(resp, route, sent, deadline)
        finally:
            resp.close()

    async def _error_detail(self, resp: aiohttp.ClientResponse) -> str:
        try:
            async with asyncio.timeout(2):
                text = (await resp.content.read(300)).decode("utf-8", "replace").strip()
        except Exception:
            return ""
        return f": {text}" if text else ""

    async def relay_client_error(self, resp, route: Route, sent: float, deadline: float):
        self.busy.stop()
        raw = await up.read_body(
            resp, route, self.gw.settings.limits.max_upstream_body_bytes, deadline
        )
        self.busy.start()
        self.upstream_seconds += time.perf_counter() - sent
        self.finish_record(action="allow", upstream_status=resp.status, scanned=False)
        headers = up.response_headers(resp.headers)
        headers.update(self.decision_headers("allow"))
        return web.Response(
            status=resp.status, body=raw, headers=headers, content_type=resp.content_type
        )

    # -- non-streamed ------------------------------------------------------------
    async def whole(self, resp, route: Route, sent: float, deadline: float) -> web.StreamResponse:
        self.busy.stop()
        raw = await up.read_body(
            resp, route, self.gw.settings.limits.max_upstream_body_bytes, deadline
        )
        self.busy.start()
        self.upstream_seconds += time.perf_counter() - sent
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamMalformed(f"upstream {route.name} sent invalid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise UpstreamMalformed(f"upstream {route.name} sent JSON that is not an object")
        segments = self.adapter.segments(body)
        sources = self.adapter.sources(body)
        self.add_header_sources(resp, sources.items, sources.errors)
        guard = self.new_guard(route, sources.items, sources.errors)
        for key, text in segments:
            await guard.feed(key, text, final=True)
            if guard.stopped:
                break
        guard.close()
        monitors = self.gw.services.get("monitors")
        if monitors is not None and monitors.watches(route.name):
            # the model's own decision feeds the windowed monitors, off the response path
            monitors.observe(route.name, body)
        action = guard.action()
        if action is Action.FALLBACK and self.fallback_possible(route):
            self.attempts[-1]["action"] = action.value
            raise FallbackWanted(self.breach_summary(guard))
        headers = up.response_headers(resp.headers)
        if action is Action.REVIEW and "review" in self.gw.services:
            # stored durably before the client hears anything
            out = await self.gw.services["review"].hold(self, guard, body)
        elif action in (Action.BLOCK, Action.REVIEW, Action.FALLBACK):
            out = self.blocked_response(guard, action, body)
        elif action is Action.REDACT:
            texts = {key: guard.segments[key].released_text for key, _ in segments}
            rebuilt = self.adapter.rebuild(body, texts, None)
            out = web.Response(
                body=orjson.dumps(rebuilt), content_type="application/json", headers=headers
            )
        else:
            # served byte for byte as the upstream sent it
            out = web.Response(body=raw, content_type="application/json", headers=headers)
        out.headers.update(self.decision_headers(action.value))
        self.annotate(out, guard)
        self.finish_record(action=action.value, upstream_status=resp.status)
        return out

    def blocked_response(self, guard: ResponseGuard, action: Action, upstream: dict | None):
        breaches = guard.enforced_breaches()
        stopper = guard.stopped_by or (breaches[0] if breaches else None)
        config = stopper.config if stopper is not None else None
        message = self.client_message(config, action)
        if config is not None and config.error_response:
            err = GatewayError(message, code="content-filtered", status=400)
            err.type = "invalid_request_error"
            return web.Response(
                status=400,
                body=orjson.dumps(self.adapter.error_body(err)),
                content_type="application/json",
            )
        body = self.adapter.blocked(self.info, upstream, message)
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    @staticmethod
    def client_message(config, action: Action) -> str:
        if config is None:
            return "The response was withheld by a governance policy."
        if action is Action.REVIEW and "message" not in config.model_fields_set:
            return HELD_MESSAGE
        return config.message

    # -- streamed -------------------------------------------------------------------
    async def stream(self, resp, route: Route, sent: float, deadline: float):
        ctype = resp.headers.get("content-type", "")
        if "text/event-stream" not in ctype:
            raise UpstreamMalformed(
                f"upstream {route.name} answered a stream request with {ctype or 'no content type'}"
            )
        translator = self.adapter.translator(self.info)
        sources = translator.sources
        self.add_header_sources(resp, sources.items, sources.errors)
        guard = self.new_guard(route, sources.items, sources.errors)
        parser = SSEParser()
        pending = self.pending
        self.upstream_headers = up.response_headers(resp.headers)
        done = False
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                self.busy.stop()
                async for chunk in resp.content.iter_any():
                    self.busy.start()
                    items = [item for ev in parser.feed(chunk) for item in translator.parse(ev)]
                    done = await self.on_items(coalesce(items), translator, guard, pending)
                    if guard.stopped:
                        # a review hold reads on from here to keep the whole answer
                        self.unread = (resp, parser, items)
                    if guard.stopped or done:
                        break
                    self.busy.stop()
                self.busy.start()
                if not guard.stopped and not done:
                    items = [item for ev in parser.close() for item in translator.parse(ev)]
                    done = await self.on_items(items, translator, guard, pending)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.busy.start()
            err = up.map_read_error(route, exc)
            self.upstream_seconds += time.perf_counter() - sent
            return await self.stream_failed(err, route, guard, translator)
        self.upstream_seconds += time.perf_counter() - sent
        if guard.stopped:
            return await self.stream_cut(route, guard, translator)
        if not done:
            err = UpstreamMalformed(
                f"upstream {route.name} ended the stream without its terminator"
            )
            return await self.stream_failed(err, route, guard, translator)
        guard.close()
        if self.response is None:
            await self.open_stream(guard.action().value)
        await self.write_eof()
        action = guard.action()
        self.finish_record(action=action.value, upstream_status=resp.status, stream=True)
        return self.response  # type: ignore[return-value]

    async def on_items(self, items: list, translator, guard: ResponseGuard, pending: deque) -> bool:
        """Handle parsed upstream items; True when the stream's terminator was among them."""
        terminal = False
        for item in items:
            if isinstance(item, Text):
                await self.release(translator, guard, pending, item.key, item.text, final=False)
                if guard.stopped:
                    return False
                continue
            if isinstance(item, End):
                await self.release(translator, guard, pending, item.key, "", final=True)
                if guard.stopped:
                    return False
            elif isinstance(item, Done):
                self.upstream_done = True
                for key, seg in list(guard.segments.items()):
                    if not seg.closed:
                        await self.release(translator, guard, pending, key, "", final=True)
                        if guard.stopped:
                            return False
                terminal = True
            pending.append((item, self.positions(guard, item)))
            await self.flush_pending(translator, guard, pending)
        return terminal

    async def release(
        self, translator, guard: ResponseGuard, pending: deque, key: str, text: str, *, final: bool
    ) -> None:
        """Scan new text of a segment and send what is cleared, in upstream order."""
        before = guard.segments[key].released if key in guard.segments else 0
        out = await guard.feed(key, text, final=final)
        if guard.stopped or not out:
            return
        self.text_ready = True
        # events that came before this text go first, the ones after it follow
        await self.flush_pending(translator, guard, pending, caps={key: before})
        await self.emit(translator.render_text(key, out))
        await self.flush_pending(translator, guard, pending)

    @staticmethod
    def positions(guard: ResponseGuard, item) -> dict[str, int]:
        """How much text of which segments must be out before ``item`` may follow."""
        key = item.key if isinstance(item, (Raw, End)) else None
        if key is not None:
            seg = guard.segments.get(key)
            return {key: len(seg.text) if seg else 0}
        return {k: len(seg.text) for k, seg in guard.segments.items()}

    async def flush_pending(
        self, translator, guard: ResponseGuard, pending: deque, caps: dict[str, int] | None = None
    ) -> None:
        """Send queued events in order, each once the text before it has gone out."""
        while pending:
            item, positions = pending[0]
            if (
                self.response is None
                and isinstance(item, Raw)
                and item.lead
                and not (self.upstream_done or self.text_ready)
            ):
                return
            for key, pos in positions.items():
                seg = guard.segments.get(key)
                if seg is None:
                    continue
                released = min(seg.released, caps[key]) if caps and key in caps else seg.released
                if released < pos:
                    return
            pending.popleft()
            released_texts = {k: s.released_text for k, s in guard.segments.items()}
            data = translator.render(item, released_texts)
            if data:
                await self.emit(data)

    async def open_stream(self, decision: str) -> None:
        response = web.StreamResponse(status=200, headers=self.upstream_headers)
        response.content_type = "text/event-stream"
        response.headers["cache-control"] = "no-cache"
        response.headers.update(self.decision_headers(decision))
        self.response = response
        self.busy.stop()
        await response.prepare(self.request)
        self.busy.start()

    async def emit(self, data: bytes) -> None:
        if self.response is None:
            guard = self.guard
            await self.open_stream(guard.action().value if guard else "allow")
        self.busy.stop()
        try:
            # a client that stops reading must not pin the upstream forever
            async with asyncio.timeout(self.route.timeouts.idle):
                await self.response.write(data)  # type: ignore[union-attr]
        except (ConnectionResetError, aiohttp.ClientConnectionResetError, TimeoutError):
            self.client_gone = True
            raise asyncio.CancelledError() from None
        finally:
            self.busy.start()

    async def write_eof(self) -> None:
        self.busy.stop()
        try:
            await self.response.write_eof()  # type: ignore[union-attr]
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.client_gone = True
        finally:
            self.busy.start()

    async def stream_cut(self, route: Route, guard: ResponseGuard, translator):
        guard.close()
        action = guard.action()
        if action is Action.FALLBACK and self.response is None and self.fallback_possible(route):
            self.attempts[-1]["action"] = action.value
            raise FallbackWanted(self.breach_summary(guard))
        stopper = guard.stopped_by
        config = stopper.config if stopper else None
        if action is Action.REVIEW and "review" in self.gw.services:
            out = await self.gw.services["review"].hold_stream(
                self, guard, translator, self.unread
            )
            self.finish_record(action=action.value, stream=True, cut=out is self.response)
            return out
        if self.response is None and config is not None and config.error_response:
            self.finish_record(action=action.value, stream=True)
            return self.blocked_response(guard, action, None)
        open_keys = [k for k, s in guard.segments.items() if not s.closed] or list(guard.segments)
        await self.send_preamble(translator, guard)
        if guard.chars_released() == 0:
            # nothing reached the client yet: say why instead of an empty answer
            key = open_keys[0] if open_keys else "0"
            await self.emit(translator.render_text(key, self.client_message(config, action)))
        await self.emit(translator.cut(open_keys, "content_filter", self.decision_id))
        await self.write_eof()
        self.finish_record(action=action.value, stream=True, cut=True)
        return self.response

    async def send_preamble(self, translator, guard: ResponseGuard) -> None:
        """Send the held preamble (role, message start…) so an ending is well-formed."""
        self.text_ready = True
        await self.flush_pending(translator, guard, self.pending)

    async def stream_failed(
        self, err: GatewayError, route: Route, guard: ResponseGuard, translator
    ):
        self.gw.metrics.upstream_errors.labels(route.name, err.code).inc()
        if self.response is None:
            raise err
        # text already scanned to its end is safe to release before the error
        for key, seg in list(guard.segments.items()):
            if not seg.closed and not guard.stopped:
                out = await guard.finish(key)
                if out and not guard.stopped:
                    await self.emit(translator.render_text(key, out))
        guard.close()
        self.attempts[-1]["error"] = err.code
        await self.emit(translator.error(err))
        await self.write_eof()
        self.finish_record(action=guard.action().value, stream=True, error=err)
        return self.response

    # -- shared -----------------------------------------------------------------------
    def new_guard(self, route: Route, sources: list, errors: list) -> ResponseGuard:
        policies = self.policy_set.for_route(route.name) if self.policy_set else []
        if self.containment is not None and self.containment.mode == "review_all":
            policies = [*policies, HOLD_ALL]
        self.guard = ResponseGuard(
            policies,
            self.scan_context(route, sources, errors),
            decision_id=self.decision_id,
            thread_runner=self.gw.run_blocking,
        )
        return self.guard

    def add_header_sources(self, resp, items: list, errors: list) -> None:
        raw = resp.headers.get("x-rag-sources")
        if not raw:
            return
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            errors.append(f"x-rag-sources header: not JSON ({exc})")
            return
        found, problems = normalize_sources(parsed, "x-rag-sources")
        items.extend(found)
        errors.extend(problems)

    def breach_summary(self, guard: ResponseGuard) -> str:
        return ",".join(guard.breached()) or "error"

    def decision_headers(self, decision: str) -> dict[str, str]:
        headers = {"x-governance-decision": decision, "x-governance-decision-id": self.decision_id}
        if len(self.attempts) > 1:
            headers["x-governance-route"] = self.attempts[-1]["route"]
        return headers

    def annotate(self, out: web.StreamResponse, guard: ResponseGuard) -> None:
        flagged = [r.config.id for r in guard.results if r.status is Status.BREACH]
        if flagged:
            out.headers["x-governance-policies"] = ",".join(flagged)

    def finish_record(
        self,
        *,
        action: str,
        upstream_status: int | None = None,
        scanned: bool = True,
        stream: bool | None = None,
        cut: bool = False,
        error: GatewayError | None = None,
    ) -> None:
        self.busy.stop()
        guard = self.guard
        total = time.perf_counter() - self.started
        route = self.attempts[-1]["route"] if self.attempts else self.route.name
        record: dict[str, Any] = {
            "decision_id": self.decision_id,
            "ts": time.time(),
            "route": route,
            "upstream": self.attempts[-1]["upstream"] if self.attempts else self.route.upstream,
            "protocol": self.adapter.protocol,
            "path": self.request.path,
            "model": self.info.model,
            "stream": self.info.stream if stream is None else stream,
            "revision": self.policy_set.revision if self.policy_set else None,
            "action": action,
            "policies": guard.policy_records() if guard and scanned else [],
            "breached": guard.breached() if guard else [],
            "chars_released": guard.chars_released() if guard else 0,
            "cut": cut,
            "attempts": self.attempts,
            "upstream_status": upstream_status,
            "added_latency_ms": round(self.busy.total * 1000, 3),
            "upstream_ms": round(self.upstream_seconds * 1000, 3),
            "total_ms": round(total * 1000, 3),
            "client_disconnected": self.client_gone,
        }
        if error is not None:
            record["error"] = {"code": error.code, "message": error.message}
        self.record = record
        child = self.gw.metrics.child
        child("requests", route, action).inc()
        child("added_latency", route, "true" if record["stream"] else "false").observe(
            self.busy.total
        )
        if self.upstream_seconds:
            child("upstream_latency", route).observe(self.upstream_seconds)
        if guard and scanned:
            for result in guard.results:
                child("policy_time", result.config.id).observe(result.elapsed_ms / 1000)
                child("policy_status", result.config.id, result.status.value).inc()
        self.gw.on_decision(record)
