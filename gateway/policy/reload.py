"""Hot reload: watch policy files and swap in a new ``PolicySet`` atomically.

Requests read ``holder.current`` once and keep that set to the end, so a swap
never changes the rules under a request in flight. A file that fails to load
leaves the old set serving; the errors are logged and kept for the admin API.

With several processes sharing a store, a process that swaps in a revision of
its own accord (its watcher saw the files change, or someone asked it to
reload) tells the others on the ``policies`` notice channel, and they reload
at once rather than at their next look at the files.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.contract.kind import Resources
from gateway.errors import ConfigError, InternalError
from gateway.events import EventBus
from gateway.policy.kinds import Registry
from gateway.policy.loader import PolicySet, SectionParser, load_policies, policy_files
from gateway.store.broadcast import Broadcast

log = logging.getLogger(__name__)

# the notice channel a swap is announced on; its payload is the new revision
CHANNEL = "policies"


@dataclass(frozen=True, slots=True)
class PolicySwap:
    """A new policy set is in force (at start and after each successful reload)."""

    policy_set: PolicySet
    previous: PolicySet | None


@dataclass(frozen=True, slots=True)
class PolicyReloadFailed:
    """A reload found errors; the previous set keeps serving."""

    errors: tuple[str, ...]


class PolicyHolder:
    def __init__(
        self,
        paths: list[str],
        *,
        events: EventBus,
        registry: Registry | None = None,
        resources: Resources | None = None,
        sections: Mapping[str, SectionParser] | None = None,
    ):
        self.paths = paths
        self.registry = registry
        # top-level sections of policy files besides ``policies``, and their parsers
        self.sections = sections
        self.resources = resources if resources is not None else Resources()
        self.events = events
        self.current: PolicySet | None = None
        self.last_error: list[str] | None = None
        self.last_reload: float | None = None
        self._lock = asyncio.Lock()
        # the files as they were at the last load, for the watcher and the heal
        self._seen: dict[str, float] | None = None
        self._broadcast: Broadcast | None = None

    def share(self, broadcast: Broadcast, *, heal_every: float) -> None:
        """Announce each swap to the other processes, and follow theirs."""
        self._broadcast = broadcast
        broadcast.subscribe(CHANNEL, self._heard)
        broadcast.every(heal_every, self._heal)

    def load(self, paths: list[str]) -> PolicySet:
        """Load ``paths`` as this holder does: same kinds, resources and sections."""
        return load_policies(
            paths, registry=self.registry, resources=self.resources, sections=self.sections
        )

    @property
    def serving(self) -> PolicySet:
        """The policy set in force; there always is one once the gateway is built."""
        if self.current is None:
            raise RuntimeError("no policies are loaded")
        return self.current

    def load_now(self) -> PolicySet:
        """First load at start: errors are fatal here, the gateway has nothing to serve."""
        self._seen = self._fingerprint()
        self.current = self.load(self.paths)
        self.last_reload = time.time()
        # at start a subsystem that cannot take the policies must stop the gateway
        self.events.publish(PolicySwap(self.current, None), strict=True)
        return self.current

    def _fingerprint(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            files = policy_files(self.paths)
        except OSError:
            # the directory is gone or unreadable for now; the load says why
            files = []
        for path in files:
            try:
                out[str(path)] = path.stat().st_mtime_ns
            except OSError:
                out[str(path)] = -1
        # a changed lexicon or registry file named in the same directory counts too
        for raw in self.paths:
            try:
                out[str(raw)] = Path(raw).stat().st_mtime_ns
            except OSError:
                out[str(raw)] = -1
        return out

    async def reload(self) -> bool:
        """Load the files again; swap on success. Returns whether the swap happened.

        Never raises: whatever stops the load is kept in ``last_error`` (as
        ``file:line:col`` lines when it is in a file), logged, and published as
        ``PolicyReloadFailed``, and the previous set keeps serving. A swap is
        announced to the other processes sharing the store.
        """
        swapped = await self._reload()
        if swapped and self._broadcast is not None and self.current is not None:
            await self._broadcast.publish(CHANNEL, self.current.revision)
        return swapped

    async def _heard(self, revision: str) -> None:
        """Another process swapped in ``revision``: load our files again, unannounced.

        Unannounced, or two processes whose files differ would answer each
        other's notices forever.
        """
        if self.current is not None and self.current.revision == revision:
            return
        await self._reload()
        serving = self.current.revision if self.current else None
        if serving != revision:
            # each process serves what its own files say; a mismatch is worth a look
            log.warning(
                "another gateway process serves policy revision %s; this one serves %s, "
                "as its policy files differ or did not load",
                revision,
                serving,
            )

    async def _heal(self) -> None:
        """Catch a change whose notice was missed: reload if the files changed."""
        if self._fingerprint() != self._seen:
            await self.reload()

    async def _reload(self) -> bool:
        async with self._lock:
            self._seen = self._fingerprint()
            try:
                new = await asyncio.to_thread(self.load, self.paths)
            except ConfigError as exc:
                self._failed(exc.errors)
                return False
            except Exception as exc:
                log.exception("policy reload crashed")
                shown = ", ".join(map(str, self.paths))
                self._failed([f"{shown}: {InternalError.code}: {type(exc).__name__}: {exc}"])
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
            self.events.publish(PolicySwap(new, old))
            return True

    def _failed(self, errors: list[str]) -> None:
        self.last_error = errors
        log.error(
            "policy reload failed; still serving revision %s",
            self.current.revision if self.current else None,
            extra={"fields": {"errors": errors}},
        )
        for line in errors:
            log.error(line)
        self.events.publish(PolicyReloadFailed(tuple(errors)))

    async def watch(self, interval: float = 0.5) -> None:
        """Reload whenever a policy file changes, until cancelled.

        Nothing a file holds may end this loop: a watcher that died would
        ignore every later edit until a restart.
        """
        if self._seen is None:
            self._seen = self._fingerprint()
        while True:
            await asyncio.sleep(interval)
            try:
                if self._fingerprint() != self._seen:
                    # let an editor finish writing before we read
                    await asyncio.sleep(min(interval, 0.1))
                    await self.reload()
            except Exception:
                log.exception("policy watcher: checking the files failed; still watching")
