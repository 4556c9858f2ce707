"""The one event bus: typed subscriptions, isolation of failing handlers, async handlers."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from gateway.events import EventBus


@dataclass(frozen=True)
class Base:
    n: int


@dataclass(frozen=True)
class Child(Base):
    pass


@dataclass(frozen=True)
class Other:
    n: int


def test_handlers_get_their_type_and_its_subclasses_only():
    bus = EventBus()
    on_base: list[object] = []
    on_child: list[object] = []
    on_other: list[object] = []
    bus.subscribe(Base, on_base.append)
    bus.subscribe(Child, on_child.append)
    bus.subscribe(Other, on_other.append)

    base, child, other = Base(1), Child(2), Other(3)
    bus.publish(base)
    bus.publish(child)
    bus.publish(other)

    assert on_base == [base, child]
    assert on_child == [child]
    assert on_other == [other]


def test_an_event_nobody_wants_is_dropped_quietly():
    bus = EventBus()
    seen: list[object] = []
    bus.subscribe(Child, seen.append)
    bus.publish(Base(1))
    bus.publish(Other(1))
    assert seen == []


def test_handlers_run_in_subscription_order():
    bus = EventBus()
    calls: list[str] = []
    bus.subscribe(Base, lambda e: calls.append("first"))
    bus.subscribe(Base, lambda e: calls.append("second"))
    bus.subscribe(Base, lambda e: calls.append("third"))
    bus.publish(Base(1))
    assert calls == ["first", "second", "third"]


def test_a_subscription_added_after_a_publish_is_seen():
    # the bus caches handlers per concrete type: a new subscription must reset that
    bus = EventBus()
    first: list[object] = []
    later: list[object] = []
    bus.subscribe(Child, first.append)
    bus.publish(Child(1))
    bus.subscribe(Base, later.append)
    bus.publish(Child(2))
    assert first == [Child(1), Child(2)]
    assert later == [Child(2)]


def test_a_failing_handler_does_not_stop_the_others_and_is_logged(caplog):
    bus = EventBus()
    seen: list[object] = []

    def broken(event: Base) -> None:
        raise RuntimeError("handler exploded")

    bus.subscribe(Base, seen.append)
    bus.subscribe(Base, broken)
    bus.subscribe(Base, lambda e: seen.append(("after", e.n)))
    with caplog.at_level(logging.ERROR, logger="gateway.events"):
        bus.publish(Base(7))  # never raises into the publisher

    assert seen == [Base(7), ("after", 7)]
    failures = [r for r in caplog.records if r.name == "gateway.events"]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    assert failures[0].exc_info is not None
    assert "handler exploded" in str(failures[0].exc_info[1])
    assert "Base" in failures[0].getMessage()


async def test_a_coroutine_returned_by_a_handler_is_scheduled_and_drained():
    bus = EventBus()
    release = asyncio.Event()
    done: list[int] = []

    async def slow(event: Base) -> None:
        await release.wait()
        await asyncio.sleep(0.01)
        done.append(event.n)

    bus.subscribe(Base, slow)
    bus.publish(Base(1))
    bus.publish(Base(2))
    # publish returned at once; the handlers are running as tasks
    await asyncio.sleep(0)
    assert done == []

    drained = asyncio.ensure_future(bus.drain())
    await asyncio.sleep(0.01)
    assert not drained.done(), "drain() returned before the handler tasks finished"
    release.set()
    await asyncio.wait_for(drained, 2)
    assert sorted(done) == [1, 2]


async def test_an_async_handler_that_fails_is_logged_and_drain_still_returns(caplog):
    bus = EventBus()
    seen: list[object] = []

    async def broken(event: Base) -> None:
        await asyncio.sleep(0)
        raise ValueError("async handler exploded")

    bus.subscribe(Base, broken)
    bus.subscribe(Base, seen.append)
    with caplog.at_level(logging.ERROR, logger="gateway.events"):
        bus.publish(Base(1))
        await asyncio.wait_for(bus.drain(), 2)
        # the done callback runs on the loop after the task ends
        await asyncio.sleep(0)
    assert seen == [Base(1)]
    logged = [r for r in caplog.records if r.name == "gateway.events" and r.exc_info]
    assert any("async handler exploded" in str(r.exc_info[1]) for r in logged)


async def test_drain_with_nothing_pending_returns_at_once():
    bus = EventBus()
    bus.subscribe(Base, lambda e: None)
    bus.publish(Base(1))
    await asyncio.wait_for(bus.drain(), 0.5)


def test_unsubscribe_stops_delivery_to_that_handler_only():
    bus = EventBus()
    gone: list[object] = []
    kept: list[object] = []
    bus.subscribe(Base, gone.append)
    bus.subscribe(Base, kept.append)
    bus.publish(Base(1))
    bus.unsubscribe(Base, gone.append)
    bus.publish(Child(2))
    assert gone == [Base(1)]
    assert kept == [Base(1), Child(2)]


def test_unsubscribing_an_unknown_handler_is_harmless():
    bus = EventBus()
    kept: list[object] = []
    bus.subscribe(Base, kept.append)
    bus.unsubscribe(Base, print)
    bus.unsubscribe(Other, kept.append)
    bus.publish(Base(1))
    assert kept == [Base(1)]


def test_wants_reflects_subscriptions():
    bus = EventBus()
    assert not bus.wants(Base)
    assert not bus.wants(Child)

    def handler(event: Base) -> None:
        pass

    bus.subscribe(Base, handler)
    assert bus.wants(Base)
    # a subscriber to the base class wants its subclasses too, not the other way round
    assert bus.wants(Child)
    assert not bus.wants(Other)

    bus.unsubscribe(Base, handler)
    assert not bus.wants(Base)
    assert not bus.wants(Child)

    bus.subscribe(Child, handler)
    assert bus.wants(Child)
    assert not bus.wants(Base)
