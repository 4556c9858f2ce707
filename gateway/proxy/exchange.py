"""One governed request: route, call upstream, scan, act, record.

Non-streamed answers are read whole, scanned, and served as the upstream
sent them unless a policy acts. Streams go through the hold-back protocol of
``gateway.policy.engine``: response headers are sent only with the first
released text, so until then a breach can still fall back to another route.

The exchange is the ``ClientChannel`` of its request: the hold and
containment flows talk to the client only through it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from gateway.config import Route
from gateway.contract.detector import ScanContext
from gateway.contract.policy import Action, Status
from gateway.contract.sources import normalize_sources
from gateway.errors import ContentFiltered, GatewayError, UpstreamError, UpstreamMalformed
from gateway.observability.tracing import RequestSpan
from gateway.policy.engine import ResponseGuard
from gateway.proxy import containment, holding
from gateway.proxy import upstream as up
from gateway.proxy.adapters import Adapter, RequestInfo
from gateway.proxy.adapters.base import Done, End, Picture, Raw, StreamTranslator, Text
from gateway.proxy.answers import client_message, error_response, json_response
from gateway.proxy.ports import AnswerBody, HoldPort
from gateway.proxy.sse import SSEEvent, SSEParser
from gateway.proxy.state import Gateway
from gateway.proxy.stopwatch import Stopwatch
from gateway.proxy.streaming import coalesce, read_rest
from gateway.proxy.variants import pick as pick_variant
from gateway.records.containment import Switch
from gateway.records.decision import Attempt, Containment, DecisionRecord
from gateway.records.review import Ticket

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Try:
    """An attempt while it runs (mutable, cheap); it becomes an ``Attempt`` in the record."""

    route: str
    upstream: str
    status: int | None = None
    error: str | None = None
    fell_back: str | None = None
    action: str | None = None
    skipped: str | None = None

    def frozen(self) -> Attempt:
        return Attempt(
            self.route,
            self.upstream,
            self.status,
            self.error,
            self.fell_back,
            self.action,
            self.skipped,
        )


@dataclass(slots=True)
class _Outcome:
    action: str
    upstream_status: int | None = None
    scanned: bool = True
    stream: bool | None = None
    cut: bool = False
    error: GatewayError | None = None


class _FallBack:
    """Returned by an attempt that wants the route's fallback to answer instead."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


# what reading an upstream shape an adapter did not foresee raises: still the
# upstream's malformed answer to the client (502), never our internal error (500)
_SHAPE_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError)


def _unreadable(adapter: Adapter, route: Route, exc: Exception) -> UpstreamMalformed:
    log.error(
        "the %s adapter could not read an answer of upstream %s",
        adapter.protocol,
        route.name,
        exc_info=exc,
    )
    return UpstreamMalformed(
        f"upstream {route.name} sent a {adapter.protocol} answer of a shape the gateway "
        f"cannot read ({type(exc).__name__})"
    )


