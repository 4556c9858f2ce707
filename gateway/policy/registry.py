"""Policy kinds: each maps a config model to a detector factory.

Built-in kinds register exactly as a third-party plugin does: a module that
exposes ``KIND``. Others add kinds through the ``gateway.policy_kinds``
entry-point group, whose entries point at such a ``KIND`` object.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError
from gateway.policy.models import PolicyBase

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

BUILTIN_KINDS = (
    "gateway.detectors.phrases",
    "gateway.detectors.length",
    "gateway.detectors.copyright",
    "gateway.detectors.bias",
    "gateway.detectors.stale_retrieval",
    "gateway.detectors.retrieval_quality",
)


@dataclass
class BuildContext:
    """What a detector factory may use: paths and the app's shared resources."""

    # directory of the policy file, for relative lexicon or registry paths
    base_dir: Path = field(default_factory=Path.cwd)
    # shared, lazily created services (indexes, embedder…), keyed by name
    resources: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyKind:
    name: str
    config: type[PolicyBase]
    # takes the kind's own config model; typed loosely so each kind can say which
    build: Callable[[Any, BuildContext], Any]
    summary: str = ""


class Registry:
    def __init__(self) -> None:
        self._kinds: dict[str, PolicyKind] = {}

    def register(self, kind: PolicyKind) -> None:
        if kind.name in self._kinds and self._kinds[kind.name] is not kind:
            raise ConfigError(f"policy kind {kind.name!r} is registered twice")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> PolicyKind:
        return self._kinds[name]

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def configs(self) -> list[type[PolicyBase]]:
        return [self._kinds[n].config for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._kinds


def _load_module_kind(module_name: str) -> PolicyKind:
    return importlib.import_module(module_name).KIND


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry: built-ins, then installed plugins."""
    global _default
    if _default is None:
        reg = Registry()
        for module_name in BUILTIN_KINDS:
            reg.register(_load_module_kind(module_name))
        for ep in entry_points(group="gateway.policy_kinds"):
            try:
                obj = ep.load()
                reg.register(obj if isinstance(obj, PolicyKind) else obj.KIND)
            except Exception as exc:  # a broken plugin must not take the gateway down
                log.error("policy kind plugin %s failed to load: %s", ep.name, exc)
        _default = reg
    return _default
