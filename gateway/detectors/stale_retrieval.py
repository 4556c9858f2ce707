"""Policy kind ``stale_retrieval``: answers resting on old, superseded or withdrawn sources.

Rules, each judged on the sources the adapter found (``ctx.sources``). Any
answer may carry sources (a RAG pipeline's chunks, a search API's citations),
so the kind is meant to run on every route; an answer without sources costs
two length checks per feed.

* ``max_age``: a source whose ``updated_at`` (else ``published_at``) is older
  than this breaches. Missing or unparseable dates follow ``treat_as``.
* registry: a YAML, CSV or SQLite file listing each document's current
  version, status and effective dates. Citing a version other than the
  current one, a withdrawn document, or one outside its effective dates
  breaches. The file is re-read when its modification time changes.
* ``min_sources``: an answer that states facts (numbers, dates, "according
  to"…) must cite at least this many sources.

Sources arrive with the response, and in a stream possibly only with its
last chunk or spread over several events. The scan judges each source at the
first ``feed`` that sees it, and ``min_sources`` at the final one. By default
it holds nothing back (a verdict may come after some text was released);
``wait_for_sources: true`` holds the whole answer until the final chunk.

Malformed metadata is not silently skipped. A source that is not a mapping,
or adapter-reported ``ctx.source_errors``, raise ``SourceMetadataError`` when
``on_malformed: error`` (the default), so the policy's status is ``error``
and its ``on_error`` decides; with ``on_malformed: breach`` each problem is a
finding instead.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from gateway.contract.detector import Finding, ScanContext
from gateway.contract.kind import BuildContext, PolicyKind
from gateway.contract.policy import PolicyBase, check_patterns
from gateway.errors import ConfigError, SourceMetadataError, YamlSyntaxError
from gateway.yaml_source import load_source

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w|y)\s*$")

# an answer "claims facts" when it carries figures, dates or attributions;
# small talk and clarifying questions need no citation
DEFAULT_FACT_PATTERNS = [
    r"\d",
    r"\baccording to\b",
    r"\b(?:studies|research|data|reports?|statistics)\s+(?:show|shows|found|indicate|suggest)",
    r"\b(?:the (?:policy|law|rule|regulation|handbook|manual|document) (?:says|states|requires))",
]


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``: a number of seconds or ``<n><s|m|h|d|w|y>``."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or like '30d'")
    if isinstance(value, int | float):
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration like '90d', '12h' or '1y'")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_timestamp(value: Any) -> float:
    """Epoch seconds from ISO 8601 text, a date, or epoch seconds (or milliseconds)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a date: {value!r}")
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*-?\d+(?:\.\d+)?\s*", value):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO 8601 date: {value!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return moment.timestamp()
    else:
        raise ValueError(f"not a date: {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"not a date: {value!r}")
    # epoch milliseconds are common in JavaScript pipelines
    return number / 1000.0 if abs(number) > 1e11 else number


class StaleRetrievalPolicy(PolicyBase):
    kind: Literal["stale_retrieval"]
    # oldest acceptable source, e.g. "365d"; None disables the age rule
    max_age: str | float | None = None
    # fields read, in order, for a source's date
    date_fields: list[str] = Field(default_factory=lambda: ["updated_at", "published_at"])
    # what a source without a usable date counts as under max_age
    treat_as: Literal["stale", "fresh", "error"] = "stale"
    # source registry file (YAML, CSV or SQLite), relative to the policy file
    registry: str | None = None
    # table read from a SQLite registry
    registry_table: str = Field(default="sources", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # a source whose document the registry does not list
    unknown_documents: Literal["allow", "breach"] = "allow"
    # a source without a version when the registry lists one
    missing_version: Literal["allow", "breach"] = "allow"
    # how often, at most, the registry file's mtime is checked
    reload_interval_s: float = Field(default=1.0, ge=0.0)
    # answers that claim facts must cite at least this many sources
    min_sources: int = Field(default=0, ge=0)
    min_sources_when: Literal["facts", "always"] = "facts"
    fact_patterns: list[str] | None = None
    on_malformed: Literal["error", "breach"] = "error"
    # hold the whole answer until the sources are judged
    wait_for_sources: bool = False

    @field_validator("max_age")
    @classmethod
    def _duration(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            seconds = parse_duration(value)
            if seconds <= 0:
                raise ValueError("max_age must be positive")
        return value

    @field_validator("fact_patterns")
    @classmethod
    def _compiles(cls, value: list[str] | None) -> list[str] | None:
        return check_patterns(value)


# --- the source registry -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    id: str
    current_version: str | None
    status: str
    effective_from: float | None
    expires_at: float | None
    # versions that are still acceptable besides the current one
    accepted_versions: frozenset[str]


_ACTIVE = {"active", "current", "published", ""}


def _record(row: dict[str, Any], where: str) -> DocumentRecord:
    doc_id = row.get("id") or row.get("doc_id") or row.get("document_id")
    if doc_id is None or str(doc_id).strip() == "":
        raise ConfigError(f"{where}: a registry entry needs an id")

    def when(key: str) -> float | None:
        value = row.get(key)
        if value is None or value == "":
            return None
        try:
            return parse_timestamp(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {doc_id}: {key}: {exc}") from None

    version = row.get("current_version", row.get("version"))
    accepted = row.get("accepted_versions") or []
    if isinstance(accepted, str):
        accepted = [v for v in re.split(r"[;|]", accepted) if v.strip()]
    return DocumentRecord(
        id=str(doc_id),
        current_version=None if version in (None, "") else str(version),
        status=str(row.get("status") or "active").strip().lower(),
        effective_from=when("effective_from"),
        expires_at=when("expires_at"),
        accepted_versions=frozenset(str(v).strip() for v in accepted),
    )


def read_registry(path: Path, table: str = "sources") -> dict[str, DocumentRecord]:
    """Parse a registry file; raise ``ConfigError`` naming the file on any problem."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            try:
                data = load_source(path).data or {}
            except YamlSyntaxError as exc:
                raise ConfigError(f"source registry {'; '.join(exc.errors)}", exc.errors) from None
            rows = data.get("documents") if isinstance(data, dict) else None
            if not isinstance(rows, list):
                raise ConfigError(f"{path}: a YAML registry needs a `documents:` list")
        elif suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        elif suffix in (".db", ".sqlite", ".sqlite3"):
            # read-only, so a registry being written elsewhere is never locked by us
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                conn.row_factory = sqlite3.Row
                rows = [dict(r) for r in conn.execute(f"SELECT * FROM {table}")]  # noqa: S608
            finally:
                conn.close()
        else:
            raise ConfigError(f"{path}: registry must be .yaml, .yml, .csv or .sqlite")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read source registry: {exc.strerror or exc}") from None
    except (sqlite3.Error, csv.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse source registry: {exc}") from None
    out: dict[str, DocumentRecord] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ConfigError(f"{path}: entry {i} is not a mapping")
        rec = _record(row, f"{path}: entry {i}")
        out[rec.id] = rec
    return out


class SourceRegistry:
    """A registry file, re-read when its mtime changes; lookups never see a half-load."""

    def __init__(self, path: Path, table: str = "sources", reload_interval_s: float = 1.0):
        self.path = path
        self.table = table
        self.reload_interval_s = reload_interval_s
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._mtime = self._stat()
        self._docs = read_registry(path, table)
        self._checked = time.monotonic()

    def _stat(self) -> int | None:
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return None

    def get(self, doc_id: str) -> DocumentRecord | None:
        self.maybe_reload()
        return self._docs.get(doc_id)

    def __len__(self) -> int:
        return len(self._docs)

    def maybe_reload(self) -> bool:
        """Re-read the file if it changed; a broken file keeps the old entries."""
        now = time.monotonic()
        if now - self._checked < self.reload_interval_s:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # another thread is already checking
        try:
            self._checked = now
            mtime = self._stat()
            if mtime is None or mtime == self._mtime:
                return False
            try:
                docs = read_registry(self.path, self.table)
            except ConfigError as exc:
                self.last_error = str(exc)
                self._mtime = mtime
                log.error("source registry reload failed, keeping the old one: %s", exc)
                return False
            self._docs = docs  # one reference swap: readers see old or new, never a mix
            self._mtime = mtime
            self.last_error = None
            return True
        finally:
            self._lock.release()


# --- detector ----------------------------------------------------------------------


class StaleRetrievalDetector:
    blocking: bool = False
    hold_back: int | None

    def __init__(
        self,
        config: StaleRetrievalPolicy,
        registry: SourceRegistry | None,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.registry = registry
        self.clock = clock
        self.max_age_s = parse_duration(config.max_age) if config.max_age is not None else None
        patterns = DEFAULT_FACT_PATTERNS if config.fact_patterns is None else config.fact_patterns
        self._facts = [re.compile(p, re.IGNORECASE) for p in patterns]
        self.hold_back = None if config.wait_for_sources else 0

    def start(self, ctx: ScanContext) -> _SourcesScan:
        return _SourcesScan(self, ctx)

    def claims_facts(self, text: str) -> bool:
        return any(p.search(text) for p in self._facts)

    def judge(self, text: str, ctx: ScanContext) -> list[Finding]:
        """All rules on all of ``ctx``'s sources (a non-streamed answer)."""
        return self.judge_sources(text, ctx, 0, 0) + self.judge_count(text, ctx)

    def judge_sources(
        self, text: str, ctx: ScanContext, first_source: int, first_error: int
    ) -> list[Finding]:
        """The per-source rules on sources and adapter errors from the given positions on."""
        if len(ctx.sources) <= first_source and len(ctx.source_errors) <= first_error:
            # most answers on a chat route carry no sources: nothing to read the clock for
            return []
        cfg = self.config
        span = (0, len(text))
        findings: list[Finding] = []
        problems = [str(e) for e in ctx.source_errors[first_error:]]
        sources: list[dict[str, Any]] = []
        for i, src in enumerate(ctx.sources[first_source:], start=first_source):
            if isinstance(src, dict):
                sources.append(src)
            else:
                problems.append(f"source {i} is a {type(src).__name__}, not an object")
        if problems:
            if cfg.on_malformed == "error":
                raise SourceMetadataError("malformed source metadata: " + "; ".join(problems))
            for problem in problems:
                findings.append(
                    Finding(
                        span[0],
                        span[1],
                        1.0,
                        f"malformed source metadata: {problem}",
                        {"rule": "malformed", "problem": problem},
                    )
                )
        now = self.clock()
        for src in sources:
            findings.extend(self._judge_source(src, now, span))
        return findings

    def judge_count(self, text: str, ctx: ScanContext) -> list[Finding]:
        """``min_sources``, which needs the whole answer."""
        cfg = self.config
        if not cfg.min_sources or len(ctx.sources) >= cfg.min_sources:
            return []
        if cfg.min_sources_when != "always" and not self.claims_facts(text):
            return []
        return [
            Finding(
                0,
                len(text),
                1.0,
                f"answer cites {len(ctx.sources)} source(s); at least {cfg.min_sources} required",
                {"rule": "min_sources", "cited": len(ctx.sources), "required": cfg.min_sources},
            )
        ]

    def _judge_source(
        self, src: dict[str, Any], now: float, span: tuple[int, int]
    ) -> list[Finding]:
        cfg = self.config
        doc_id = str(src.get("id", ""))
        meta = {k: src[k] for k in ("id", "title", "url", "version") if k in src}
        out: list[Finding] = []

        def finding(rule: str, message: str, **extra: Any) -> None:
            out.append(
                Finding(
                    span[0],
                    span[1],
                    1.0,
                    f"source {doc_id!r}: {message}",
                    {"rule": rule, "source": meta, **extra},
                )
            )

        if self.max_age_s is not None:
            stamp, field, problem = self._date_of(src)
            if stamp is None:
                if cfg.treat_as == "error":
                    raise SourceMetadataError(f"source {doc_id!r}: {problem}")
                if cfg.treat_as == "stale":
                    finding("undated", f"{problem}; treated as stale")
            else:
                age = now - stamp
                if age > self.max_age_s:
                    finding(
                        "max_age",
                        f"{field} is {age / 86400:.0f} days old "
                        f"(limit {self.max_age_s / 86400:.0f})",
                        age_days=round(age / 86400, 1),
                        field=field,
                    )
        if self.registry is not None:
            record = self.registry.get(doc_id)
            if record is None:
                if cfg.unknown_documents == "breach":
                    finding("unknown_document", "not listed in the source registry")
                return out
            if record.status not in _ACTIVE:
                finding("withdrawn", f"document is {record.status}", status=record.status)
            if record.expires_at is not None and now >= record.expires_at:
                finding(
                    "expired",
                    "document is past its expiry date",
                    expires_at=_iso(record.expires_at),
                )
            if record.effective_from is not None and now < record.effective_from:
                finding(
                    "not_yet_effective",
                    "document is not yet in effect",
                    effective_from=_iso(record.effective_from),
                )
            version = src.get("version")
            if record.current_version is not None:
                if version is None or str(version).strip() == "":
                    if cfg.missing_version == "breach":
                        finding(
                            "missing_version",
                            "source has no version to check",
                            current_version=record.current_version,
                        )
                elif (
                    str(version).strip() != record.current_version
                    and str(version).strip() not in record.accepted_versions
                ):
                    finding(
                        "superseded",
                        f"cites version {version}, current is {record.current_version}",
                        cited_version=str(version),
                        current_version=record.current_version,
                    )
        return out

    def _date_of(self, src: dict[str, Any]) -> tuple[float | None, str, str]:
        problems = []
        for name in self.config.date_fields:
            if name not in src or src[name] in (None, ""):
                continue
            try:
                return parse_timestamp(src[name]), name, ""
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            return None, "", "unparseable date (" + "; ".join(problems) + ")"
        return None, "", "no date (" + ", ".join(self.config.date_fields) + ")"


def _iso(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _SourcesScan:
    """Judges each source once, as soon as it is known; ``min_sources`` at the end."""

    __slots__ = ("_det", "_ctx", "_sources", "_errors", "_done")

    def __init__(self, detector: StaleRetrievalDetector, ctx: ScanContext):
        self._det = detector
        self._ctx = ctx
        # how many sources and adapter errors have been judged; a stream may
        # add more in later events
        self._sources = 0
        self._errors = 0
        self._done = False

    def feed(self, text: str, final: bool) -> list[Finding]:
        if self._done:
            return []
        ctx = self._ctx
        findings: list[Finding] = []
        if len(ctx.sources) > self._sources or len(ctx.source_errors) > self._errors:
            first_source, first_error = self._sources, self._errors
            self._sources, self._errors = len(ctx.sources), len(ctx.source_errors)
            findings = self._det.judge_sources(text, ctx, first_source, first_error)
        if final:
            self._done = True
            findings += self._det.judge_count(text, ctx)
        return findings

    def hold_from(self, text: str) -> int:
        if self._det.config.wait_for_sources and not self._done:
            return 0
        return len(text)


def build(config: StaleRetrievalPolicy, ctx: BuildContext) -> StaleRetrievalDetector:
    registry = None
    if config.registry:
        path = ctx.base_dir / config.registry
        key = f"source_registry:{path.resolve()}:{config.registry_table}"
        registry = ctx.resources.shared(
            key, lambda: SourceRegistry(path, config.registry_table, config.reload_interval_s)
        )
    return StaleRetrievalDetector(config, registry, ctx.resources.clock)


KIND = PolicyKind(
    "stale_retrieval",
    StaleRetrievalPolicy,
    build,
    "Sources that are too old, superseded, withdrawn or expired; too few sources.",
)