def _parser_of(
    translator: StreamTranslator, adapter: Adapter, route: Route
) -> Callable[[list[SSEEvent]], list[Any]]:
    """The items of a read's events; a shape the translator did not foresee is malformed."""
    parse = translator.parse

    def items(events: list[SSEEvent]) -> list[Any]:
        # one guarded call per read, not per event: reads hold many events
        try:
            return [item for ev in events for item in parse(ev)]
        except GatewayError:
            raise
        except _SHAPE_ERRORS as exc:
            raise _unreadable(adapter, route, exc) from None

    return items


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
        variant: str | None = None,
    ):
        self.gw = gw
        self.request = request
        self.route = route
        # the route's variant serving this request (``route`` is as that variant serves it)
        self.variant = variant
        self.adapter = adapter
        self.info = info
        self.body = body
        self.decision_id = decision_id
        self.began = time.perf_counter()
        self.busy = Stopwatch()
        self.attempts: list[_Try] = []
        self.policy_set = gw.policies.current
        self.guard: ResponseGuard | None = None
        self.outcome: _Outcome | None = None
        self.response: web.StreamResponse | None = None
        self.translator: StreamTranslator | None = None
        # response headers for a stream, sent with its first byte
        self.pending_headers: CIMultiDict[str] = CIMultiDict()
        self.client_gone = False
        self.upstream_seconds = 0.0
        # the upstream stream has ended: nothing may wait any longer
        self.upstream_done = False
        # text is about to leave: preamble events may go ahead of it
        self.text_ready = False
        self.pending: deque[Any] = deque()
        # what a review hold still has to read of a stream cut short
        self.unread: tuple[aiohttp.ClientResponse, SSEParser, list] | None = None
        # the containment switch this request was answered under
        self.switch: Switch | None = None
        # the review item a hold stored
        self.ticket: Ticket | None = None
        # a review action whose hold failed, released anyway (review.on_store_down: allow)
        self.released_unreviewed: GatewayError | None = None
        # the journal holds this exchange's begin line
        self.begun = False
        # this request's trace span, while tracing is on
        self.span: RequestSpan | None = None

    @property
    def route_name(self) -> str:
        """The route answering now (the fallback's, after a fallback)."""
        return self.attempts[-1].route if self.attempts else self.route.name

    # -- the attempt loop ------------------------------------------------------
    async def run(self) -> web.StreamResponse:
        if self.gw.tracer is not None:
            self.span = self.gw.tracer.begin(self.request.headers, self.request.path)
        try:
            response = await self.answer()
            if not response.prepared:
                # sent from here, not after the handler returns, so that the
                # record below is built once the answer is on the wire
                await self.send_whole(response)
            return response
        finally:
            # the record is built and handed on off the response path, from
            # state nothing changes any more
            asyncio.get_running_loop().call_soon(self.publish)

    async def send_whole(self, response: web.StreamResponse) -> None:
        try:
            await response.prepare(self.request)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.client_gone = True

    async def answer(self) -> web.StreamResponse:
        """Try the route, then its fallback, until one answers (or fails for good)."""
        self.busy.start()
        route: Route | None = self.route
        used: set[str] = set()
        try:
            port = self.gw.containment
            switch = port.switch_for(self.route.name) if port is not None else None
            if switch is not None:
                self.switch = switch
                if switch.mode == "block":
                    response = await containment.kill_switch(
                        self.request, self.route, self.adapter, self.info, self.decision_id, switch
                    )
                    self.finish(action=Action.BLOCK.value, scanned=False)
                    return response
                if switch.mode == "fallback" and self.route.fallback:
                    used.add(self.route.name)
                    self.attempts.append(
                        _Try(self.route.name, self.route.upstream, skipped="containment")
                    )
                    route = self.served(self.gw.settings.route(self.route.fallback))
            while route is not None:
                used.add(route.name)
                nxt = (
                    self.served(self.gw.settings.route(route.fallback)) if route.fallback else None
                )
                can_fall_back = nxt is not None and nxt.name not in used
                try:
                    result = await self.attempt(route)
                except UpstreamError as err:
                    self.gw.metrics.upstream_errors.labels(route.name, err.code).inc()
                    if self.attempts and self.attempts[-1].route == route.name:
                        self.attempts[-1].error = err.code
                    else:
                        self.attempts.append(_Try(route.name, route.upstream, error=err.code))
                    if can_fall_back and not self.started_answer:
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
                    self.finish(action="error", error=err)
                    return error_response(err, self.adapter, self.decision_id)
                if isinstance(result, _FallBack):
                    if not can_fall_back:
                        raise AssertionError("fallback wanted without a fallback route")
                    self.attempts[-1].fell_back = result.reason
                    route = nxt
                    continue
                return result
            raise AssertionError("unreachable")  # pragma: no cover
        except asyncio.CancelledError:
            self.client_gone = True
            if self.outcome is None:
                self.finish(action="cancelled")
            raise
        finally:
            if self.outcome is None:
                self.finish(action="error")

    def served(self, route: Route) -> Route:
        """A fallback route as it serves this client: one of its variants, if it splits."""
        if not route.variants:
            return route
        return pick_variant(route, self.request.headers, self.gw.variants)[0]

    @property
    def started_answer(self) -> bool:
        return self.response is not None and self.response.prepared

    def can_fall_back(self, route: Route) -> bool:
        return route.fallback is not None and route.fallback not in {a.route for a in self.attempts}

    def scan_context(self, route: Route, sources: list, errors: list) -> ScanContext:
        return ScanContext(
            route=route.name,
            model=self.info.model,
            query=self.info.query,
            sources=sources,
            source_errors=errors,
            request=self.info.body,
        )

    async def attempt(self, route: Route) -> web.StreamResponse | _FallBack:
        self.attempts.append(_Try(route.name, route.upstream))
        headers = up.upstream_headers(self.request.headers, route, self.adapter.credential_header)
        if self.span is not None:
            self.span.inject(headers)
        url = up.upstream_url(route, self.request.path, self.request.query_string)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + route.timeouts.total
        self.busy.stop()
        sent = time.perf_counter()
        resp = await up.send(self.gw.http, route, "POST", url, headers, self.body)
        self.busy.start()
        self.attempts[-1].status = resp.status
        try:
            if resp.status >= 500:
                detail = await up.error_detail(resp)
                raise UpstreamError(f"upstream {route.name} answered {resp.status}{detail}")
            if resp.status >= 400:
                # the client's own mistake (bad key, unknown model): theirs to see, unchanged
                return await self.relay_client_error(resp, route, sent, deadline)
            if self.info.stream:
                return await self.stream(resp, route, sent, deadline)
            return await self.whole(resp, route, sent, deadline)
        finally:
            resp.close()

    async def relay_client_error(self, resp, route: Route, sent: float, deadline: float):
        self.busy.stop()
        raw = await up.read_body(
            resp, route, self.gw.settings.limits.max_upstream_body_bytes, deadline
        )
        self.busy.start()
        self.upstream_seconds += time.perf_counter() - sent
        self.finish(action="allow", upstream_status=resp.status, scanned=False)
        headers = up.response_headers(resp.headers)
        headers.update(self.decision_headers("allow"))
        return web.Response(
            status=resp.status, body=raw, headers=headers, content_type=resp.content_type
        )

    # -- non-streamed ------------------------------------------------------------
    async def whole(
        self, resp, route: Route, sent: float, deadline: float
    ) -> web.StreamResponse | _FallBack:
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
        try:
            segments = self.adapter.segments(body)
            images = self.adapter.images(body)
            sources = self.adapter.sources(body)
        except GatewayError:
            raise
        except _SHAPE_ERRORS as exc:
            raise _unreadable(self.adapter, route, exc) from None
        self.add_header_sources(resp, sources.items, sources.errors)
        guard = self.new_guard(route, sources.items, sources.errors)
        for key, text in segments:
            await guard.feed(key, text, final=True)
            if guard.stopped:
                break
        for key, image in images:
            if guard.stopped:
                break
            await guard.feed_image(key, image)
        guard.close()
        if self.gw.events.wants(AnswerBody):
            # the model's own decision, for monitors; they take it off the response path
            self.gw.events.publish(AnswerBody(route.name, body))
        action = guard.action()
        if action is Action.FALLBACK and self.can_fall_back(route):
            self.attempts[-1].action = action.value
            return _FallBack(self.breach_summary(guard))
        headers = up.response_headers(resp.headers)
        out: web.StreamResponse
        if action is Action.REVIEW and self.gw.hold is not None:
            # stored durably before the client hears anything
            out = await holding.hold_whole(self.hold_site(self.gw.hold, guard), guard, body)
            if self.released_unreviewed is not None:
                action = Action.ALLOW
        elif action in (Action.BLOCK, Action.REVIEW, Action.FALLBACK):
            out = self.blocked_response(guard, action, body)
        elif action is Action.REDACT:
            texts = {key: guard.segments[key].released_text for key, _ in segments}
            try:
                out = json_response(self.adapter.rebuild(body, texts, None), headers=headers)
            except GatewayError:
                raise
            except _SHAPE_ERRORS as exc:
                raise _unreadable(self.adapter, route, exc) from None
        else:
            # served byte for byte as the upstream sent it
            out = web.Response(body=raw, content_type="application/json", headers=headers)
        out.headers.update(self.decision_headers(action.value))
        self.annotate(out, guard)
        self.finish(
            action=action.value, upstream_status=resp.status, error=self.released_unreviewed
        )
        return out

    def blocked_response(
        self, guard: ResponseGuard, action: Action, upstream: dict | None
    ) -> web.Response:
        holder = guard.holder()
        config = holder.config if holder is not None else None
        message = client_message(config, action)
        if config is not None and config.error_response:
            return json_response(
                self.adapter.error_body(ContentFiltered(message)), status=ContentFiltered.status
            )
        return json_response(self.adapter.blocked(self.info, upstream, message))

    # -- streamed -------------------------------------------------------------------
    async def stream(
        self, resp, route: Route, sent: float, deadline: float
    ) -> web.StreamResponse | _FallBack:
        ctype = resp.headers.get("content-type", "")
        if "text/event-stream" not in ctype:
            raise UpstreamMalformed(
                f"upstream {route.name} answered a stream request with {ctype or 'no content type'}"
            )
        translator = self.translator = self.adapter.translator(self.info)
        parse = _parser_of(translator, self.adapter, route)
        sources = translator.sources
        self.add_header_sources(resp, sources.items, sources.errors)
        guard = self.new_guard(route, sources.items, sources.errors)
        guard.images_unread = not translator.reads_images
        parser = SSEParser(self.gw.settings.limits.max_upstream_event_bytes)
        pending = self.pending
        self.pending_headers = up.response_headers(resp.headers)
        done = False
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                self.busy.stop()
                async for chunk in resp.content.iter_any():
                    self.busy.start()
                    items = parse(parser.feed(chunk))
                    done = await self.on_items(coalesce(items), translator, guard, pending)
                    if guard.stopped:
                        # a review hold reads on from here to keep the whole answer
                        self.unread = (resp, parser, items)
                    if guard.stopped or done:
                        break
                    self.busy.stop()
                self.busy.start()
                if not guard.stopped and not done:
                    items = parse(parser.close())
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
        self.finish(action=guard.action().value, upstream_status=resp.status, stream=True)
        return self.response  # type: ignore[return-value]

    async def on_items(self, items: list, translator, guard: ResponseGuard, pending: deque) -> bool:
        """Handle parsed upstream items; True when the stream's terminator was among them."""
        terminal = False
        for item in items:
            if isinstance(item, Picture):
                # checked before the event carrying it (the next item) is queued
                await guard.feed_image(item.key, item.image)
                if guard.stopped:
                    return False
                continue
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
        response = web.StreamResponse(status=200, headers=self.pending_headers)
        response.content_type = "text/event-stream"
        response.headers["cache-control"] = "no-cache"
        response.headers.update(self.decision_headers(decision))
        self.response = response
        self.begin(decision)
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

    # -- ClientChannel ---------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.response is not None

    def set_headers(self, headers: Mapping[str, str]) -> None:
        if self.response is not None:
            raise RuntimeError("the answer has started; its headers are sent")
        self.pending_headers.update(headers)

    async def send_text(self, key: str, text: str) -> None:
        assert self.translator is not None and self.guard is not None
        # the preamble (role, message start…) goes first, so the stream stays well-formed
        await self.send_preamble(self.translator, self.guard)
        await self.emit(self.translator.render_text(key, text))

    async def end(
        self, reason: str, keys: list[str] | None = None, ticket: Ticket | None = None
    ) -> None:
        assert self.translator is not None and self.guard is not None
        await self.send_preamble(self.translator, self.guard)
        if ticket is not None:
            marker = self.translator.review_marker(ticket)
            if marker:
                await self.emit(marker)
        await self.emit(self.translator.cut(keys or [], reason, self.decision_id, ticket))
        await self.write_eof()

    async def send_error(self, err: GatewayError) -> None:
        assert self.translator is not None
        await self.emit(self.translator.error(err))
        await self.write_eof()

    # -- the end of a stream ---------------------------------------------------------
    def open_keys(self, guard: ResponseGuard) -> list[str]:
        """Segments still open when the stream stopped (or every one, if none is)."""
        texts = [k for k, s in guard.segments.items() if s.ctx.image is None]
        return [k for k in texts if not guard.segments[k].closed] or texts

    async def stream_cut(
        self, route: Route, guard: ResponseGuard, translator
    ) -> web.StreamResponse | _FallBack:
        guard.close()
        action = guard.action()
        if action is Action.FALLBACK and self.response is None and self.can_fall_back(route):
            self.attempts[-1].action = action.value
            return _FallBack(self.breach_summary(guard))
        stopper = guard.stopped_by
        config = stopper.config if stopper else None
        if action is Action.REVIEW and self.gw.hold is not None:
            # the whole answer is kept for the reviewer, read to its end
            seen = {k: seg.text for k, seg in guard.segments.items() if seg.ctx.image is None}
            self.busy.stop()
            left = route.timeouts.total - (time.perf_counter() - self.began)
            texts, complete = await read_rest(seen, translator, self.unread, left, route.name)
            self.busy.start()
            held = await holding.hold_stream(
                self.hold_site(self.gw.hold, guard), guard, texts, complete, self.open_keys(guard)
            )
            if self.released_unreviewed is not None:
                self.finish(action="allow", stream=True, error=self.released_unreviewed)
                return self.response  # type: ignore[return-value]
            self.finish(action=action.value, stream=True, cut=held is None)
            return held or self.response  # type: ignore[return-value]
        if self.response is None and config is not None and config.error_response:
            self.finish(action=action.value, stream=True)
            return self.blocked_response(guard, action, None)
        open_keys = self.open_keys(guard)
        if guard.chars_released() == 0:
            # nothing reached the client yet: say why instead of an empty answer
            key = open_keys[0] if open_keys else "0"
            await self.send_text(key, client_message(config, action))
        await self.end("content_filter", open_keys)
        self.finish(action=action.value, stream=True, cut=True)
        return self.response  # type: ignore[return-value]

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
        # text already scanned to its end is safe to release before the error;
        # events queued behind it came after it upstream and are not sent
        for key, seg in list(guard.segments.items()):
            if not seg.closed and not guard.stopped:
                out = await guard.finish(key)
                if out and not guard.stopped:
                    await self.emit(translator.render_text(key, out))
        guard.close()
        self.attempts[-1].error = err.code
        await self.send_error(err)
        self.finish(action=guard.action().value, stream=True, error=err)
        return self.response

    # -- shared -----------------------------------------------------------------------
    def hold_site(self, port: HoldPort, guard: ResponseGuard) -> holding.HoldSite:
        return holding.HoldSite(
            port=port,
            channel=self,
            adapter=self.adapter,
            info=self.info,
            request=self.request,
            decision_id=self.decision_id,
            revision=self.policy_set.revision if self.policy_set else None,
            route=self.route_name,
            busy=self.busy,
            on_ticket=self.note_ticket,
            release_if_unavailable=self.gw.settings.review.on_store_down == "allow"
            and holding.releasable(guard),
            on_released=self.note_released,
        )

    def note_ticket(self, ticket: Ticket) -> None:
        self.ticket = ticket

    def note_released(self, err: GatewayError) -> None:
        self.released_unreviewed = err

    def new_guard(self, route: Route, sources: list, errors: list) -> ResponseGuard:
        policies = self.policy_set.for_route(route.name) if self.policy_set else []
        if self.switch is not None and self.switch.mode == "review_all":
            policies = [*policies, containment.HOLD_ALL]
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
        if self.variant is not None:
            headers["x-governance-variant"] = self.variant
        if len(self.attempts) > 1:
            headers["x-governance-route"] = self.attempts[-1].route
        return headers

    def annotate(self, out: web.StreamResponse, guard: ResponseGuard) -> None:
        flagged = [r.config.id for r in guard.results if r.status is Status.BREACH]
        if flagged:
            out.headers["x-governance-policies"] = ",".join(flagged)

    # -- the record ---------------------------------------------------------------------
    def finish(
        self,
        *,
        action: str,
        upstream_status: int | None = None,
        scanned: bool = True,
        stream: bool | None = None,
        cut: bool = False,
        error: GatewayError | None = None,
    ) -> None:
        """Say how the exchange ended; the record is built once, when it is over."""
        self.outcome = _Outcome(action, upstream_status, scanned, stream, cut, error)
        if not self.begun:
            # a whole answer is about to leave
            self.begin(action, error)
        self.busy.stop()

    def begin(self, action: str, error: GatewayError | None = None) -> None:
        """Journal what a record needs if the process dies before the answer is over."""
        self.begun = True
        guard = self.guard
        last = self.attempts[-1] if self.attempts else None
        route = self.route
        # the verdicts an incident rule may act on
        flagged = (
            [
                (c.id, c.kind, c.mode, r.status.value, c.action.value, c.severity.value)
                for r in guard.results
                if r.status is not Status.PASS
                for c in (r.config,)
            ]
            if guard is not None
            else None
        )
        self.gw.journal.begin(
            (
                self.decision_id,
                time.time(),
                last.route if last else route.name,
                last.upstream if last else route.upstream,
                self.adapter.protocol,
                self.request.path,
                self.info.model,
                self.info.stream,
                action,
                flagged,
                (error.code, error.message) if error is not None else None,
            )
        )

    def record(self) -> DecisionRecord:
        assert self.outcome is not None
        outcome, guard = self.outcome, self.guard
        scanned = guard is not None and outcome.scanned
        last = self.attempts[-1] if self.attempts else None
        switch = self.switch
        return DecisionRecord(
            decision_id=self.decision_id,
            ts=time.time(),
            route=last.route if last else self.route.name,
            upstream=last.upstream if last else self.route.upstream,
            protocol=self.adapter.protocol,
            path=self.request.path,
            model=self.info.model,
            stream=self.info.stream if outcome.stream is None else outcome.stream,
            revision=self.policy_set.revision if self.policy_set else None,
            action=outcome.action,
            policies=guard.verdicts() if scanned and guard is not None else (),
            breached=tuple(guard.breached()) if guard else (),
            chars_released=guard.chars_released() if guard else 0,
            cut=outcome.cut,
            attempts=tuple(a.frozen() for a in self.attempts),
            upstream_status=outcome.upstream_status,
            added_latency_ms=round(self.busy.total * 1000, 3),
            upstream_ms=round(self.upstream_seconds * 1000, 3),
            total_ms=round((time.perf_counter() - self.began) * 1000, 3),
            client_disconnected=self.client_gone,
            error=(
                {"code": outcome.error.code, "message": outcome.error.message}
                if outcome.error is not None
                else None
            ),
            containment=(
                Containment(switch.mode, self.route.name, switch.incident_id) if switch else None
            ),
            review_id=self.ticket.review_id if self.ticket else None,
            variant=self.variant,
        )

    def publish(self) -> None:
        """Count the exchange in the metrics and hand its record to the event bus."""
        try:
            record = self.record()
        except Exception:  # a bug here must not take the loop's callback down silently
            log.exception("could not build the decision record of %s", self.decision_id)
            if self.span is not None:
                # the trace still shows the request, failed, rather than losing it
                self.span.abandon("the decision record could not be built")
            return
        child = self.gw.metrics.child
        child("requests", record.route, record.action).inc()
        if record.variant is not None:
            child("variant_requests", record.route, record.variant, record.action).inc()
        child("added_latency", record.route, "true" if record.stream else "false").observe(
            self.busy.total
        )
        if self.upstream_seconds:
            child("upstream_latency", record.route).observe(self.upstream_seconds)
        guard = self.guard
        if guard is not None and self.outcome is not None and self.outcome.scanned:
            for result in guard.results:
                child("policy_time", result.config.id).observe(result.elapsed_ms / 1000)
                child("policy_status", result.config.id, result.status.value).inc()
        self.gw.events.publish(record)
        if self.span is not None:
            # after the record is handed on: a tracing failure must not cost the audit trail
            try:
                self.span.finish(record)
            except Exception:
                log.exception("could not end the trace span of %s", self.decision_id)
