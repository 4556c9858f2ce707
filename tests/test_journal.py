"""The decision journal: what a dead process leaves is replayed once, to whom needs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.observability.journal import DecisionJournal
from gateway.records.decision import DecisionRecord


class Consumer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.got: list[DecisionRecord] = []
        self.replayed: list[DecisionRecord] = []
        self.committed = lambda count: None

    def take(self, record: DecisionRecord) -> None:
        self.got.append(record)

    async def replay(self, records: list[DecisionRecord]) -> None:
        self.replayed.extend(records)


def record(n: int) -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"d{n}",
        ts=1000.0 + n,
        route="default",
        upstream="http://up",
        protocol="openai-chat",
        path="/v1/chat/completions",
        model="gpt-test",
        stream=False,
        revision="r1",
        action="allow",
    )


def begin(n: int) -> tuple:
    """A begin line's fields, as the exchange writes them."""
    return (
        f"d{n}",
        1000.0 + n,
        "default",
        "http://up",
        "openai-chat",
        "/v1/chat/completions",
        "gpt-test",
        True,
        "block",
        [("no-leak", "phrases", "enforce", "breach", "block", "high")],
        None,
    )


def die(journal: DecisionJournal) -> None:
    """What SIGKILL leaves: the files, and a lock nobody holds."""
    assert journal._map is not None and journal._lock_fd is not None
    journal._map.close()
    os.close(journal._lock_fd)
    journal._map = None
    journal._lock_fd = None


def new_journal(directory: Path, *names: str, **kw) -> tuple[DecisionJournal, list[Consumer]]:
    journal = DecisionJournal(directory, **kw)
    consumers = [Consumer(n) for n in names]
    for c in consumers:
        journal.register(c)
    journal.open()
    return journal, consumers


async def test_each_consumer_gets_what_it_had_not_committed_and_interrupted_ones(tmp_path):
    dead, (log, incidents) = new_journal(tmp_path, "decisions", "incidents")
    for n in range(5):
        dead.begin(begin(n))
        dead.record(record(n))
    log.committed(4)
    incidents.committed(2)
    dead.begin(begin(5))  # answered, then killed before its record
    die(dead)

    live, (log2, incidents2) = new_journal(tmp_path, "decisions", "incidents")
    assert await live.replay() == 4
    assert [r.decision_id for r in log2.replayed] == ["d4", "d5"]
    assert [r.decision_id for r in incidents2.replayed] == ["d2", "d3", "d4", "d5"]
    rebuilt = log2.replayed[-1]
    assert rebuilt.action == "block" and rebuilt.stream
    assert rebuilt.error is not None and rebuilt.error["code"] == "interrupted"
    assert [(p.id, p.status, p.severity) for p in rebuilt.policies] == [
        ("no-leak", "breach", "high")
    ]
    assert rebuilt.breached == ("no-leak",)
    # replayed once: the dead files are gone, a second replay finds nothing
    assert await live.replay() == 0
    assert len(list(tmp_path.glob("*.jsonl"))) == 1
    live.close()
    assert not list(tmp_path.iterdir())


async def test_a_live_process_journal_is_left_alone(tmp_path):
    alive, _ = new_journal(tmp_path, "decisions")
    alive.record(record(1))
    other, (log,) = new_journal(tmp_path, "decisions")
    assert await other.replay() == 0
    assert log.replayed == []
    other.close()
    assert list(tmp_path.glob(f"{alive._prefix}*"))


async def test_a_torn_last_line_is_skipped(tmp_path):
    dead, _ = new_journal(tmp_path, "decisions")
    dead.record(record(1))
    dead._write(b'{"r": {"decision_id": "d2", "ts": 10')
    die(dead)
    live, (log,) = new_journal(tmp_path, "decisions")
    await live.replay()
    assert [r.decision_id for r in log.replayed] == ["d1"]


async def test_sealed_segments_go_once_every_consumer_passed_them(tmp_path):
    journal, (log, incidents) = new_journal(tmp_path, "decisions", "incidents", segment_bytes=2000)
    for n in range(40):
        journal.record(record(n))
    segments = sorted(tmp_path.glob("*.jsonl"))
    assert len(segments) > 3
    log.committed(40)
    assert len(list(tmp_path.glob("*.jsonl"))) == len(segments)  # incidents lag behind
    incidents.committed(40)
    assert len(list(tmp_path.glob("*.jsonl"))) == 1
    journal.close()
    assert not list(tmp_path.iterdir())


async def test_records_not_committed_at_stop_are_kept_for_the_next_start(tmp_path):
    journal, (log,) = new_journal(tmp_path, "decisions")
    journal.record(record(1))
    journal.close()
    assert log.replayed == []
    nxt, (log2,) = new_journal(tmp_path, "decisions")
    await nxt.replay()
    assert [r.decision_id for r in log2.replayed] == ["d1"]


def test_files_are_private(tmp_path):
    journal, _ = new_journal(tmp_path / "journal", "decisions")
    assert (tmp_path / "journal").stat().st_mode & 0o777 == 0o700
    for path in (tmp_path / "journal").iterdir():
        assert path.stat().st_mode & 0o777 == 0o600
    journal.close()


class Failing(Consumer):
    """A consumer whose store is down for its first ``failures`` replays."""

    def __init__(self, name: str, failures: int) -> None:
        super().__init__(name)
        self.failures = failures

    async def replay(self, records: list[DecisionRecord]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store down")
        await super().replay(records)


async def test_a_replay_that_fails_half_way_hands_nothing_twice(tmp_path):
    dead, _ = new_journal(tmp_path, "decisions", "incidents")
    for n in range(3):
        dead.record(record(n))
    die(dead)
    live = DecisionJournal(tmp_path)
    log, incidents = Consumer("decisions"), Failing("incidents", failures=1)
    live.register(log)
    live.register(incidents)
    live.open()
    with pytest.raises(ConnectionError):
        await live.replay()
    assert len(list(tmp_path.glob("*.progress"))) == 1  # the dead journal is kept
    await live.replay()
    assert [r.decision_id for r in log.replayed] == ["d0", "d1", "d2"]
    assert [r.decision_id for r in incidents.replayed] == ["d0", "d1", "d2"]
    assert not list(tmp_path.glob("*.progress"))
    # a process that dies during a replay leaves its progress for the next one
    dead2, _ = new_journal(tmp_path, "decisions")
    dead2.record(record(9))
    die(dead2)
    (tmp_path / f"{dead2._prefix}.progress").write_bytes(b'{"done": "decisions"}\n{"do')
    await live.replay()
    assert [r.decision_id for r in log.replayed] == ["d0", "d1", "d2"]
    assert [r.decision_id for r in incidents.replayed][-1] == "d9"
    live.close()


async def test_a_journal_that_cannot_write_turns_off_without_failing_requests(tmp_path):
    journal, (log,) = new_journal(tmp_path, "decisions", segment_bytes=2000)
    journal.record(record(0))
    # the next segment's file cannot be created
    (tmp_path / f"{journal._prefix}.000002.jsonl").mkdir()
    for n in range(1, 20):
        journal.begin(begin(n))
        journal.record(record(n))
    assert journal._map is None
    # nothing stale is left for a replay to hand out again (only the folder in the way)
    left = [p for p in tmp_path.iterdir() if not p.is_dir()]
    assert left == []
    log.committed(20)
    journal.close()
