"""Typed records that cross subsystem boundaries.

Each is a frozen dataclass (the index manifest a frozen pydantic model).
Those that are stored or served have exactly one JSON form (``to_json``,
and ``from_json`` where it is read back) with a ``schema`` version,
documented in docs/records.md; the in-process ones (``HeldAnswer``,
``Ticket``, ``ReviewEvent``) have none. A record is complete before anyone
else sees it: nothing adds keys to it later.
"""
