"""Hot reload: watch policy files and swap in a new ``PolicySet`` atomically.

Requests read ``holder.current`` once and keep that set to the end, so a swap
never changes the rules under a request in flight. A file that fails to load
leaves the old set serving; the errors are logged and kept for the admin API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.policy.loader import PolicySet, load_policies, policy_files
from gateway.policy.registry import Registry

log = logging.getLogger(__name__)


class PolicyHolder:
    def __init__(
        self,
        paths: list[str],
        *,
        registry: Registry | None = None,
        resources: dict[str, Any] | None = None,
        on_swap=None,
        on_failure=None,
    ):
        self.paths = paths
        self.registry = registry
        self.resources = resources if resources is not None else {}
        self.current: PolicySet | None = None
        self.last_error: list[str] | None = None
        self.last_reload: float | None = None
        self._on_swap = on_swap
        # subsystems that derive state from the policy set (monitors…) listen here
        self.swap_listeners: list = []
        self._on_failure = on_failure
        self._lock = asyncio.Lock()

    @property
    def serving(self) -> PolicySet:
        """The policy set in force; there always is one once the gateway is built."""
        if self.current is None:
            raise RuntimeError("no policies are loaded")
        return self.current

    def load_now(self) -> PolicySet:
        """First load at start: errors are fatal here, the gateway has nothing to serve."""
        self.current = load_policies(self.paths, registry=self.registry, resources=self.resources)
        self.last_reload = time.time()
        self._notify(self.current)
        return self.current

    def _notify(self, policy_set: PolicySet) -> None:
        if self._on_swap:
            self._on_swap(policy_set)
        for listener in self.swap_listeners:
            listener(policy_set)

    def _fingerprint(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for path in policy_files(self.paths):
            try:
                out[str(path)] = path.stat().st_mtime_ns
            except OSError:
                out[str(path)] = -1
        # a changed lexicon or registry file named in the same directory counts too
        for raw in self.paths:
            base = Path(raw)
            if base.is_dir():
                try:
                    out[str(base)] = base.stat().st_mtime_ns
                except OSError:
                    pass
        return out

    async def reload(self) -> bool:
        """Load the files again; swap on success. Returns whether the swap happened."""
        async with self._lock:
            try:
                new = await asyncio.to_thread(
                    load_policies, self.paths, registry=self.registry, resources=self.resources
                )
            except ConfigError as exc:
                self.last_error = exc.errors
                log.error(
                    "policy reload failed; still serving revision %s",
                    self.current.revision if self.current else None,
                    extra={"fields": {"errors": exc.errors}},
                )
                for line in exc.errors:
                    log.error(line)
                if self._on_failure:
                    self._on_failure(exc.errors)
                return False
            old = self.current
            self.current = new
            self.last_error = None
            self.last_reload = time.time()
            log.info(
                "policies reloaded",
                extra={
                    "fields": {
                        "revision": new.revision,
                        "previous": old.revision if old else None,
                        "policies": len(new.policies),
                    }
                },
            )
            self._notify(new)
            return True

    async def watch(self, interval: float = 0.5) -> None:
        seen = self._fingerprint()
        while True:
            await asyncio.sleep(interval)
            now = self._fingerprint()
            if now != seen:
                # let an editor finish writing before we read
                await asyncio.sleep(min(interval, 0.1))
                seen = self._fingerprint()
                await self.reload()
