"""The gateway's shared state, built once per process and kept under an ``AppKey``.

Everything here is typed: the ports subsystems plug in (``hold``,
``containment``), the one event bus, the adapters, the resources detectors
share. Nothing is looked up by name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import aiohttp
from aiohttp import web

from gateway.config import Settings
from gateway.contract.kind import Resources
from gateway.events import EventBus
from gateway.observability.decisions import DecisionLog
from gateway.observability.journal import DecisionJournal
from gateway.observability.metrics import Metrics
from gateway.observability.tracing import RequestTracer
from gateway.policy.reload import PolicyHolder, PolicySwap
from gateway.proxy.adapters import Adapters
from gateway.proxy.ports import ContainmentPort, HoldPort, VariantsPort
from gateway.proxy.ratelimit import KeyLimiter
from gateway.retry import retry_forever
from gateway.store.base import Store
from gateway.store.broadcast import Broadcast, open_broadcast
from gateway.store.leadership import Leadership

log = logging.getLogger(__name__)


class Installed(Protocol):
    """What the gateway calls on an installed subsystem (the hooks of ``hookspecs.Subsystem``)."""

    @property
    def name(self) -> str: ...

    def proxy_routes(self, app: web.Application) -> None: ...

    def admin_routes(self, app: web.Application) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=Installed)

# how long a stop waits for a journal replay in progress
REPLAY_GRACE = 5.0


@dataclass(eq=False)
class Gateway:
    settings: Settings
    policies: PolicyHolder
    metrics: Metrics
    store: Store
    decisions: DecisionLog
    journal: DecisionJournal
    events: EventBus
    adapters: Adapters
    resources: Resources
    subsystems: list[Installed] = field(default_factory=list)
    # ports plugged in by subsystems; None: a review action blocks, nothing is contained
    hold: HoldPort | None = None
    containment: ContainmentPort | None = None
    # None: every route with variants serves its configured weights
    variants: VariantsPort | None = None
    # None while tracing is off: a request then pays one ``is None`` check
    tracer: RequestTracer | None = None
    # with a store several processes share: which one applies the incident rules and monitors
    leadership: Leadership | None = None
    session: aiohttp.ClientSession | None = None
    # CPU-heavy detector scans run here, off the event loop
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="detect")
    )
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    _users: int = 0
    # model loads in progress (see ``_warm``); /readyz is "loading" meanwhile
    warming: int = 0
    # streamed answers in flight, against ``limits.max_streams``
    streams: int = 0
    _replaying: asyncio.Task[Any] | None = None
    # change notices to and from the other processes sharing the store
    broadcast: Broadcast = field(init=False)
    # per-key limits (requests a minute, streams), shared through Redis when configured
    limiter: KeyLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.broadcast = open_broadcast(self.store)
        self.limiter = KeyLimiter(self.settings, self.metrics)
        self.policies.share(self.broadcast, heal_every=self.settings.state.reconcile_interval)

    @property
    def http(self) -> aiohttp.ClientSession:
        """The upstream client session; it exists while the gateway is started."""
        if self.session is None:
            raise RuntimeError("the gateway is not started")
        return self.session

    def subsystem(self, kind: type[S]) -> S:
        """The installed subsystem of class ``kind``."""
        for sub in self.subsystems:
            if isinstance(sub, kind):
                return sub
        raise LookupError(f"no {kind.__name__} is installed")

    def run_blocking(self, fn, *args):
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background until the gateway stops."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.background.append(task)
        task.add_done_callback(
            lambda t: self.background.remove(t) if t in self.background else None
        )
        return task

    async def acquire(self) -> None:
        """Start shared resources on first use (the proxy and admin apps share them)."""
        self._users += 1
        if self._users > 1:
            return
        await self.store.open()
        if self.leadership is not None:
            await self.leadership.start()
        self.journal.open()
        self.decisions.start()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            auto_decompress=True,
        )
        self.spawn(self.policies.watch(self.settings.reload_interval), "policy-watch")
        await self.limiter.start()
        for sub in self.subsystems:
            await sub.start()
        # after the subsystems have read the store: the first connection heals
        # once, which covers whatever changed between their reads and listening
        await self.broadcast.start()
        # what a killed process answered but had not committed
        self._replaying = self.spawn(self._replay(), "journal-replay")
        self.events.subscribe(PolicySwap, self._warm_swapped)
        if self.policies.current is not None:
            self._warm_soon(self.policies.current, gate_readiness=True)

    async def _replay(self) -> None:
        async def step() -> None:
            await self.journal.replay()

        await retry_forever(step, what="journal replay", first=0.5, cap=30.0)

    def _warm_swapped(self, swap: PolicySwap) -> None:
        self._warm_soon(swap.policy_set)

    def _warm_soon(self, policy_set, gate_readiness: bool = False) -> None:
        """Load the policies' models in the background.

        Only the first load holds readiness back: after a reload the process
        keeps serving, and a model new to it loads on its first use if the
        background load has not finished.
        """
        if gate_readiness:
            self.warming += 1
        self.spawn(self._warm(policy_set, gate_readiness), "warm-models")

    async def _warm(self, policy_set, gate_readiness: bool) -> None:
        started = time.perf_counter()
        warmed = []
        try:
            for compiled in policy_set.policies:
                warm = getattr(compiled.detector, "warm", None)
                if warm is None:
                    continue
                try:
                    # the default executor: loads must not wait behind scans
                    await asyncio.get_running_loop().run_in_executor(None, warm)
                    warmed.append(compiled.config.id)
                except Exception:
                    # the detector loads on first use instead, and reports
                    # its error then, through the policy's on_error
                    log.exception("could not load the model of policy %s", compiled.config.id)
        finally:
            if gate_readiness:
                self.warming -= 1
        if warmed:
            log.info(
                "policy models loaded",
                extra={
                    "fields": {
                        "policies": warmed,
                        "seconds": round(time.perf_counter() - started, 2),
                    }
                },
            )

    async def release(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        # a replay in progress is let finish, briefly: a stop right after a
        # start must not leave a dead process's journal for the next start.
        # Past the grace it is cancelled (its store may be down) so it never
        # writes into subsystems that are stopping; the journal stays for later.
        if self._replaying is not None:
            await asyncio.wait([self._replaying], timeout=REPLAY_GRACE)
            self._replaying.cancel()
            await asyncio.gather(self._replaying, return_exceptions=True)
        # no notice or heal may reach a subsystem that is stopping
        await self.broadcast.stop()
        for sub in reversed(self.subsystems):
            try:
                await sub.stop()
            except Exception:
                log.exception("subsystem %s failed to stop cleanly", sub.name)
        self.events.unsubscribe(PolicySwap, self._warm_swapped)
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        self.background.clear()
        await self.events.drain()
        await self.limiter.stop()
        if self.session is not None:
            await self.session.close()
        await self.decisions.close()
        if self.tracer is not None:
            # flushes the spans still batched; the export may block on the network
            await asyncio.to_thread(self.tracer.shutdown)
        self.journal.close()
        if self.leadership is not None:
            await self.leadership.stop()
        await self.store.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


GATEWAY = web.AppKey("gateway", Gateway)
