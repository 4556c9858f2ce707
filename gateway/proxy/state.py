"""The gateway's shared state, built once per process and kept under an ``AppKey``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from gateway.config import Settings
from gateway.observability.decisions import DecisionLog
from gateway.observability.metrics import Metrics
from gateway.policy.reload import PolicyHolder
from gateway.proxy.adapters import RagJsonAdapter
from gateway.store.base import Store

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    settings: Settings
    policies: PolicyHolder
    metrics: Metrics
    store: Store
    decisions: DecisionLog
    rag_adapters: dict[str, RagJsonAdapter]
    resources: dict[str, Any]
    session: aiohttp.ClientSession | None = None
    # CPU-heavy detector scans run here, off the event loop
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="detect")
    )
    decision_listeners: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    # subsystems by name (``review``, ``incidents``…), installed by ``create_app``
    services: dict[str, Any] = field(default_factory=dict)
    background: list[asyncio.Task] = field(default_factory=list)
    # hooks subsystems add: coroutines run at start and at stop
    on_start: list[Callable[[Gateway], Any]] = field(default_factory=list)
    on_stop: list[Callable[[Gateway], Any]] = field(default_factory=list)
    _users: int = 0
    # model loads in progress (see ``warm``); /readyz is "loading" meanwhile
    warming: int = 0

    @property
    def http(self) -> aiohttp.ClientSession:
        """The upstream client session; it exists while the gateway is started."""
        if self.session is None:
            raise RuntimeError("the gateway is not started")
        return self.session

    def run_blocking(self, fn, *args):
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def on_decision(self, record: dict[str, Any]) -> None:
        for listener in self.decision_listeners:
            try:
                listener(record)
            except Exception:  # a listener must never fail a request
                log.exception("decision listener failed")

    async def acquire(self) -> None:
        """Start shared resources on first use (the proxy and admin apps share them)."""
        self._users += 1
        if self._users > 1:
            return
        await self.store.open()
        self.decisions.start()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            auto_decompress=True,
        )
        self.background.append(
            asyncio.create_task(
                self.policies.watch(self.settings.reload_interval), name="policy-watch"
            )
        )
        for hook in self.on_start:
            await hook(self)
        self.policies.swap_listeners.append(self._warm_soon)
        if self.policies.current is not None:
            self._warm_soon(self.policies.current, gate_readiness=True)

    def _warm_soon(self, policy_set, gate_readiness: bool = False) -> None:
        """Load the policies' models in the background (also a swap listener).

        Only the first load holds readiness back: after a reload the process
        keeps serving, and a model new to it loads on its first use if the
        background load has not finished.
        """
        if gate_readiness:
            self.warming += 1
        task = asyncio.get_running_loop().create_task(
            self._warm(policy_set, gate_readiness), name="warm-models"
        )
        self.background.append(task)
        task.add_done_callback(
            lambda t: self.background.remove(t) if t in self.background else None
        )

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
        for hook in reversed(self.on_stop):
            try:
                await hook(self)
            except Exception:
                log.exception("shutdown hook failed")
        if self._warm_soon in self.policies.swap_listeners:
            self.policies.swap_listeners.remove(self._warm_soon)
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        self.background.clear()
        if self.session is not None:
            await self.session.close()
        await self.decisions.close()
        await self.store.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


GATEWAY = web.AppKey("gateway", Gateway)
