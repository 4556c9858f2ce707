"""Entry-point groups: how built-in and third-party plugins are found.

``gateway.policy_kinds`` lists policy kinds and ``gateway.subsystems`` the
subsystems; the gateway's own are declared in its ``pyproject.toml`` exactly
as a plugin package would declare its own.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from gateway.errors import PluginLoadError

POLICY_KINDS = "gateway.policy_kinds"
SUBSYSTEMS = "gateway.subsystems"


@cache
def load_group(group: str) -> tuple[tuple[str, Any], ...]:
    """``(name, object)`` of each entry point in ``group``, sorted by name.

    An entry that fails to import stops the gateway with ``PluginLoadError``:
    running without a subsystem or a kind that is installed would quietly
    change what is enforced.
    """
    out = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            out.append((ep.name, ep.load()))
        except Exception as exc:
            raise PluginLoadError(
                f"plugin {ep.name} ({ep.value}) of {group} failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    return tuple(out)
