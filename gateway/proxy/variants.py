"""Which of a route's variants answers a request: weights, and a client that stays put.

A route with ``variants`` splits its traffic by weight. Each client is
placed at a point in [0, 1) by a hash of the route's name and its sticky key
(its API key, or a header's value), and takes the variant whose share of the
cumulative weights covers that point. So a client keeps its variant while
the weights stay, and when they change only the clients in the moved share
change variant: lowering a candidate from 5 to 0 moves its clients to the
others and nobody else. A request without a sticky key is placed at random.

The weights in force come from ``VariantsPort`` (the canary
subsystem's table, which a rollback or a promotion changes); without it, or
for a route it knows nothing of, the configured weights apply. A variant
named by a registry alias serves the URL the port resolved it to; while
the alias is not resolved, the variant gets no traffic.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

from gateway.config import Route, Variant
from gateway.errors import VariantUnavailable
from gateway.proxy.credentials import api_key_id
from gateway.proxy.ports import VariantsPort

# per configured route, variant and URL, the route as that variant serves it
_routes: dict[tuple[int, str, str], Route] = {}


def sticky_key(route: Route, headers: Mapping[str, str]) -> str | None:
    sticky = route.sticky
    if sticky.by == "api_key":
        return api_key_id(headers)
    if sticky.by == "header" and sticky.header:
        return headers.get(sticky.header) or None
    return None


def point(route: Route, key: str | None) -> float:
    """Where ``key`` falls in [0, 1) on ``route``; random without a key."""
    if key is None:
        return random.random()
    digest = hashlib.blake2b(f"{route.name}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose(route: Route, weights: Mapping[str, float], at: float) -> Variant:
    """The variant whose share of the cumulative weights holds ``at``."""
    shares = [(v, max(0.0, float(weights.get(v.name, 0.0)))) for v in route.variants]
    total = sum(w for _, w in shares)
    if total <= 0:
        # every weight set to 0 cannot serve anyone: the configured split does
        shares = [(v, v.weight) for v in route.variants]
        total = sum(w for _, w in shares)
    target = at * total
    reached = 0.0
    for variant, weight in shares:
        reached += weight
        if target < reached:
            return variant
    return next(v for v, w in reversed(shares) if w > 0)


def as_served(route: Route, variant: Variant, url: str) -> Route:
    """``route`` with the variant's upstream ``url`` (and key), built once per variant and URL."""
    key = (id(route), variant.name, url)
    found = _routes.get(key)
    if found is None:
        update: dict[str, object] = {"upstream": url}
        if variant.api_key is not None:
            update["api_key"] = variant.api_key
        found = _routes[key] = route.model_copy(update=update)
    return found


def pick(
    route: Route, headers: Mapping[str, str], port: VariantsPort | None
) -> tuple[Route, str | None]:
    """The route as the chosen variant serves it, and the variant's name (None: no split)."""
    if not route.variants:
        return route, None
    configured = {v.name: v.weight for v in route.variants}
    found = port.weights_for(route.name) if port is not None else None
    # a variant added to the file after the weights were last set takes its configured weight
    weights = {**configured, **found} if found is not None else configured
    urls = {v.name: url_of(v, port) for v in route.variants}
    # a variant whose alias is not resolved cannot serve; the others keep their weights,
    # and a variant set to 0 (rolled back) never comes back because another cannot serve
    serving = {name: w for name, w in weights.items() if urls.get(name)}
    if not any(w > 0 for w in serving.values()):
        unresolved = [v.model for v in route.variants if v.model and not urls[v.name]]
        raise VariantUnavailable(
            f"route {route.name}: no variant with traffic can serve"
            + (f"; registry aliases not resolved: {', '.join(unresolved)}" if unresolved else "")
        )
    variant = choose(route, serving, point(route, sticky_key(route, headers)))
    url = urls[variant.name]
    assert url is not None
    return as_served(route, variant, url), variant.name


def url_of(variant: Variant, port: VariantsPort | None) -> str | None:
    if variant.upstream is not None:
        return variant.upstream
    if port is None or variant.model is None:
        return None
    return port.upstream_of(variant.model)
