"""What a policy kind is: a config model and a factory that builds its detector.

A kind is declared by a module-level ``KIND = PolicyKind(...)`` and listed in
the ``gateway.policy_kinds`` entry-point group, built-in kinds exactly as a
plugin's. The factory gets a ``BuildContext``: where the policy file lives and
the ``Resources`` the running gateway shares between policies and reloads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from gateway.contract.policy import PolicyBase

T = TypeVar("T")


class IndexSource(Protocol):
    """Named copyright indexes (``gateway.index.manager.IndexManager`` is one)."""

    def names(self) -> list[str]: ...

    def has(self, name: str) -> bool: ...

    def get(self, name: str) -> Any: ...


class Resources:
    """Long-lived objects detectors share, across policies and across reloads.

    ``indexes`` and ``embedder`` are set by the gateway when it has them;
    ``clock`` can be replaced by tests. ``shared`` memoises anything else
    expensive (a classifier, a source registry) under a key the caller
    chooses, so a reload that keeps the same file keeps the same object.
    """

    def __init__(
        self,
        *,
        indexes: IndexSource | None = None,
        embedder: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.indexes = indexes
        self.embedder = embedder
        self.clock = clock
        self._shared: dict[str, Any] = {}
        self._lock = threading.Lock()

    def shared(self, key: str, make: Callable[[], T]) -> T:
        """The object stored under ``key``, made by ``make()`` the first time."""
        with self._lock:
            found = self._shared.get(key)
            if found is None:
                found = self._shared[key] = make()
            return found


@dataclass
class BuildContext:
    """What a detector factory may use: paths and the gateway's shared resources."""

    # directory of the policy file, for relative lexicon or registry paths
    base_dir: Path = field(default_factory=Path.cwd)
    resources: Resources = field(default_factory=Resources)


@dataclass(frozen=True)
class PolicyKind:
    name: str
    config: type[PolicyBase]
    # takes the kind's own config model; typed loosely so each kind can say which
    build: Callable[[Any, BuildContext], Any]
    summary: str = ""
