"""The one backoff policy for every retry in the gateway, tenacity's exponential jitter.

Two shapes of retry share it. A background loop (the decision log writer,
incident processing, the outbox reader) retries its step with
``retry_forever``; a delivery whose attempts are counted in the store (an
incident event, a review callback) asks ``delay(attempts)`` when to try
again. Both wait exponentially longer, capped, with jitter so replicas that
failed together do not retry together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from tenacity import RetryCallState, wait_exponential_jitter

log = logging.getLogger(__name__)


def _wait(first: float, cap: float) -> wait_exponential_jitter:
    # jitter up to the first delay: enough to spread retries, never past the cap
    return wait_exponential_jitter(initial=first, max=cap, jitter=first)


def delay(attempts: int, *, first: float, cap: float) -> float:
    """Seconds to wait after the ``attempts``-th failed try (1 for the first)."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(attempts, 1)
    return min(_wait(first, cap)(state), cap)


async def retry_forever(
    step: Callable[[], Awaitable[None]],
    *,
    what: str,
    first: float,
    cap: float,
    give_up: Callable[[], bool] = lambda: False,
) -> bool:
    """Run ``step`` until it succeeds (True) or ``give_up()`` says stop (False).

    Each failure is logged as a warning naming ``what``, then waited out
    with ``delay``; cancellation (shutdown) goes straight through. The
    first try costs nothing extra, which matters for loops that run once
    a request.
    """
    failures = 0
    while True:
        try:
            await step()
            return True
        except Exception as exc:
            failures += 1
            if give_up():
                log.warning("%s failed; giving up for now: %s", what, exc)
                return False
            wait = delay(failures, first=first, cap=cap)
            log.warning("%s failed, retrying in %.2fs: %s", what, wait, exc)
        await asyncio.sleep(wait)
        if give_up():
            return False
