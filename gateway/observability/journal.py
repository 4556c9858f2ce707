"""A write-ahead journal of decision records: a crash loses none that was answered.

Decision records reach the store and the incident rules in batches, off the
request path, so a SIGKILL between an answer and its batch would lose both
the audit record and any incident it should open. Each process therefore
appends, with one ``write`` each, to journal files it holds a lock on:

- a *begin* line when an answer is about to leave: small, and enough to
  rebuild a record (with the verdicts that were not a pass) if the process
  dies before the full record is written;
- the full record, once the exchange is over;
- a *checkpoint* line each time a durable consumer (the decision log, the
  incident service) has committed a prefix of the records it was handed.

A segment is a preallocated file mapped into memory (``MAP_SHARED``): a
line is a copy into pages the kernel owns, which outlive the process, so a
SIGKILL cannot take them (a power cut can; an fsync per request would put a
disk flush on the request path). A ``write`` call would do the same, but
it waits whenever the file system is busy committing, as it is after each
SQLite transaction on the same disk: about 11 µs a line measured here,
against about half a microsecond for the copy. If the journal cannot be
written (a full disk), it turns itself off and deletes its files: requests
never fail for it. On start, the journals of dead
processes (their lock is free) are replayed: each consumer gets the records
past its checkpoint, and a begin line without its record becomes a record of
an interrupted exchange for every consumer. Replay notes each consumer it
finished in a ``.progress`` file, so neither a retry nor a crash during
replay hands the same records to a consumer twice. Journal files are
deleted once everything in them is committed: at rotation, at a clean stop,
after replay.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from gateway.errors import ExchangeInterrupted
from gateway.records.decision import DecisionRecord, PolicyVerdict

log = logging.getLogger(__name__)

# a segment past this size is sealed and a new one started
SEGMENT_BYTES = 8 * 1024 * 1024
# map a new segment's pages at once rather than on each first write (Linux)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
INTERRUPTED = ExchangeInterrupted(
    "the gateway stopped before this exchange finished; the record was rebuilt from the journal"
)


# a begin line's fields, in order; ``policies`` holds the verdicts that were not a
# pass as [id, kind, mode, status, action, severity], ``error`` is [code, message]
BEGIN_FIELDS = (
    "decision_id",
    "ts",
    "route",
    "upstream",
    "protocol",
    "path",
    "model",
    "stream",
    "action",
    "policies",
    "error",
)


class Durable(Protocol):
    """A consumer of decision records that commits them somewhere that outlives the process.

    It counts the records the bus hands it; after each commit it calls
    ``committed(n)`` with how many of them, from the first, are committed (or
    given up on, such as records dropped from a full queue).
    """

    name: str
    committed: Callable[[int], None]

    async def replay(self, records: list[DecisionRecord]) -> None:
        """Commit ``records`` recovered from a dead process's journal, or raise."""


@dataclass
class _Dead:
    """What a dead process's journal holds."""

    files: list[Path]
    progress: Path | None = None
    records: list[tuple[int, DecisionRecord]] = field(default_factory=list)
    begun: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: dict[str, int] = field(default_factory=dict)
    # consumers an earlier replay already handed everything to
    done: set[str] = field(default_factory=set)


