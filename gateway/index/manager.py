"""The gateway's loaded indexes, reloaded and swapped without dropping a request.

The app owns one ``IndexManager``. Detectors hold the manager, not an index,
and call ``get(name)`` when a response segment starts, so a swapped-in
index applies to the next segment while scans already running keep the
object they started with. A reload that fails (a build still being written,
a corrupt file) keeps the old index serving and records why.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.errors import IndexUnavailable
from gateway.index.images import ImageIndex, is_image_index
from gateway.index.store import MANIFEST, CopyrightIndex

# what ``get`` hands out: the manifest's ``kind`` says which
AnyIndex = CopyrightIndex | ImageIndex

log = logging.getLogger(__name__)


def discover(root: str | Path = "indexes") -> dict[str, Path]:
    """Index name -> directory for each subdirectory of ``root`` holding a manifest."""
    base = Path(root)
    if not base.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(base.iterdir())
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    }


def open_index(path: str | Path) -> AnyIndex:
    """The index in ``path``, text or image as its manifest says."""
    return ImageIndex(path) if is_image_index(path) else CopyrightIndex(path)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = (path / MANIFEST).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino


class IndexManager:
    """Named copyright indexes: lazy load, atomic reload, and a file watcher.

    ``paths`` maps index names to directories (the ``indexes:`` section of the
    gateway configuration); ``IndexManager.from_root("indexes")`` uses every
    built index under a directory instead.
    """

    def __init__(self, paths: Mapping[str, str | Path], *, preload: bool = False):
        self._paths = {name: Path(p) for name, p in paths.items()}
        self._loaded: dict[str, AnyIndex] = {}
        self._stamps: dict[str, tuple[int, int] | None] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()
        if preload:
            for name in self._paths:
                self.get(name)

    @classmethod
    def from_root(cls, root: str | Path = "indexes", **kw: Any) -> IndexManager:
        return cls(discover(root), **kw)

    def names(self) -> list[str]:
        return sorted(self._paths)

    def has(self, name: str) -> bool:
        return name in self._paths

    def path(self, name: str) -> Path:
        return self._paths[name]

    def get(self, name: str) -> Any:
        """The current index ``name``, loading it on first use.

        Raises ``KeyError`` for an unknown name and ``IndexUnavailable`` when the
        index cannot be loaded (a detector then reports an ``error`` status).
        """
        index = self._loaded.get(name)
        if index is not None:
            return index
        if name not in self._paths:
            raise KeyError(f"unknown index {name!r}")
        with self._lock:
            index = self._loaded.get(name)
            if index is None:
                stamp = _stamp(self._paths[name])
                index = open_index(self._paths[name])
                self._loaded[name] = index
                self._stamps[name] = stamp
        return index

    def reload(self, name: str) -> AnyIndex:
        """Load ``name`` from disk again and swap it in; the old object stays valid.

        On failure the previous index keeps serving and the error is raised
        (and kept for ``status``).
        """
        if name not in self._paths:
            raise KeyError(f"unknown index {name!r}")
        stamp = _stamp(self._paths[name])
        try:
            fresh = open_index(self._paths[name])
        except (IndexUnavailable, OSError, ValueError, KeyError) as exc:
            self._errors[name] = f"{type(exc).__name__}: {exc}"
            raise
        with self._lock:
            # one reference assignment: readers see either index, never a mix
            self._loaded[name] = fresh
            self._stamps[name] = stamp
            self._errors.pop(name, None)
        log.info("index %s reloaded (generation %s)", name, fresh.manifest.generation)
        return fresh

    def changed(self) -> list[str]:
        """Loaded indexes whose manifest on disk differs from the loaded one."""
        out = []
        for name in list(self._loaded):
            stamp = _stamp(self._paths[name])
            if stamp is not None and stamp != self._stamps.get(name):
                out.append(name)
        return out

    async def watch(self, interval: float = 1.0) -> None:
        """Reload each loaded index whose manifest changes; run as a background task.

        Loading runs in a worker thread so the event loop keeps serving. A
        failed reload is logged and retried on the next change.
        """
        while True:
            await asyncio.sleep(interval)
            for name in self.changed():
                try:
                    await asyncio.to_thread(self.reload, name)
                except Exception as exc:  # keep the old index; try again next tick
                    log.warning("index %s: reload failed, still serving the old one: %s", name, exc)

    def status(self) -> dict[str, Any]:
        """Per index: path, loaded generation, counts and the last reload error."""
        out: dict[str, Any] = {}
        for name, path in sorted(self._paths.items()):
            index = self._loaded.get(name)
            out[name] = {
                "path": str(path),
                "loaded": index is not None,
                "generation": index.manifest.generation if index else None,
                "counts": index.counts() if index else None,
                "error": self._errors.get(name),
            }
        return out
