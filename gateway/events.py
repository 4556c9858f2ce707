"""One event dispatcher for the whole gateway.

Publishers hand over a typed, complete record (a ``DecisionRecord``, a
``PolicySwap``…); subscribers register for a record type. Handlers run
synchronously, in subscription order, and must be cheap: the proxy publishes
from the request path. A handler that returns a coroutine has it scheduled
as a task. A handler that raises is logged and never fails the publisher.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

E = TypeVar("E")
Handler = Callable[[Any], Any]


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[type, list[Handler]] = {}
        # resolved per concrete event type (subscriptions to base classes included)
        self._resolved: dict[type, tuple[Handler, ...]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def subscribe(self, event_type: type[E], handler: Callable[[E], Any]) -> None:
        self._handlers.setdefault(event_type, []).append(handler)
        self._resolved.clear()

    def unsubscribe(self, event_type: type[E], handler: Callable[[E], Any]) -> None:
        handlers = self._handlers.get(event_type, [])
        if handler in handlers:
            handlers.remove(handler)
            self._resolved.clear()

    def wants(self, event_type: type) -> bool:
        """Whether anyone listens for ``event_type``: publishers may skip building it."""
        return bool(self._for(event_type))

    def _for(self, event_type: type) -> tuple[Handler, ...]:
        found = self._resolved.get(event_type)
        if found is None:
            found = tuple(h for base in event_type.__mro__ for h in self._handlers.get(base, ()))
            self._resolved[event_type] = found
        return found

    def publish(self, event: object, *, strict: bool = False) -> None:
        """Hand ``event`` to its handlers; ``strict`` lets a handler's error through
        (for start-up, where a subsystem that cannot take the event must stop it)."""
        for handler in self._for(type(event)):
            try:
                result = handler(event)
            except Exception:
                if strict:
                    raise
                log.exception("handler %r failed on %s", handler, type(event).__name__)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event handler failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for the handler tasks still running (at shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