class DecisionJournal:
    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.consumers: list[Durable] = []
        # records written since this process started; a record's index is its position
        self.published = 0
        self._marks: dict[str, int] = {}
        self._prefix = f"p{os.getpid()}-{time.time_ns()}"
        self._lock_fd: int | None = None
        # the mapped segment being written, and where its next line goes
        self._map: mmap.mmap | None = None
        self._pos = 0
        self._segment = 0
        # sealed segments waiting for every consumer to pass their last record
        self._sealed: list[tuple[Path, int]] = []
        # begin lines whose record is not written yet: carried into a new segment
        self._open: dict[str, bytes] = {}

    # -- set-up --------------------------------------------------------------------
    def register(self, consumer: Durable) -> None:
        """Track ``consumer``'s commits; call before the first record is published."""
        base = self.published
        name = consumer.name

        def committed(count: int) -> None:
            self._checkpoint(name, base + count)

        consumer.committed = committed
        self.consumers.append(consumer)
        self._marks[name] = base

    def open(self) -> None:
        """Create this process's journal and take its lock."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        # locked under a name replay ignores, then renamed: another process
        # never sees this lock file unlocked and takes it for a dead one's
        hidden = self.directory / f".{self._prefix}.lock"
        self._lock_fd = os.open(hidden, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        os.rename(hidden, self._lock_path())
        self._start_segment()

    def _lock_path(self) -> Path:
        return self.directory / f"{self._prefix}.lock"

    def _path(self, number: int) -> Path:
        return self.directory / f"{self._prefix}.{number:06d}.jsonl"

    def _start_segment(self, then: int = 0) -> None:
        """A new mapped segment, room for its head and a line of ``then`` bytes after it."""
        self._segment += 1
        head = orjson.dumps({"seg": self.published, "ck": self._marks}) + b"\n"
        # begin lines whose record is still to come move along with the segment
        head += b"".join(self._open.values())
        size = max(self.segment_bytes, len(head) + then + 4096)
        try:
            fd = os.open(self._path(self._segment), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # blocks reserved now: a page written later can never meet a
                # full disk (which would kill the process with SIGBUS)
                os.posix_fallocate(fd, 0, size)
                self._map = mmap.mmap(
                    fd, size, mmap.MAP_SHARED | _POPULATE, mmap.PROT_READ | mmap.PROT_WRITE
                )
            finally:
                os.close(fd)
            self._map[: len(head)] = head
        except (OSError, ValueError) as exc:
            self._disable(exc)
            return
        self._pos = len(head)

    # -- the request path ------------------------------------------------------------
    def begin(self, fields: tuple[Any, ...]) -> None:
        """An answer is about to leave: keep enough to rebuild its record.

        ``fields`` are, in order, what ``BEGIN_FIELDS`` names: positional,
        as this runs on the request path.
        """
        if self._map is None:
            return
        try:
            line = b'{"b":' + orjson.dumps(fields) + b"}\n"
        except TypeError as exc:  # a bug of ours must not fail the request
            self._disable(exc)
            return
        self._open[fields[0]] = line
        self._write(line)

    def record(self, record: DecisionRecord) -> None:
        """The exchange is over: its full record (subscribed to the bus before any consumer)."""
        index = self.published
        self.published += 1
        self._open.pop(record.decision_id, None)
        if self._map is None:
            return
        try:
            line = orjson.dumps({"r": record.to_json(), "i": index}) + b"\n"
        except TypeError as exc:
            self._disable(exc)
            return
        self._write(line)

    def _checkpoint(self, name: str, mark: int) -> None:
        if mark <= self._marks.get(name, 0):
            return
        self._marks[name] = mark
        self._write(orjson.dumps({"c": name, "n": mark}) + b"\n")
        self._drop_sealed()

    def _write(self, data: bytes) -> None:
        if self._map is None:
            return
        end = self._pos + len(data)
        if end > len(self._map):
            self._roll(len(data))
            if self._map is None:
                return
            end = self._pos + len(data)
        self._map[self._pos : end] = data
        self._pos = end

    def _disable(self, exc: Exception) -> None:
        """Stop journaling for the life of the process, and leave nothing stale behind.

        Requests go on, and their records still go to the store; only what a
        crash would lose is no longer protected. The files written so far are
        deleted, or a crash would replay records committed after this.
        """
        log.error(
            "the decision journal is off until restart; a crash may lose the records "
            "of answers in flight: %s",
            exc,
        )
        if self._map is not None:
            self._map.close()
            self._map = None
        self._open.clear()
        self._sealed.clear()
        for path in [*self._own_files(), self._lock_path()]:
            _unlink(path)

    def _roll(self, then: int = 0) -> None:
        old, self._map = self._map, None
        assert old is not None
        old.close()
        self._sealed.append((self._path(self._segment), self.published))
        self._start_segment(then)
        self._drop_sealed()

    def _low_mark(self) -> int:
        return min(self._marks.values(), default=self.published)

    def _drop_sealed(self) -> None:
        low = self._low_mark()
        while self._sealed and self._sealed[0][1] <= low:
            path, _ = self._sealed.pop(0)
            _unlink(path)

    # -- stop ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop writing; delete this process's files if every consumer committed everything."""
        if self._lock_fd is None:
            return
        if self._map is not None:
            self._map.close()
            self._map = None
        clean = not self._open and self._low_mark() >= self.published
        if clean:
            for path in [*self._own_files(), self._lock_path()]:
                _unlink(path)
        else:
            log.warning(
                "decision journal kept for the next start: %d records not committed",
                self.published - self._low_mark(),
            )
        os.close(self._lock_fd)
        self._lock_fd = None

    def _own_files(self) -> list[Path]:
        return sorted(self.directory.glob(f"{self._prefix}.*.jsonl"))

    # -- replay ----------------------------------------------------------------------------
    async def replay(self) -> int:
        """Hand the records of dead processes' journals to the consumers; the count replayed.

        A consumer that fails leaves the journal in place for the next try.
        """
        total = 0
        for dead in self._dead_journals():
            total += await self._replay_one(dead)
        return total

    def _dead_journals(self) -> Iterator[_Dead]:
        for lock in sorted(self.directory.glob("p*.lock")):
            prefix = lock.name[: -len(".lock")]
            if prefix == self._prefix:
                continue
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:
                continue  # another process replayed it meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive, or another replays it
                segments = sorted(self.directory.glob(f"{prefix}.*.jsonl"))
                progress = self.directory / f"{prefix}.progress"
                dead = _read(segments, progress)
                dead.progress = progress
                dead.files += [progress, lock]
                yield dead
            finally:
                os.close(fd)

    async def _replay_one(self, dead: _Dead) -> int:
        recorded = {rec.decision_id for _, rec in dead.records}
        interrupted = [
            interrupted_record(b) for did, b in dead.begun.items() if did not in recorded
        ]
        handed = 0
        for consumer in self.consumers:
            if consumer.name in dead.done:
                continue  # an earlier replay, here or in a process that died, got this far
            mark = dead.checkpoints.get(consumer.name, 0)
            todo = [rec for index, rec in dead.records if index >= mark] + interrupted
            if todo:
                await consumer.replay(todo)
                handed = max(handed, len(todo))
            # written down at once: a retry, or a crash now, must not apply these twice
            dead.done.add(consumer.name)
            if dead.progress is not None:
                with dead.progress.open("ab") as progress:
                    progress.write(orjson.dumps({"done": consumer.name}) + b"\n")
        for path in dead.files:
            _unlink(path)
        if handed:
            log.warning(
                "replayed %d decision records from the journal of a stopped process "
                "(%d interrupted exchanges)",
                handed,
                len(interrupted),
            )
        return handed


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.error("cannot delete decision journal file %s: %s", path, exc)


