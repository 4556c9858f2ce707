"""The proxy's side of a ``review`` action: hand the answer to the ``HoldPort``, tell the client.

The answer is stored durably (by the port) before the client hears
anything, so an acknowledged hold survives a crash. The client then gets,
in its own protocol: a placeholder naming the review id (or, for a policy
with ``error_response``, an error); or, when the policy waits and a person
decides in time, the decision itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.contract.policy import Action, ReviewOptions
from gateway.errors import HeldForReview, ReviewUnavailable
from gateway.policy.engine import ResponseGuard
from gateway.proxy.adapters import Adapter, RequestInfo
from gateway.proxy.answers import client_message, error_response, json_response
from gateway.proxy.credentials import api_key_id, clean_text, query_names, safe_headers, tenant_of
from gateway.proxy.ports import ClientChannel, HoldPort
from gateway.proxy.stopwatch import Stopwatch
from gateway.records.review import HeldAnswer, HeldDecision, HeldRequest, ReviewOutcome, Ticket

# a held path is cut to this many characters
MAX_PATH_CHARS = 2048


@dataclass(slots=True)
class HoldSite:
    """What a hold needs of the exchange it happens in."""

    port: HoldPort
    channel: ClientChannel
    adapter: Adapter
    info: RequestInfo
    request: web.Request
    decision_id: str
    revision: str | None
    route: str
    busy: Stopwatch
    # told the ticket as soon as the item is stored, so the decision record
    # names it even if the client goes away while the hold goes on
    on_ticket: Callable[[Ticket], None]
    # release the answer unreviewed when it cannot be stored (review.on_store_down)
    release_if_unavailable: bool = False
    # told when that happened, so the record says allow, with the error
    on_released: Callable[[ReviewUnavailable], None] = lambda _err: None


def releasable(guard: ResponseGuard) -> bool:
    """Whether the answer may go out as it is if its hold fails (``review.on_store_down``).

    Not when another policy wants it changed (redacted, or answered by the
    fallback): releasing it unreviewed must never also release it unredacted.
    """
    return not any(
        r.effective_action() in (Action.REDACT, Action.FALLBACK) for r in guard.enforced_breaches()
    )


def review_headers(ticket: Ticket, status: str = "pending") -> dict[str, str]:
    return {
        "x-governance-review-id": ticket.review_id,
        "x-governance-review-status": status,
        "x-governance-review-result": ticket.result_path,
    }


def held_answer(
    site: HoldSite,
    guard: ResponseGuard,
    texts: dict[str, str],
    response: dict | None,
    complete: bool,
) -> HeldAnswer:
    holder = guard.holder()
    config = holder.config if holder is not None else None
    breached = tuple(guard.breached())
    policies = breached or ((config.id,) if config else ("unknown",))
    request = site.request
    # the path without its query; stored text must be valid UTF-8
    path = clean_text(request.path, MAX_PATH_CHARS)
    return HeldAnswer(
        decision=HeldDecision(
            decision_id=site.decision_id,
            revision=site.revision,
            route=site.route,
            protocol=site.adapter.protocol,
            path=path,
            model=site.info.model,
            stream=site.info.stream,
            action=Action.REVIEW.value,
            policies=guard.verdicts(),
            breached=breached,
            chars_released=guard.chars_released(),
            segment_keys=tuple(sorted(texts)),
            complete=complete,
            n=site.info.n,
        ),
        policy=config.id if config else policies[0],
        options=config.review if config else ReviewOptions(),
        severity=guard.severity(),
        policies=policies,
        request=HeldRequest(
            method=request.method,
            path=path,
            # names only: a query value may be a credential (``?api-key=``), and
            # nothing replays a held request from the store
            query=query_names(request.query_string),
            headers=safe_headers(request.headers),
            body=site.info.body,
        ),
        key_id=api_key_id(request.headers),
        tenant=tenant_of(request.headers),
        texts=texts,
        response=response,
    )


def _held_error(site: HoldSite, message: str, ticket: Ticket) -> web.Response:
    """A hold told as an error, for policies with ``error_response``."""
    held = HeldForReview(message)
    return json_response(
        site.adapter.error_body(held), status=held.status, headers=review_headers(ticket)
    )


async def _wait(site: HoldSite, ticket: Ticket, options: ReviewOptions) -> ReviewOutcome | None:
    if options.mode != "wait" or options.wait_seconds <= 0:
        return None
    site.busy.stop()
    try:
        return await site.port.wait(ticket.review_id, options.wait_seconds)
    finally:
        site.busy.start()


async def _hold(site: HoldSite, answer: HeldAnswer) -> Ticket:
    ticket = await site.port.hold(answer)
    site.on_ticket(ticket)
    return ticket


async def hold_whole(site: HoldSite, guard: ResponseGuard, upstream: dict) -> web.Response:
    """Hold a non-streamed answer; the placeholder, an error or the decision waited for."""
    texts = dict(site.adapter.segments(upstream))
    answer = held_answer(site, guard, texts, upstream, complete=True)
    try:
        ticket = await _hold(site, answer)
    except ReviewUnavailable as err:
        if site.release_if_unavailable:
            site.on_released(err)
            return json_response(upstream, headers={"x-governance-review-status": "unavailable"})
        return error_response(err, site.adapter, site.decision_id)
    holder = guard.holder()
    config = holder.config if holder is not None else None
    message = client_message(config, Action.REVIEW)
    decided = await _wait(site, ticket, answer.options)
    if decided is not None:
        headers = review_headers(ticket, decided.status)
        if decided.response is not None:
            return json_response(decided.response, headers=headers)
        body = site.adapter.blocked(site.info, upstream, decided.reason or message)
        return json_response(body, headers=headers)
    if config is not None and config.error_response:
        return _held_error(site, message, ticket)
    body = site.adapter.held(site.info, upstream, message, ticket)
    return json_response(body, headers=review_headers(ticket))


async def hold_stream(
    site: HoldSite,
    guard: ResponseGuard,
    texts: dict[str, str],
    complete: bool,
    open_keys: list[str],
) -> web.Response | None:
    """Hold a streamed answer read to its end.

    Returns a response when nothing had been sent yet and the answer is an
    error, else None: the stream was ended on the channel.
    """
    channel = site.channel
    body = site.adapter.synthesize(site.info, texts)
    answer = held_answer(site, guard, texts, body, complete)
    holder = guard.holder()
    config = holder.config if holder is not None else None
    message = client_message(config, Action.REVIEW)
    try:
        ticket = await _hold(site, answer)
    except ReviewUnavailable as err:
        if site.release_if_unavailable:
            site.on_released(err)
            if not channel.started:
                channel.set_headers({"x-governance-review-status": "unavailable"})
            # what the hold kept back, after what the client already has
            for key in sorted(texts):
                rest = texts[key][guard.segments[key].released :] if key in guard.segments else ""
                if rest:
                    await channel.send_text(key, rest)
            await channel.end("stop", sorted(texts))
            return None
        if not channel.started:
            return error_response(err, site.adapter, site.decision_id)
        await channel.send_error(err)
        return None
    first = open_keys[0] if open_keys else "0"
    if not channel.started:
        if config is not None and config.error_response:
            return _held_error(site, message, ticket)
        # nothing sent yet: the review id can still go in the response headers
        channel.set_headers(review_headers(ticket))
        decided = await _wait(site, ticket, answer.options)
        if decided is not None:
            channel.set_headers({"x-governance-review-status": decided.status})
            if decided.approved and decided.texts:
                for key in sorted(decided.texts):
                    await channel.send_text(key, decided.texts[key])
                await channel.end("stop", sorted(decided.texts))
                return None
            await channel.send_text(first, decided.reason or message)
            await channel.end("content_filter", open_keys)
            return None
    if guard.chars_released() == 0:
        await channel.send_text(first, message)
    await channel.end("content_filter", open_keys, ticket)
    return None
