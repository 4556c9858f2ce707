"""Index tooling: build, bad input, add, remove, stats, query, manager hot swap."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import threading
from pathlib import Path

import pytest

from gateway.contract.detector import ScanContext
from gateway.detectors.copyright import CopyrightDetector, CopyrightPolicy
from gateway.index import (
    BuildParams,
    CopyrightIndex,
    IndexManager,
    add_documents,
    build_index,
    discover,
    ensure_index,
    remove_documents,
)
from gateway.index import build as build_mod
from gateway.index.corpus import CorpusReport, read_corpus
from gateway.index_service.cli import register

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "indexes" / "sample" / "corpus.jsonl"
LEXICAL = BuildParams(semantic=False)


def sample_records(n: int, skip: int = 0) -> list[dict]:
    with open(SAMPLE, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    return rows[skip : skip + n]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", sample_records(3))


@pytest.fixture
def small_index(tmp_path: Path, small_corpus: Path) -> Path:
    out = tmp_path / "idx"
    build_index(small_corpus, out, LEXICAL)
    return out


def copied_words(index: CopyrightIndex, doc: int, start: int, count: int) -> str:
    return " ".join(index.doc_text(doc).split()[start : start + count])


def scan(index: CopyrightIndex, text: str, **cfg) -> list:
    config = CopyrightPolicy(id="t", kind="copyright", **cfg)
    return CopyrightDetector(config, lambda: index).start(ScanContext()).feed(text, True)


def run_cli(argv: list[str], stdin: str = "", capsys=None, monkeypatch=None) -> int:
    parser = argparse.ArgumentParser(prog="gateway")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    if monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return args.func(args)


# -- build ------------------------------------------------------------------


def test_build_writes_every_layer_and_a_manifest(small_index: Path, small_corpus: Path):
    manifest = json.loads((small_index / "manifest.json").read_text())
    assert manifest["counts"]["documents"] == 3
    assert manifest["counts"]["passages"] > 30
    assert manifest["counts"]["anchors"] > manifest["counts"]["passages"]
    assert manifest["params"]["chunk_words"] == 50
    assert len(manifest["corpus"]["sha256"]) == 64
    assert manifest["model"] is None and manifest["faiss"] is None
    assert manifest["build_seconds"] >= 0
    # nothing half-written is left beside the index
    assert [p.name for p in small_index.parent.iterdir() if p.name.startswith(".")] == []
    index = CopyrightIndex(small_index)
    first = sample_records(1)[0]
    assert index.docs[0]["id"] == first["id"]
    assert index.docs[0]["meta"]["owner"] == first["owner"]
    assert index.doc_text(0) == first["text"]


def test_chunking_is_word_aware_and_configurable(tmp_path: Path, small_corpus: Path):
    out = tmp_path / "chunks"
    build_index(small_corpus, out, BuildParams(semantic=False, chunk_words=40, chunk_overlap=10))
    index = CopyrightIndex(out)
    text = index.doc_text(0)
    for pid in range(index.doc_passages(0)[1]):
        passage = index.passage_text(pid)
        start = int(index.passages[pid, 1])
        # passages start and end on word boundaries
        assert passage[0].isalnum() and passage[-1].isalnum()
        assert start == 0 or not text[start - 1].isalnum()
        assert 30 <= len(passage.split()) <= 50


def test_build_from_directory_of_text_files(tmp_path: Path):
    corpus = tmp_path / "books"
    corpus.mkdir()
    rows = sample_records(2)
    for row in rows:
        (corpus / f"{row['id']}.txt").write_text(row["text"], encoding="utf-8")
    out = tmp_path / "idx"
    report = build_index(corpus, out, LEXICAL)
    assert report.documents == 2 and report.problems == []
    index = CopyrightIndex(out)
    assert sorted(d["id"] for d in index.docs) == sorted(r["id"] for r in rows)
    copy = copied_words(index, 1, 50, 20)
    found = scan(index, "Intro words here. " + copy + " and some closing words.")
    assert [f.evidence["source_id"] for f in found] == [index.docs[1]["id"]]


def test_bad_input_is_reported_per_file_and_nothing_is_dropped(tmp_path: Path):
    corpus = tmp_path / "mixed"
    corpus.mkdir()
    good = sample_records(2)
    (corpus / "good.txt").write_text(good[0]["text"], encoding="utf-8")
    (corpus / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (corpus / "empty.txt").write_text("   \n", encoding="utf-8")
    (corpus / "picture.png").write_bytes(b"\x89PNG")
    os.symlink(corpus / "missing.txt", corpus / "dangling.txt")
    lines = [
        json.dumps({"id": "a", "text": good[1]["text"], "title": "A"}),
        "{not json",
        json.dumps({"id": "b"}),
        json.dumps({"text": "no id here"}),
        json.dumps({"id": "a", "text": "same id again"}),
        json.dumps({"id": "c", "text": ""}),
        json.dumps(["a", "list"]),
    ]
    (corpus / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = CorpusReport()
    docs = list(read_corpus(corpus, report))
    assert sorted(d.id for d in docs) == ["a", "good"]
    kinds = sorted((Path(p.where.split(":")[0]).name, p.kind) for p in report.problems)
    assert kinds == [
        ("dangling.txt", "unreadable"),
        ("empty.txt", "empty"),
        ("latin1.txt", "not-utf8"),
        ("picture.png", "skipped-file"),
        ("records.jsonl", "bad-record"),
        ("records.jsonl", "bad-record"),
        ("records.jsonl", "bad-record"),
        ("records.jsonl", "bad-record"),
        ("records.jsonl", "duplicate-id"),
        ("records.jsonl", "empty"),
    ]
    by_line = {p.where.rsplit(":", 1)[-1]: p for p in report.problems if ".jsonl:" in p.where}
    assert "invalid JSON" in by_line["2"].detail
    assert "text must be a string" in by_line["3"].detail
    assert "missing id" in by_line["4"].detail
    assert "'a'" in by_line["5"].detail
    assert "byte 3" in next(p.detail for p in report.problems if p.kind == "not-utf8")
    # every input is accounted for: read or reported
    assert report.read + len(report.problems) == 5 + len(lines)


def test_cli_build_prints_each_problem_and_exits_nonzero(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "c.jsonl"
    rows = sample_records(1)
    corpus.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n", encoding="utf-8")
    code = run_cli(
        [
            "index",
            "build",
            "--corpus",
            str(corpus),
            "--out",
            str(tmp_path / "i"),
            "--no-semantic",
            "--no-progress",
        ],
        monkeypatch=monkeypatch,
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert f"c.jsonl:2: duplicate-id: id '{rows[0]['id']}'" in err
    assert "1 input(s) were not indexed" in err
    summary = json.loads(out)
    assert summary["documents"] == 1 and summary["problem_count"] == 1


def test_missing_corpus_is_reported(tmp_path: Path):
    report = build_index(tmp_path / "nope.jsonl", tmp_path / "i", LEXICAL)
    assert report.documents == 0
    assert any("unreadable" in p and "no such file" in p for p in report.problems)


def test_interrupted_build_keeps_the_old_index_and_restarts_cleanly(
    tmp_path: Path, small_index: Path, small_corpus: Path, monkeypatch
):
    before = (small_index / "manifest.json").read_text()

    def boom(self, doc):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build_mod._Writer, "add", boom)
    with pytest.raises(RuntimeError):
        build_index(small_corpus, small_index, LEXICAL)
    monkeypatch.undo()
    assert (small_index / "manifest.json").read_text() == before
    assert not (small_index.parent / f".{small_index.name}.partial").exists()
    # a partial directory left by a killed process is cleared on the next run
    (small_index.parent / f".{small_index.name}.partial").mkdir()
    build_index(small_corpus, small_index, LEXICAL)
    assert CopyrightIndex(small_index).counts()["documents"] == 3


def test_ensure_index_builds_once(tmp_path: Path, small_corpus: Path):
    out = tmp_path / "demo"
    ensure_index(small_corpus, out, LEXICAL)
    first = json.loads((out / "manifest.json").read_text())["created_at"]
    stamp = (out / "manifest.json").stat().st_mtime_ns
    ensure_index(small_corpus, out, LEXICAL)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "manifest.json").read_text())["created_at"] == first


def test_rebuild_in_place_keeps_a_corpus_stored_in_the_index_directory(tmp_path: Path):
    out = tmp_path / "sample"
    out.mkdir()
    corpus = write_jsonl(out / "corpus.jsonl", sample_records(2))
    build_index(corpus, out, LEXICAL)
    build_index(corpus, out, LEXICAL)
    assert corpus.exists()
    assert CopyrightIndex(out).counts()["documents"] == 2


# -- add / remove / stats / query ---------------------------------------------


def test_add_makes_new_documents_match_without_rebuild(tmp_path: Path, small_index: Path):
    extra = write_jsonl(tmp_path / "more.jsonl", sample_records(2, skip=3))
    old_anchors = CopyrightIndex(small_index).counts()["anchors"]
    report = add_documents(small_index, extra)
    assert report.documents == 2 and report.problems == []
    index = CopyrightIndex(small_index)
    assert index.counts()["documents"] == 5
    assert index.counts()["anchors"] > old_anchors
    assert index.manifest.generation == 2
    assert index.manifest.updates[0].op == "add"
    copy = copied_words(index, 4, 100, 25)
    found = scan(index, "Well. " + copy + " That was it.")
    assert found and found[0].evidence["source_id"] == sample_records(1, skip=4)[0]["id"]
    # old documents still match
    assert scan(index, copied_words(index, 0, 10, 20))


def test_add_refuses_ids_already_indexed(tmp_path: Path, small_index: Path):
    again = write_jsonl(tmp_path / "again.jsonl", sample_records(1))
    report = add_documents(small_index, again)
    assert report.documents == 0
    assert len(report.problems) == 1 and "duplicate-id" in report.problems[0]


def test_remove_takes_a_document_down(small_index: Path):
    index = CopyrightIndex(small_index)
    victim = index.docs[1]["id"]
    copy = copied_words(index, 1, 30, 30)
    assert scan(index, copy)
    report = remove_documents(small_index, [victim, "no-such-id"])
    assert report.documents == 1
    assert report.problems == ["no-such-id: unknown-id: no document with this id in the index"]
    after = CopyrightIndex(small_index)
    assert scan(after, copy) == []
    assert after.counts()["documents"] == 2 and after.counts()["documents_removed"] == 1
    # the text itself is gone from disk, not just hidden
    assert (
        copy.split()[5].encode()
        not in (small_index / "texts.bin").read_bytes()[
            after.docs[1]["byte_start"] : after.docs[1]["byte_end"]
        ]
    )
    # other documents are untouched
    assert scan(after, copied_words(after, 2, 30, 30))
    again = remove_documents(small_index, [victim])
    assert again.problems and "already-removed" in again.problems[0]


def test_stats_cli_prints_counts_memory_and_manifest(small_index: Path, capsys, monkeypatch):
    assert run_cli(["index", "stats", str(small_index)], monkeypatch=monkeypatch) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["counts"]["documents"] == 3
    assert stats["memory"]["anchors_bytes"] > 0 and stats["memory"]["process_rss_bytes"] > 0
    assert stats["manifest"]["params"]["anchor_words"] == 4


def test_stats_cli_on_a_missing_index(tmp_path: Path, capsys, monkeypatch):
    assert run_cli(["index", "stats", str(tmp_path / "none")], monkeypatch=monkeypatch) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_query_cli_text_and_jsonl(small_index: Path, capsys, monkeypatch):
    index = CopyrightIndex(small_index)
    copy = copied_words(index, 2, 40, 18)
    text = "Opening words of an answer. " + copy + " Closing."
    assert run_cli(["index", "query", str(small_index)], text, monkeypatch=monkeypatch) == 0
    out = json.loads(capsys.readouterr().out)
    (finding,) = out["findings"]
    assert text[finding["span"][0] : finding["span"][1]] == copy
    assert finding["evidence"]["match_type"] == "verbatim"
    lines = "\n".join(
        [
            json.dumps({"id": "hit", "text": text}),
            json.dumps({"id": "miss", "text": "hello"}),
            "{broken",
        ]
    )
    code = run_cli(
        ["index", "query", str(small_index), "--jsonl", "--min-words", "20"],
        lines,
        monkeypatch=monkeypatch,
    )
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert [r.get("id") for r in rows] == ["hit", "miss", None]
    # 18 copied words are under a 20-word threshold
    assert rows[0]["findings"] == [] and rows[1]["findings"] == []
    assert "error" in rows[2]


def test_query_cli_semantic_needs_vectors(small_index: Path, capsys, monkeypatch):
    code = run_cli(
        ["index", "query", str(small_index), "--match", "semantic"], "x", monkeypatch=monkeypatch
    )
    assert code == 2 and "without vectors" in capsys.readouterr().err


# -- manager --------------------------------------------------------------------


def test_discover_lists_built_indexes(tmp_path: Path, small_corpus: Path):
    build_index(small_corpus, tmp_path / "idx" / "one", LEXICAL)
    (tmp_path / "idx" / "not-built").mkdir()
    assert list(discover(tmp_path / "idx")) == ["one"]
    manager = IndexManager.from_root(tmp_path / "idx")
    assert manager.names() == ["one"]
    with pytest.raises(KeyError):
        manager.get("two")


def test_reload_swaps_while_scans_keep_running(tmp_path: Path, small_index: Path):
    manager = IndexManager({"main": small_index})
    old = manager.get("main")
    config = CopyrightPolicy(id="t", kind="copyright", index="main")
    detector = CopyrightDetector(config, lambda: manager.get("main"))
    copy = copied_words(old, 0, 60, 20)
    results: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def scanner() -> None:
        try:
            while not stop.is_set():
                results.append(len(detector.start(ScanContext()).feed(copy, True)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=scanner)
    thread.start()
    try:
        extra = write_jsonl(tmp_path / "more.jsonl", sample_records(1, skip=5))
        add_documents(small_index, extra)
        fresh = manager.reload("main")
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert results and all(n == 1 for n in results)
    assert fresh is manager.get("main") and fresh is not old
    assert fresh.counts()["documents"] == 4
    # the old object is still usable by a scan that started before the swap
    assert len(scan(old, copy)) == 1


def test_failed_reload_keeps_the_old_index(tmp_path: Path, small_index: Path):
    manager = IndexManager({"main": small_index})
    old = manager.get("main")
    (small_index / "manifest.json").write_text("{broken")
    with pytest.raises(Exception, match="manifest"):
        manager.reload("main")
    assert manager.get("main") is old
    assert "manifest" in manager.status()["main"]["error"]


async def test_watch_reloads_when_the_manifest_changes(tmp_path: Path, small_index: Path):
    manager = IndexManager({"main": small_index}, preload=True)
    old = manager.get("main")
    task = asyncio.create_task(manager.watch(interval=0.05))
    try:
        await asyncio.to_thread(
            add_documents, small_index, write_jsonl(tmp_path / "m.jsonl", sample_records(1, 6))
        )
        for _ in range(200):
            if manager.get("main") is not old:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert manager.get("main").manifest.generation == 2
