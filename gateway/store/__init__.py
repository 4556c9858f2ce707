"""The store: SQLite by default, PostgreSQL through a DSN, behind one interface."""

from __future__ import annotations

from gateway.store.base import Store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore


def open_store(url: str) -> Store:
    """A store for ``url`` (not yet opened)."""
    if url.startswith("sqlite://"):
        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise ValueError(f"unsupported store URL {url!r}")


__all__ = ["Store", "open_store"]
