"""The review queue as a gateway subsystem.

``install(gw)`` puts a ``ReviewService`` in ``gw.services["review"]``; the
proxy hands it every response a ``review`` action holds. The item is
committed to the store before the client hears anything, so an
acknowledged hold survives a crash. Reviewers decide through the admin API
or the web UI; clients learn the outcome by polling, by a signed callback,
or, on routes that allow it, by waiting a few seconds on the original call.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from gateway.errors import BadRequest, Conflict, Forbidden, GatewayError, NotFound
from gateway.policy.models import Action, Severity
from gateway.proxy.adapters import RequestInfo
from gateway.proxy.adapters.base import Done, Text
from gateway.proxy.state import Gateway
from gateway.review import wire
from gateway.review.sessions import SessionBook
from gateway.review.store import OPEN, Changed, ReviewStore, new_id

if TYPE_CHECKING:
    from gateway.auth import Principal
    from gateway.policy.engine import ResponseGuard
    from gateway.proxy.handler import Exchange

log = logging.getLogger(__name__)

RESULT_PATH = "/governance/v1/reviews/{id}/result"
PRIORITY_STEP = 10
SYSTEM = "system"


class ReviewUnavailable(GatewayError):
    code = "review-unavailable"
    status = 503


class ReviewMetrics:
    def __init__(self, registry) -> None:
        self.depth = Gauge(
            "gateway_review_queue_depth",
            "Review items by state and severity",
            ["state", "severity"],
            registry=registry,
        )
        self.overdue = Gauge(
            "gateway_review_overdue", "Pending review items past their SLA", registry=registry
        )
        self.decision_time = Histogram(
            "gateway_review_time_to_decision_seconds",
            "Time from hold to decision",
            ["outcome"],
            buckets=(10, 30, 60, 300, 900, 1800, 3600, 14400, 86400, 604800),
            registry=registry,
        )
        self.decisions = Counter(
            "gateway_review_decisions_total",
            "Review decisions",
            ["policy", "outcome"],
            registry=registry,
        )
        self.approval_rate = Gauge(
            "gateway_review_approval_rate",
            "Share of a policy's reviewed items that reviewers approved (its false-positive rate)",
            ["policy"],
            registry=registry,
        )
        self.hold_time = Histogram(
            "gateway_review_hold_seconds",
            "Time to store a held response durably",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
            registry=registry,
        )
        self.callbacks = Counter(
            "gateway_review_callbacks_total", "Callback deliveries", ["outcome"], registry=registry
        )
        self.escalations = Counter(
            "gateway_review_escalations_total", "Escalations", ["reason"], registry=registry
        )


def public_view(item: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """An item as the reviewer API shows it (the client's key id stays inside)."""
    now = time.time() if now is None else now
    out = {k: v for k, v in item.items() if k not in ("key_id", "op_token")}
    out["overdue_now"] = item["state"] == OPEN and item["sla_deadline"] < now
    return out


class ReviewService:
    def __init__(self, gw: Gateway):
        self.gw = gw
        self.settings = gw.settings.review
        self.db = ReviewStore(gw.store)
        self.metrics = ReviewMetrics(gw.metrics.registry)
        # events for other subsystems (incidents): called with a dict like
        # {"type": "review.escalated", "item": {...}, "reason": "overdue"}
        self.listeners: list[Callable[[dict[str, Any]], Any]] = []
        self._waiters: dict[str, asyncio.Event] = {}
        self._links: dict[str, str] = {}
        self._callback_wake: asyncio.Event | None = None
        self.sessions = SessionBook(self.settings.session_ttl)

    # -- lifecycle ----------------------------------------------------------------
    async def start(self, gw: Gateway) -> None:
        self._callback_wake = asyncio.Event()
        await self.refresh_metrics()
        gw.background.append(asyncio.create_task(self._sweeper(), name="review-sla"))
        gw.background.append(asyncio.create_task(self._callbacks(), name="review-callbacks"))

    def on_decision(self, record: dict[str, Any]) -> None:
        # link the decision record to the item it produced
        review_id = self._links.pop(record.get("decision_id", ""), None)
        if review_id:
            record["review_id"] = review_id

    def emit(self, event: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            try:
                result = listener(event)
                if asyncio.iscoroutine(result):
                    asyncio.ensure_future(result)
            except Exception:  # another subsystem's bug must not fail a review
                log.exception("review listener failed")

    # -- holding ---------------------------------------------------------------
    def _stopper(self, guard: ResponseGuard):
        if guard.stopped_by is not None:
            return guard.stopped_by
        enforced = guard.enforced_breaches()
        reviewing = [r for r in enforced if r.effective_action() is Action.REVIEW]
        found = reviewing or enforced
        return found[0] if found else None

    def build_item(
        self,
        ex: Exchange,
        guard: ResponseGuard,
        texts: dict[str, str],
        response: dict[str, Any] | None,
        complete: bool,
    ) -> dict[str, Any]:
        now = time.time()
        stopper = self._stopper(guard)
        config = stopper.config if stopper is not None else None
        opts = config.review if config is not None else None
        route_name = ex.attempts[-1]["route"] if ex.attempts else ex.route.name
        route = self.gw.settings.route(route_name)
        breached = guard.enforced_breaches()
        severity: Severity = max(
            (r.config.severity for r in breached),
            key=lambda s: s.rank,
            default=config.severity if config else Severity.MEDIUM,
        )
        private = route.review.privacy == "hash-and-evidence" or (opts and not opts.store_text)
        sla = (opts.sla if opts and opts.sla else None) or self.settings.sla[severity.value]
        policies = guard.breached() or ([config.id] if config else ["unknown"])
        record = {
            "decision_id": ex.decision_id,
            "revision": ex.policy_set.revision if ex.policy_set else None,
            "route": route_name,
            "protocol": ex.adapter.protocol,
            "path": ex.request.path,
            "model": ex.info.model,
            "stream": ex.info.stream,
            "action": Action.REVIEW.value,
            "policies": guard.policy_records(),
            "breached": guard.breached(),
            "chars_released": guard.chars_released(),
            "segment_keys": sorted(texts),
            "complete": complete,
            "n": ex.info.n,
        }
        request: dict[str, Any] = {
            "method": ex.request.method,
            "path": ex.request.path,
            "query": ex.request.query_string,
        }
        if not private:
            request["headers"] = wire.safe_headers(ex.request.headers)
            request["body"] = ex.info.body
        tenant = ex.request.headers.get("x-governance-tenant") or ex.request.headers.get(
            "openai-organization"
        )
        return {
            "id": new_id(),
            "decision_id": ex.decision_id,
            "created_at": now,
            "updated_at": now,
            "state": OPEN,
            "outcome": None,
            "route": route_name,
            "protocol": ex.adapter.protocol,
            "path": ex.request.path,
            "model": ex.info.model,
            "stream": ex.info.stream,
            "policy": config.id if config else policies[0],
            "policies": policies,
            "severity": severity.value,
            "severity_rank": severity.rank,
            "priority": severity.rank * PRIORITY_STEP,
            "sla_deadline": now + sla,
            "expires_at": now + (opts.expire_after if opts else 7 * 86400),
            "expire_action": opts.expire_action if opts else "reject",
            "retain_until": now + route.review.retention_days * 86400,
            "overdue": False,
            "escalations": 0,
            "assignee": None,
            "key_id": wire.api_key_id(ex.request.headers),
            "tenant": tenant,
            "text_stored": not private,
            "text_hash": wire.text_hash(texts),
            "request": request,
            "response": None if private else response,
            "segments": None if private else texts,
            "record": record,
            "edited": None,
            "reason": None,
            "decided_by": None,
            "decided_at": None,
            "version": 1,
            "op_token": None,
        }

    async def _store(self, item: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            await self.db.insert(item)
        except Exception as exc:
            log.exception("could not store a held response")
            raise ReviewUnavailable(
                "the response needs review but could not be stored; try again"
            ) from exc
        self.metrics.hold_time.observe(time.perf_counter() - started)
        self._links[item["decision_id"]] = item["id"]
        self.metrics.depth.labels(OPEN, item["severity"]).inc()
        self.emit({"type": "review.held", "item": public_view(item)})

    def _headers(self, item: dict[str, Any], status: str = "pending") -> dict[str, str]:
        return {
            "x-governance-review-id": item["id"],
            "x-governance-review-status": status,
            "x-governance-review-result": RESULT_PATH.format(id=item["id"]),
        }

    async def hold(
        self, ex: Exchange, guard: ResponseGuard, upstream: dict[str, Any]
    ) -> web.Response:
        """Hold a non-streamed answer; answer with a placeholder or, if waited for, the outcome."""
        texts = dict(ex.adapter.segments(upstream))
        item = self.build_item(ex, guard, texts, upstream, complete=True)
        try:
            await self._store(item)
        except ReviewUnavailable as err:
            return web.Response(
                status=err.status,
                body=orjson.dumps(ex.adapter.error_body(err)),
                content_type="application/json",
            )
        config = self._stopper(guard).config
        decided = await self._wait(ex, item, config)
        if decided is not None and decided["state"] != OPEN:
            result = self.result_body(decided)
            headers = self._headers(decided, result["status"])
            if result.get("response") is not None:
                return web.Response(
                    body=orjson.dumps(result["response"]),
                    content_type="application/json",
                    headers=headers,
                )
            message = result.get("reason") or ex.client_message(config, Action.REVIEW)
            body = ex.adapter.blocked(ex.info, upstream, message)
            return web.Response(
                body=orjson.dumps(body), content_type="application/json", headers=headers
            )
        message = ex.client_message(config, Action.REVIEW)
        if config is not None and config.error_response:
            held = GatewayError(message, code="held-for-review", status=400)
            held.type = "invalid_request_error"
            return web.Response(
                status=400,
                body=orjson.dumps(ex.adapter.error_body(held)),
                content_type="application/json",
                headers=self._headers(item),
            )
        body = ex.adapter.blocked(ex.info, upstream, message)
        body["x_governance"] = {
            "review_id": item["id"],
            "status": "pending",
            "result": RESULT_PATH.format(id=item["id"]),
        }
        if ex.adapter.protocol == "openai-responses":
            body["metadata"] = dict(body.get("metadata") or {}, governance_review_id=item["id"])
        return web.Response(
            body=orjson.dumps(body), content_type="application/json", headers=self._headers(item)
        )

    async def _read_rest(
        self, ex: Exchange, guard: ResponseGuard, translator, unread
    ) -> tuple[dict[str, str], bool]:
        """Read the upstream stream to its end; return every segment's full text."""
        texts = {key: seg.text for key, seg in guard.segments.items()}
        if not unread:
            return texts, False
        resp, parser, items = unread
        for key, piece in unfed_text(items, texts):
            texts[key] = texts.get(key, "") + piece
        done = any(isinstance(i, Done) for i in items)
        # a copy, so the state the cut events are rendered from stays as the client saw it
        shadow = copy.deepcopy(translator)

        def take(evs) -> bool:
            for ev in evs:
                for item in shadow.parse(ev):
                    if isinstance(item, Text):
                        texts[item.key] = texts.get(item.key, "") + item.text
                    elif isinstance(item, Done):
                        return True
            return False

        if done:
            return texts, True
        ex.busy.stop()
        try:
            left = max(ex.route.timeouts.total - (time.perf_counter() - ex.started), 0.001)
            async with asyncio.timeout(left):
                async for chunk in resp.content.iter_any():
                    if take(parser.feed(chunk)):
                        done = True
                        break
                else:
                    done = take(parser.close())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("held stream from %s broke off: %s", ex.route.name, exc)
        finally:
            ex.busy.start()
        return texts, done

    async def hold_stream(self, ex: Exchange, guard: ResponseGuard, translator, unread):
        """Hold a streamed answer: read it whole, store it, then end the client's stream."""
        texts, complete = await self._read_rest(ex, guard, translator, unread)
        body = wire.synthesize(ex.adapter, ex.info, texts)
        item = self.build_item(ex, guard, texts, body, complete=complete)
        config = self._stopper(guard).config
        open_keys = [k for k, s in guard.segments.items() if not s.closed] or list(guard.segments)
        try:
            await self._store(item)
        except ReviewUnavailable as err:
            if ex.response is None:
                return web.Response(
                    status=err.status,
                    body=orjson.dumps(ex.adapter.error_body(err)),
                    content_type="application/json",
                )
            await ex.emit(translator.error(err))
            await ex.write_eof()
            return ex.response
        if ex.response is None:
            if config is not None and config.error_response:
                held = GatewayError(
                    ex.client_message(config, Action.REVIEW), code="held-for-review", status=400
                )
                held.type = "invalid_request_error"
                return web.Response(
                    status=400,
                    body=orjson.dumps(ex.adapter.error_body(held)),
                    content_type="application/json",
                    headers=self._headers(item),
                )
            # nothing sent yet: the id can still go in the response headers
            ex.upstream_headers.update(self._headers(item))
            decided = await self._wait(ex, item, config)
            if decided is not None and decided["state"] != OPEN:
                result = self.result_body(decided)
                final = result.get("texts")
                if result["status"] in ("approved", "expired") and final:
                    ex.upstream_headers["x-governance-review-status"] = result["status"]
                    for key in sorted(final):
                        await ex.emit(translator.render_text(key, final[key]))
                    await ex.emit(translator.cut(sorted(final), "stop", ex.decision_id))
                    await ex.write_eof()
                    return ex.response
                ex.upstream_headers["x-governance-review-status"] = result["status"]
                key = open_keys[0] if open_keys else "0"
                await ex.emit(
                    translator.render_text(
                        key, result.get("reason") or ex.client_message(config, Action.REVIEW)
                    )
                )
                await ex.emit(translator.cut(open_keys, "content_filter", ex.decision_id))
                await ex.write_eof()
                return ex.response
        if guard.chars_released() == 0:
            key = open_keys[0] if open_keys else "0"
            await ex.emit(translator.render_text(key, ex.client_message(config, Action.REVIEW)))
        marker = wire.stream_marker(
            ex.adapter.protocol, item["id"], RESULT_PATH.format(id=item["id"])
        )
        if marker:
            await ex.emit(marker)
        cut = translator.cut(open_keys, "content_filter", ex.decision_id)
        await ex.emit(wire.tag_cut(ex.adapter.protocol, cut, item["id"]))
        await ex.write_eof()
        return ex.response

    async def _wait(self, ex: Exchange, item: dict[str, Any], config) -> dict | None:
        opts = config.review if config is not None else None
        if opts is None or opts.mode != "wait" or opts.wait_seconds <= 0:
            return None
        event = self._waiters.setdefault(item["id"], asyncio.Event())
        loop = asyncio.get_running_loop()
        end = loop.time() + opts.wait_seconds
        ex.busy.stop()
        try:
            while True:
                left = end - loop.time()
                if left <= 0:
                    return None
                try:
                    # a decision taken by another process only shows in the store
                    await asyncio.wait_for(event.wait(), min(left, 1.0))
                except TimeoutError:
                    pass
                current = await self.db.get(item["id"])
                if current is None or current["state"] != OPEN:
                    return current
        finally:
            self._waiters.pop(item["id"], None)
            ex.busy.start()

    # -- outcomes ------------------------------------------------------------------
    def _adapter(self, item: dict[str, Any]):
        route = next((r for r in self.gw.settings.routes if r.name == item["route"]), None)
        return wire.adapter_named(
            item["protocol"],
            route.protocol if route else None,
            item["path"],
            self.gw.rag_adapters.get(item["route"]),
        )

    def result_body(self, item: dict[str, Any]) -> dict[str, Any]:
        """What the client is told: pending, approved (with the response), rejected, expired."""
        out: dict[str, Any] = {
            "id": item["id"],
            "decision_id": item["decision_id"],
            "status": item["state"],
        }
        if item["state"] == OPEN:
            out["sla_deadline"] = item["sla_deadline"]
            return out
        out["decided_at"] = item["decided_at"]
        approved = item["state"] == "approved" or (
            item["state"] == "expired" and item["outcome"] == "approved"
        )
        if item["state"] == "expired":
            out["outcome"] = item["outcome"]
        if not approved:
            out["reason"] = item["reason"]
            return out
        adapter = self._adapter(item)
        edited = item.get("edited")
        out["edited"] = bool(edited)
        texts = dict(item.get("segments") or {})
        if edited:
            texts.update(edited)
        if edited and adapter is not None:
            base = item.get("response")
            if base is not None:
                out["response"] = wire.with_texts(adapter, base, edited)
            else:
                info = RequestInfo({}, model=item.get("model"), n=item["record"].get("n", 1))
                out["response"] = wire.synthesize(adapter, info, texts)
        else:
            out["response"] = item.get("response")
        if out["response"] is None:
            out["note"] = "the response text was not stored (privacy mode); send the request again"
        out["texts"] = texts or None
        return out

    async def client_result(self, request: web.Request, item_id: str) -> web.Response:
        key_id = wire.api_key_id(request.headers)
        if key_id is None:
            from gateway.errors import Unauthorized

            raise Unauthorized("send the API key the held request was made with")
        item = await self.db.get(item_id)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        if item["key_id"] is None or not hmac.compare_digest(item["key_id"], key_id):
            raise Forbidden("this review item belongs to another API key")
        body = self.result_body(item)
        body.pop("texts", None)
        return web.Response(
            body=orjson.dumps(body),
            content_type="application/json",
            headers={"cache-control": "no-store"},
        )

    # -- reviewer actions ------------------------------------------------------------------
    async def get(self, item_id: str) -> dict[str, Any]:
        item = await self.db.get(item_id)
        if item is None:
            raise NotFound(f"no review item {item_id}")
        return item

    def _check(
        self, item: dict[str, Any], principal: Principal, version: Any, need_open: bool = True
    ) -> None:
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise BadRequest("send the item's version (optimistic locking)") from None
        if need_open and item["state"] != OPEN:
            raise Conflict(
                f"item {item['id']} was already {item['state']} by {item['decided_by']}; "
                "reload to see the decision"
            )
        if item["version"] != version:
            raise Conflict(
                f"item {item['id']} changed since you loaded it (your version {version}, "
                f"now {item['version']}); reload and try again"
            )
        if (
            need_open
            and item["assignee"]
            and item["assignee"] != principal.name
            and not principal.has("lead")
        ):
            raise Conflict(f"item {item['id']} is claimed by {item['assignee']}")

    def _conflict(self, exc: Changed, item_id: str) -> Conflict | NotFound:
        cur = exc.current
        if cur is None:
            return NotFound(f"no review item {item_id}")
        if cur["state"] != OPEN:
            return Conflict(
                f"item {item_id} was just {cur['state']} by {cur['decided_by']}; "
                "your action was not applied"
            )
        return Conflict(
            f"item {item_id} was changed by someone else at the same time "
            f"(now version {cur['version']}); reload and try again"
        )

    async def _apply(
        self,
        item,
        principal: Principal,
        action: str,
        changes: dict,
        detail: Any = None,
        require_state: str | None = OPEN,
        callback: dict | None = None,
    ) -> dict[str, Any]:
        try:
            return await self.db.change(
                item,
                actor=principal.name,
                action=action,
                changes=changes,
                detail=detail,
                require_state=require_state,
                callback=callback,
            )
        except Changed as exc:
            raise self._conflict(exc, item["id"]) from None

    async def claim(self, item_id: str, principal: Principal, version: Any) -> dict:
        item = await self.get(item_id)
        self._check(item, principal, version)
        if item["assignee"] == principal.name:
            return item
        return await self._apply(
            item, principal, "claim", {"assignee": principal.name}, {"previous": item["assignee"]}
        )

    async def release(self, item_id: str, principal: Principal, version: Any) -> dict:
        item = await self.get(item_id)
        self._check(item, principal, version)
        if item["assignee"] is None:
            return item
        return await self._apply(
            item, principal, "release", {"assignee": None}, {"previous": item["assignee"]}
        )

    async def approve(
        self,
        item_id: str,
        principal: Principal,
        version: Any,
        edited: dict[str, str] | None = None,
        note: str = "",
    ) -> dict:
        item = await self.get(item_id)
        self._check(item, principal, version)
        keys = set(item["record"].get("segment_keys") or [])
        if edited:
            if not isinstance(edited, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in edited.items()
            ):
                raise BadRequest('"edited" must map segment keys to replacement text')
            unknown = sorted(set(edited) - keys)
            if unknown:
                raise BadRequest(
                    f"no segment {', '.join(unknown)} in this response "
                    f"(segments: {', '.join(sorted(keys))})"
                )
            original = item.get("segments") or {}
            edited = {k: v for k, v in edited.items() if original.get(k) != v} or None
        action = "approve-edited" if edited else "approve"
        detail: dict[str, Any] = {"note": note} if note else {}
        if edited:
            detail["edited_segments"] = {
                k: {"chars": len(v), "sha256": hashlib.sha256(v.encode()).hexdigest()}
                for k, v in edited.items()
            }
        return await self._decide(
            item, principal, "approved", action, {"edited": edited, "reason": note or None}, detail
        )

    async def reject(self, item_id: str, principal: Principal, version: Any, reason: str) -> dict:
        reason = (reason or "").strip()
        if not reason:
            raise BadRequest("a rejection needs a reason; the client is shown it")
        item = await self.get(item_id)
        self._check(item, principal, version)
        return await self._decide(
            item, principal, "rejected", "reject", {"reason": reason}, {"reason": reason}
        )

    async def _decide(
        self,
        item,
        principal: Principal,
        outcome: str,
        action: str,
        changes: dict,
        detail: Any,
        state: str | None = None,
    ) -> dict:
        now = time.time()
        state = state or outcome
        changes = dict(
            changes, state=state, outcome=outcome, decided_by=principal.name, decided_at=now
        )
        callback = self._callback_for(item, state, outcome, now)
        after = await self._apply(item, principal, action, changes, detail, callback=callback)
        self.metrics.decisions.labels(item["policy"], outcome).inc()
        self.metrics.decision_time.labels(outcome).observe(max(now - item["created_at"], 0))
        self.metrics.depth.labels(OPEN, item["severity"]).dec()
        self.metrics.depth.labels(state, item["severity"]).inc()
        waiter = self._waiters.pop(item["id"], None)
        if waiter is not None:
            waiter.set()
        if callback is not None and self._callback_wake is not None:
            self._callback_wake.set()
        self.emit({"type": "review.decided", "item": public_view(after), "outcome": outcome})
        return after

    async def escalate(
        self, item_id: str, principal: Principal, version: Any, note: str = ""
    ) -> dict:
        item = await self.get(item_id)
        self._check(item, principal, version)
        after = await self._apply(
            item,
            principal,
            "escalate",
            {"priority": ("+", PRIORITY_STEP), "escalations": ("+", 1)},
            {"note": note} if note else None,
        )
        self.metrics.escalations.labels("reviewer").inc()
        self.emit(
            {
                "type": "review.escalated",
                "item": public_view(after),
                "reason": "reviewer",
                "by": principal.name,
                "note": note,
            }
        )
        return after

    async def comment(self, item_id: str, principal: Principal, body: str) -> dict:
        body = (body or "").strip()
        if not body:
            raise BadRequest("a comment needs some text")
        if len(body) > 10_000:
            raise BadRequest("a comment is limited to 10,000 characters")
        await self.get(item_id)
        return await self.db.comment(item_id, principal.name, body)

    async def bulk(
        self, principal: Principal, action: str, items: list[dict], reason: str = ""
    ) -> list[dict]:
        if action not in ("approve", "reject", "escalate", "claim", "release"):
            raise BadRequest("bulk action must be approve, reject, escalate, claim or release")
        if not isinstance(items, list) or not items or len(items) > 500:
            raise BadRequest('"items" must list 1 to 500 {"id", "version"} objects')
        out = []
        for entry in items:
            if not isinstance(entry, dict) or "id" not in entry:
                raise BadRequest('each bulk entry needs "id" and "version"')
            try:
                if action == "approve":
                    done = await self.approve(
                        entry["id"], principal, entry.get("version"), note=reason
                    )
                elif action == "reject":
                    done = await self.reject(entry["id"], principal, entry.get("version"), reason)
                elif action == "escalate":
                    done = await self.escalate(entry["id"], principal, entry.get("version"), reason)
                elif action == "claim":
                    done = await self.claim(entry["id"], principal, entry.get("version"))
                else:
                    done = await self.release(entry["id"], principal, entry.get("version"))
                out.append(
                    {
                        "id": entry["id"],
                        "ok": True,
                        "state": done["state"],
                        "version": done["version"],
                    }
                )
            except GatewayError as err:
                out.append(
                    {
                        "id": entry["id"],
                        "ok": False,
                        "status": err.status,
                        "code": err.code,
                        "message": err.message,
                    }
                )
        return out

    # -- callbacks --------------------------------------------------------------------
    def _callback_for(self, item, state: str, outcome: str, now: float) -> dict | None:
        route = next((r for r in self.gw.settings.routes if r.name == item["route"]), None)
        if route is None or not route.review.callback_url:
            return None
        return {
            "url": route.review.callback_url,
            "payload": {
                "type": "review.decided",
                "id": item["id"],
                "decision_id": item["decision_id"],
                "status": state,
                "outcome": outcome,
                "route": item["route"],
                "decided_at": now,
                "result": RESULT_PATH.format(id=item["id"]),
            },
        }

    @staticmethod
    def sign(secret: str, timestamp: str, body: bytes) -> str:
        mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
        return "sha256=" + mac.hexdigest()

    async def deliver_due(self) -> int:
        """Send every due callback once; failed ones are retried later with backoff."""
        now = time.time()
        sent = 0
        for cb in await self.db.due_callbacks(now):
            route = next((r for r in self.gw.settings.routes if r.name == cb["route"]), None)
            secret = os.environ.get(route.review.callback_secret_env or "") if route else None
            attempts = cb["attempts"] + 1
            error = None
            ok = False
            if not secret:
                error = "callback secret is not set"
            else:
                body = orjson.dumps(cb["payload"])
                stamp = str(int(now))
                headers = {
                    "content-type": "application/json",
                    "x-governance-timestamp": stamp,
                    "x-governance-signature": self.sign(secret, stamp, body),
                    "x-governance-delivery": cb["id"],
                }
                try:
                    session = self.gw.session
                    assert session is not None
                    async with asyncio.timeout(self.settings.callback_timeout):
                        async with session.post(cb["url"], data=body, headers=headers) as resp:
                            ok = 200 <= resp.status < 300
                            if not ok:
                                error = f"HTTP {resp.status}"
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
            give_up = not ok and attempts >= self.settings.callback_attempts
            delay = min(2**attempts, 3600)
            await self.db.callback_done(
                cb["id"],
                ok=ok,
                attempts=attempts,
                next_at=now + delay,
                error=error,
                give_up=give_up,
            )
            self.metrics.callbacks.labels("ok" if ok else ("failed" if give_up else "retry")).inc()
            sent += ok
        return sent

    async def _callbacks(self) -> None:
        assert self._callback_wake is not None
        while True:
            try:
                await asyncio.wait_for(self._callback_wake.wait(), 1.0)
            except TimeoutError:
                pass
            self._callback_wake.clear()
            try:
                await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("review callbacks failed; will retry")

    # -- SLA, expiry, retention ----------------------------------------------------------
    async def sweep(self, now: float | None = None) -> dict[str, int]:
        now = time.time() if now is None else now
        system = _system()
        overdue = 0
        for item in await self.db.newly_overdue(now):
            full = await self.db.get(item["id"])
            if full is None:
                continue
            try:
                after = await self.db.change(
                    full,
                    actor=SYSTEM,
                    action="overdue",
                    changes={
                        "overdue": True,
                        "priority": ("+", PRIORITY_STEP),
                        "escalations": ("+", 1),
                    },
                    detail={"sla_deadline": full["sla_deadline"]},
                )
            except Changed:
                continue  # a reviewer acted on it meanwhile
            overdue += 1
            self.metrics.escalations.labels("overdue").inc()
            self.emit({"type": "review.escalated", "item": public_view(after), "reason": "overdue"})
        expired = 0
        for item in await self.db.newly_expired(now):
            outcome = "approved" if item["expire_action"] == "approve" else "rejected"
            try:
                await self._decide(
                    item,
                    system,
                    outcome,
                    "expire",
                    {"reason": "no reviewer decided in time"},
                    {"expire_action": item["expire_action"]},
                    state="expired",
                )
            except GatewayError:
                continue
            expired += 1
        purged = await self.db.purge(now)
        await self.refresh_metrics()
        return {"overdue": overdue, "expired": expired, "purged": purged}

    async def _sweeper(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("review sweep failed; will retry")
            await asyncio.sleep(self.settings.sweep_interval)

    async def refresh_metrics(self) -> dict[str, Any]:
        counts = await self.db.counts()
        self.metrics.depth.clear()
        for state, by_sev in counts["by_state_severity"].items():
            for sev, n in by_sev.items():
                self.metrics.depth.labels(state, sev).set(n)
        self.metrics.overdue.set(counts["overdue"])
        rates = await self.db.approval_rates()
        for policy, entry in rates.items():
            if entry["approval_rate"] is not None:
                self.metrics.approval_rate.labels(policy).set(entry["approval_rate"])
        return counts


def unfed_text(items: list, texts: dict[str, str]) -> list[tuple[str, str]]:
    """Text of the last read that the guard never took, because it stopped part-way.

    The guard takes the read's (coalesced) items in order and stops after
    one of them, so what it took is a prefix: the longest prefix whose text
    each segment's text ends with.
    """
    try:
        from gateway.proxy.handler import coalesce

        units = coalesce(list(items))
    except ImportError:
        units = list(items)
    runs = [u for u in units if isinstance(u, Text)]
    for cut in range(len(runs), -1, -1):
        fed: dict[str, str] = {}
        for run in runs[:cut]:
            fed[run.key] = fed.get(run.key, "") + run.text
        if all(texts.get(k, "").endswith(v) for k, v in fed.items()):
            return [(r.key, r.text) for r in runs[cut:]]
    return []


def _system():
    from gateway.auth import Principal

    return Principal(SYSTEM, frozenset({"admin"}))


def install(gw: Gateway) -> None:
    service = ReviewService(gw)
    gw.services["review"] = service
    gw.decision_listeners.append(service.on_decision)
    gw.on_start.append(service.start)


def proxy_routes(app: web.Application) -> None:
    from gateway.review.api import install_proxy_routes

    install_proxy_routes(app)


def admin_routes(app: web.Application) -> None:
    from gateway.review.api import install_routes
    from gateway.review.ui import install_ui

    install_routes(app)
    install_ui(app)
