"""RAG sources in the one shape detectors read: a dict per source, each with an ``id``.

Adapters find sources in answers (``sources``, ``citations``, Azure's
``context``), headers or events; policy tests and ``gateway check`` take
them from a file. All of them go through ``normalize_sources``, which keeps
every problem it meets instead of dropping a source silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ID_FIELDS = ("id", "doc_id", "document_id", "source_id", "url")


@dataclass
class Sources:
    items: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def extend(self, raw: Any, where: str) -> None:
        items, errors = normalize_sources(raw, where)
        self.items.extend(items)
        self.errors.extend(errors)


def normalize_sources(raw: Any, where: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Each source as a dict with an ``id``; problems are reported, never dropped silently."""
    if raw is None:
        return [], []
    if isinstance(raw, dict):
        # Azure-style ``context: {citations: [...]}`` or a single source object
        for name in ("citations", "sources", "documents"):
            if isinstance(raw.get(name), list):
                return normalize_sources(raw[name], f"{where}.{name}")
        raw = [raw]
    if not isinstance(raw, list):
        return [], [f"{where}: expected a list of sources, got {type(raw).__name__}"]
    items: list[dict[str, Any]] = []
    errors: list[str] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            items.append(
                {"id": item, "url": item} if "://" in item else {"id": str(i), "text": item}
            )
        elif isinstance(item, dict):
            source = dict(item)
            if "id" not in source or source["id"] in (None, ""):
                found = next(
                    (source[k] for k in ID_FIELDS if source.get(k) not in (None, "")), None
                )
                source["id"] = str(found) if found is not None else str(i)
            else:
                source["id"] = str(source["id"])
            items.append(source)
        else:
            errors.append(
                f"{where}[{i}]: expected an object or a string, got {type(item).__name__}"
            )
    return items, errors
