"""Typed records that cross subsystem boundaries.

Each is frozen, carries a schema version, and has exactly one JSON form
(``to_json``/``from_json``), documented in docs/records.md. A record is
complete before anyone else sees it: nothing adds keys to it later.
"""
