"""Watch each canary, roll it back past its limits, and change weights on request.

One process checks (the leader, when several share the store; a lone
process always): every ``check_interval`` it reads each route's figures
from the store and compares every variant that still gets traffic with the
baseline (``compare``). A candidate past a limit gets weight 0 at once, in
this process and through the store in every other, and a ``MonitorEvent``
from monitor ``canary``, rule ``rollback``, carries both variants' figures
to the incident service, which opens one incident per route.

People act through ``promote`` (one variant takes all the traffic),
``rollback`` (variants to 0) and ``reset`` (the configured weights again);
each is recorded with its actor and reason, and resets the comparison
window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.canary.compare import Breach, breaches, figures
from gateway.canary.registry import MlflowClient, RegistryError, Resolved, split_model
from gateway.canary.weights import Override, WeightsTable
from gateway.config import Route
from gateway.errors import BadRequest, NotFound
from gateway.proxy.state import Gateway
from gateway.records.monitor import MonitorEvent

log = logging.getLogger(__name__)

MONITOR = "canary"
RULE = "rollback"
CHANNEL = "variants"
# the figures the status shows for a route without a rollback rule
DEFAULT_WINDOW = 600.0


class CanaryService:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.store = gw.store
        self.routes: dict[str, Route] = {r.name: r for r in gw.settings.routes if r.variants}
        self.table = WeightsTable(set(self.routes))
        self._task: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        # every registry alias a variant is named by, and what each points at now
        self.models = sorted(
            {v.model for r in self.routes.values() for v in r.variants if v.model is not None}
        )
        self.resolved: dict[str, Resolved] = {}
        registry = gw.settings.model_registry
        self.registry = (
            MlflowClient(registry.mlflow) if registry is not None and self.models else None
        )
        if self.routes and gw.leadership is not None:
            # weights another process changed: heard at once, or read within the interval
            gw.broadcast.subscribe(CHANNEL, self._notice)
            every = gw.settings.state.reconcile_interval
            if self.store.dialect == "sqlite":
                every = min(every, 1.0)
            gw.broadcast.every(every, self.reload)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.routes:
            return
        try:
            await self.reload()
        except Exception as exc:
            # the configured weights serve meanwhile; the reconcile timer tries again
            log.warning("cannot read the variant weights: %s", exc)
        if self.registry is not None:
            await self.refresh_models()
            every = self.registry.config.refresh_interval
            self._refresher = asyncio.create_task(self._refresh_every(every), name="registry")
        watched = [r.rollback_on.check_interval for r in self.routes.values() if r.rollback_on]
        if watched:
            self._task = asyncio.create_task(self._watch(min(watched)), name="canary")

    async def stop(self) -> None:
        for task in (self._task, self._refresher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._refresher = None
        if self.registry is not None:
            await self.registry.close()

    # -- registry aliases --------------------------------------------------------------------
    async def refresh_models(self) -> None:
        """Read every alias; one that cannot be read keeps what it pointed at before."""
        assert self.registry is not None
        for model in self.models:
            try:
                found = await self.registry.resolve(model)
            except RegistryError as exc:
                log.warning("%s", exc.message)
                continue
            before = self.resolved.get(model)
            if before != found:
                if found.url is None:
                    log.warning(
                        "%s is version %s, which has no %s tag: the variant gets no traffic",
                        model,
                        found.version,
                        self.registry.config.upstream_tag,
                    )
                else:
                    log.warning("%s is version %s, served at %s", model, found.version, found.url)
            self._take(found)

    async def _refresh_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.refresh_models()

    async def reload(self) -> None:
        self.table.load(await self.store.fetchall("SELECT * FROM route_variants"))

    async def _notice(self, _payload: str) -> None:
        await self.reload()
        if self.registry is not None:
            # another process may have moved an alias with its change
            await self.refresh_models()

    @property
    def checking(self) -> bool:
        leadership = self.gw.leadership
        return leadership is None or leadership.leader

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if not self.checking:
                continue
            try:
                await self.check_all()
            except Exception as exc:
                log.warning("canary check failed, retrying in %.0fs: %s", interval, exc)

    # -- checks ------------------------------------------------------------------------------
    def weights(self, route: Route) -> dict[str, float]:
        found = self.table.weights_for(route.name)
        configured = {v.name: v.weight for v in route.variants}
        return {**configured, **found} if found is not None else configured

    def window_start(self, route: Route, now: float) -> float:
        rule = route.rollback_on
        start = now - rule.window if rule is not None else 0.0
        override = self.table.overrides.get(route.name)
        return max(start, override.since) if override is not None else start

    async def check_all(self, now: float | None = None) -> list[Breach]:
        now = time.time() if now is None else now
        found: list[Breach] = []
        for route in self.routes.values():
            if route.rollback_on is not None:
                found += await self.check(route, now)
        return found

    async def check(self, route: Route, now: float) -> list[Breach]:
        """Compare ``route``'s candidates with its baseline; roll back those past a limit."""
        baseline = route.baseline_variant()
        assert baseline is not None
        held = self.table.overrides.get(route.name)
        weights = self.weights(route)
        candidates = [n for n, w in weights.items() if w > 0 and n != baseline.name]
        if not candidates:
            return []
        found = await figures(self.store, route.name, self.window_start(route, now))
        hits = breaches(route, found, candidates)
        if not hits:
            return []
        rolled = sorted({b.candidate.variant for b in hits})
        reason = "; ".join(b.summary() for b in hits)
        change = Override(
            route.name,
            {**weights, **dict.fromkeys(rolled, 0.0)},
            "auto",
            reason,
            time.time(),
            registry=held.registry if held is not None else None,
        )
        sql, params = change.replacing(held.since if held is not None else None)
        if not await self.store.execute(sql, *params):
            # a person (or another process) changed the weights since they were read here:
            # theirs stand; the next check judges the route under them
            await self.reload()
            return []
        self.table.put(change)
        await self._notify()
        log.warning("route %s: rolled back %s: %s", route.name, ", ".join(rolled), reason)
        assert route.rollback_on is not None
        worst = max(hits, key=lambda b: b.ratio / b.limit.max_ratio)
        self.gw.events.publish(
            MonitorEvent(
                monitor=MONITOR,
                rule=RULE,
                state="fired",
                route=route.name,
                at=now,
                observation=worst.candidate.answers,
                value=round(worst.ratio, 4),
                threshold=worst.limit.max_ratio,
                severity=route.rollback_on.severity,
                details={
                    "summary": f"route {route.name}: rolled back {', '.join(rolled)}: {reason}",
                    "rolled_back": rolled,
                    "breaches": [b.details() for b in hits],
                    "weights": {**weights, **dict.fromkeys(rolled, 0.0)},
                },
            )
        )
        return hits

    # -- people's actions --------------------------------------------------------------------
    def route(self, name: str) -> Route:
        route = self.routes.get(name)
        if route is None:
            known = ", ".join(sorted(self.routes)) or "none"
            raise NotFound(f"route {name!r} has no variants (routes with variants: {known})")
        return route

    def _variant(self, route: Route, name: Any) -> str:
        names = [v.name for v in route.variants]
        if not isinstance(name, str) or name not in names:
            raise BadRequest(f"variant must be one of {', '.join(names)}")
        return name

    async def promote(self, name: str, variant: str | None, actor: str, reason: str) -> Override:
        """``variant`` (default: the only candidate) takes all of the route's traffic.

        When the candidate and the baseline are aliases of one registered model,
        the baseline's alias is moved to the candidate's version instead, and
        the baseline takes the traffic: the alias then names what serves, and
        rolling back moves it to the version it left.
        """
        route = self.route(name)
        baseline = route.baseline_variant()
        assert baseline is not None
        if variant is None:
            others = [v.name for v in route.variants if v.name != baseline.name]
            if len(others) != 1:
                raise BadRequest("name the variant to promote: the route has several candidates")
            variant = others[0]
        chosen = next(v for v in route.variants if v.name == self._variant(route, variant))
        if not self._same_model(chosen.model, baseline.model) or chosen.name == baseline.name:
            weights = {v.name: (100.0 if v.name == chosen.name else 0.0) for v in route.variants}
            return await self._set(route, weights, actor, reason or f"{chosen.name} promoted")
        assert chosen.model is not None and baseline.model is not None
        target = await self._resolve(chosen.model)
        current = await self._resolve(baseline.model)
        weights = {v.name: (100.0 if v.name == baseline.name else 0.0) for v in route.variants}
        held = self.table.overrides.get(route.name)
        if current.version == target.version:
            if held is not None and held.registry and held.registry["to"] == target.version:
                return held  # promoted already: keep the record of the version it left
            raise BadRequest(f"{baseline.model} already points at version {target.version}")
        moved = {"model": baseline.model, "from": current.version, "to": target.version}
        await self._move(baseline.model, target)
        try:
            return await self._set(
                route, weights, actor, reason or f"{chosen.name} promoted", registry=moved
            )
        except Exception:
            # not recorded, so nobody could move it back: undo the move now
            await self._move(baseline.model, current)
            raise

    async def rollback(self, name: str, variant: str | None, actor: str, reason: str) -> Override:
        """``variant`` (default: every variant but the baseline) gets no more traffic.

        A baseline left with no traffic (after a promotion) gets its configured
        weight back: rolling back means returning to it. After a promotion that
        moved the baseline's alias, it moves the alias back to the version it
        left.
        """
        route = self.route(name)
        baseline = route.baseline_variant()
        assert baseline is not None
        held = self.table.overrides.get(route.name)
        promoted = held.registry if held is not None else None
        if promoted is not None and variant is None:
            weights = {
                v.name: (v.weight if v.name == baseline.name else 0.0) for v in route.variants
            }
            return await self._unpromote(
                route,
                promoted,
                weights,
                actor,
                reason or f"{promoted['model']} back to version {promoted['from']}",
            )
        if variant is None:
            dropped = [v.name for v in route.variants if v.name != baseline.name]
        else:
            dropped = [self._variant(route, variant)]
        weights = {**self.weights(route), **dict.fromkeys(dropped, 0.0)}
        if baseline.name not in dropped and weights[baseline.name] <= 0:
            # after a promotion the baseline had nothing: rolling back returns to it
            weights[baseline.name] = baseline.weight
        if not any(w > 0 for w in weights.values()):
            raise BadRequest("that would leave no variant with traffic; promote one instead")
        # an alias moved by a promotion stays recorded, so the way back is not lost
        return await self._set(
            route, weights, actor, reason or f"{', '.join(dropped)} rolled back", registry=promoted
        )

    async def reset(self, name: str, actor: str, reason: str) -> Override:
        """Serve the configured weights again, comparing from now on.

        Stored as weights like any other change rather than deleted, so the
        window restarts: the answers that led to a rollback do not roll the
        candidate back again the moment it gets traffic. An alias a promotion
        moved goes back to the version it left: the configured state.
        """
        route = self.route(name)
        configured = {v.name: v.weight for v in route.variants}
        reason = reason or "configured weights"
        held = self.table.overrides.get(route.name)
        if held is not None and held.registry is not None:
            return await self._unpromote(route, held.registry, configured, actor, reason)
        return await self._set(route, configured, actor, reason)

    async def _unpromote(
        self,
        route: Route,
        promoted: dict[str, str],
        weights: dict[str, float],
        actor: str,
        reason: str,
    ) -> Override:
        """Move a promoted alias back to the version it left, and record the change without
        the move, so a second rollback moves nothing."""
        model = promoted["model"]
        back = await self._resolve_version(model, promoted["from"])
        ahead = await self._resolve_version(model, promoted["to"])
        await self._move(model, back)
        try:
            return await self._set(route, weights, actor, reason)
        except Exception:
            await self._move(model, ahead)
            raise

    def _same_model(self, a: str | None, b: str | None) -> bool:
        return a is not None and b is not None and split_model(a)[0] == split_model(b)[0]

    async def _resolve(self, model: str) -> Resolved:
        assert self.registry is not None
        found = await self.registry.resolve(model)
        self._take(found)
        return found

    async def _resolve_version(self, model: str, version: str) -> Resolved:
        """What ``model`` would serve at ``version``: known when it points there now, or from
        the variant that does (the version a promotion took its URL from)."""
        for found in self.resolved.values():
            if found.version == version and split_model(found.model)[0] == split_model(model)[0]:
                return Resolved(model, version, found.url)
        return Resolved(model, version, None)

    def _allowed(self, found: Resolved) -> str | None:
        """The URL, if ``allowed_upstreams`` lets it serve: a tag anyone with write access to
        the registry can set must not send traffic, and the route's key, anywhere."""
        assert self.registry is not None
        if found.url is None:
            return None
        if any(found.url.startswith(p) for p in self.registry.config.allowed_upstreams):
            return found.url
        log.warning(
            "%s is version %s, whose URL %s is not in model_registry.mlflow.allowed_upstreams: "
            "the variant gets no traffic",
            found.model,
            found.version,
            found.url,
        )
        return None

    def _take(self, found: Resolved) -> None:
        self.resolved[found.model] = found
        self.table.urls[found.model] = self._allowed(found)

    async def _move(self, model: str, to: Resolved) -> None:
        """Point ``model`` at ``to``'s version; traffic here follows at once, elsewhere on the
        notice. The URL is the one ``to`` was read with: no second read to fail after the move."""
        assert self.registry is not None
        await self.registry.move(model, to.version)
        log.warning("moved %s to version %s", model, to.version)
        if to.url is not None:
            self._take(Resolved(model, to.version, to.url))
        else:
            try:
                await self._resolve(model)
            except RegistryError as exc:
                log.warning("%s", exc.message)

    async def _set(
        self,
        route: Route,
        weights: dict[str, float],
        actor: str,
        reason: str,
        *,
        registry: dict[str, str] | None = None,
    ) -> Override:
        override = Override(route.name, weights, actor, reason, time.time(), registry=registry)
        sql, params = override.upsert()
        # in force here only once stored: other processes read it from there
        await self.store.execute(sql, *params)
        self.table.put(override)
        await self._notify()
        return override

    async def _notify(self) -> None:
        if self.gw.leadership is not None:
            await self.gw.broadcast.publish(CHANNEL)

    async def status(self, route: Route) -> dict[str, Any]:
        override = self.table.overrides.get(route.name)
        window = route.rollback_on.window if route.rollback_on else DEFAULT_WINDOW
        since = max(time.time() - window, override.since if override else 0.0)
        found = await figures(self.store, route.name, since)
        baseline = route.baseline_variant()
        return {
            "route": route.name,
            "baseline": baseline.name if baseline else None,
            "configured": {v.name: v.weight for v in route.variants},
            "weights": self.weights(route),
            "override": override.to_json() if override else None,
            "sticky": route.sticky.model_dump(),
            "rollback_on": route.rollback_on.model_dump() if route.rollback_on else None,
            "window_start": since,
            "models": {
                v.name: {
                    "model": v.model,
                    "version": self.resolved[v.model].version if v.model in self.resolved else None,
                    "url": self.table.urls.get(v.model),
                }
                for v in route.variants
                if v.model is not None
            },
            "figures": {k: f.to_json() for k, f in found.items()},
        }