def _read(files: list[Path], progress: Path) -> _Dead:
    dead = _Dead(files=list(files))
    try:
        for line in progress.read_bytes().splitlines():
            try:
                dead.done.add(orjson.loads(line)["done"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by a crash
    except FileNotFoundError:
        pass
    for path in files:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            log.error("cannot read decision journal %s: %s", path, exc)
            continue
        # a segment is preallocated: its unused tail is zeros
        for line in raw.rstrip(b"\x00").split(b"\n"):
            if not line:
                continue
            try:
                entry = orjson.loads(line)
                _take(dead, entry)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                # the last line of a process killed mid-write
                continue
    return dead


def _take(dead: _Dead, entry: dict[str, Any]) -> None:
    if "r" in entry:
        dead.records.append((int(entry["i"]), DecisionRecord.from_json(entry["r"])))
    elif "b" in entry:
        begun = dict(zip(BEGIN_FIELDS, entry["b"], strict=True))
        dead.begun[begun["decision_id"]] = begun
    elif "c" in entry:
        name, mark = entry["c"], int(entry["n"])
        dead.checkpoints[name] = max(dead.checkpoints.get(name, 0), mark)
    elif "seg" in entry:
        for name, mark in (entry.get("ck") or {}).items():
            dead.checkpoints[name] = max(dead.checkpoints.get(name, 0), int(mark))


def interrupted_record(begun: dict[str, Any]) -> DecisionRecord:
    """The record of an exchange whose process died after its answer started."""
    data = dict(begun)
    verdicts = [
        PolicyVerdict(
            id=p[0], kind=p[1], mode=p[2], status=p[3], action=p[4], severity=p[5], elapsed_ms=0.0
        )
        for p in begun.get("policies") or ()
    ]
    data["policies"] = [v.to_json() for v in verdicts]
    data["breached"] = [v.id for v in verdicts if v.status == "breach"]
    error = begun.get("error")
    data["error"] = (
        {"code": error[0], "message": error[1]}
        if error
        else {"code": INTERRUPTED.code, "message": INTERRUPTED.message}
    )
    return DecisionRecord.from_json(data)
