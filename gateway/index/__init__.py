"""Copyright indexes: build, load, update and hot-swap.

See ``docs/copyright.md``. The app owns an ``IndexManager``; detectors look
indexes up through it when a response segment starts.
"""

from gateway.index.build import (
    BuildParams,
    UpdateReport,
    add_documents,
    build_index,
    ensure_index,
    ensure_sample,
    index_is_current,
    remove_documents,
    sample_is_current,
)
from gateway.index.manager import IndexManager, discover
from gateway.index.store import CopyrightIndex

__all__ = [
    "BuildParams",
    "CopyrightIndex",
    "IndexManager",
    "UpdateReport",
    "add_documents",
    "build_index",
    "discover",
    "ensure_index",
    "ensure_sample",
    "index_is_current",
    "remove_documents",
    "sample_is_current",
]
