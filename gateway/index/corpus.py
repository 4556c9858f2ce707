"""Reading a corpus to index: plain text files, a directory of them, or JSONL.

Every record that is not indexed is reported with where it came from and why
(unreadable file, not UTF-8, empty text, duplicate id, malformed JSON line);
nothing is dropped silently. The reader yields good documents and collects
problems in a ``CorpusReport`` that the build prints as a summary.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEXT_SUFFIXES = (".txt", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")
# metadata kept as evidence; any other scalar field of a JSONL record is kept too
KNOWN_META = ("title", "owner", "licence", "url")


@dataclass(slots=True)
class Document:
    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = ""


@dataclass(slots=True)
class Problem:
    where: str
    kind: str  # unreadable | not-utf8 | empty | duplicate-id | bad-record | skipped-file
    detail: str

    def __str__(self) -> str:
        return f"{self.where}: {self.kind}: {self.detail}"


@dataclass
class CorpusReport:
    read: int = 0
    problems: list[Problem] = field(default_factory=list)
    digest: Any = field(default_factory=hashlib.sha256)

    def add(self, where: str, kind: str, detail: str) -> None:
        self.problems.append(Problem(where, kind, detail))

    def summary(self) -> dict[str, Any]:
        return {
            "documents": self.read,
            "problems": len(self.problems),
            "by_kind": dict(Counter(p.kind for p in self.problems)),
        }

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith(JSONL_SUFFIXES)


def read_corpus(
    path: str | Path, report: CorpusReport, known_ids: Iterable[str] = ()
) -> Iterator[Document]:
    """Yield the documents of ``path``; problems go to ``report``.

    ``known_ids`` are ids already in the index (for ``add``): a document
    reusing one is a duplicate, reported and not indexed.
    """
    root = Path(path)
    seen: set[str] = set(known_ids)
    if root.is_dir():
        # broken links are listed too, so they are reported as unreadable
        files = sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())
        if not files:
            report.add(str(root), "empty", "the directory holds no files")
        for file in files:
            rel = file.relative_to(root).with_suffix("").as_posix()
            if _is_jsonl(file):
                yield from _read_jsonl(file, report, seen)
            elif file.suffix.lower() in TEXT_SUFFIXES:
                yield from _read_text(file, rel, report, seen)
            else:
                report.add(
                    str(file),
                    "skipped-file",
                    "not a text or JSONL file (expected "
                    + ", ".join(TEXT_SUFFIXES + JSONL_SUFFIXES)
                    + ")",
                )
    elif root.is_file() or root.exists():
        if _is_jsonl(root):
            yield from _read_jsonl(root, report, seen)
        else:
            yield from _read_text(root, root.stem, report, seen)
    else:
        report.add(str(root), "unreadable", "no such file or directory")


def _read_bytes(file: Path, report: CorpusReport) -> bytes | None:
    try:
        data = file.read_bytes()
    except OSError as exc:
        report.add(str(file), "unreadable", exc.strerror or str(exc))
        return None
    if file.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            report.add(str(file), "unreadable", f"not a valid gzip file: {exc}")
            return None
    report.digest.update(file.name.encode("utf-8"))
    report.digest.update(data)
    return data


def _decode(data: bytes, where: str, report: CorpusReport) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        report.add(
            where,
            "not-utf8",
            f"byte {exc.start} (0x{data[exc.start]:02x}) is not valid UTF-8; "
            "re-encode the file as UTF-8",
        )
        return None


def _accept(doc: Document, report: CorpusReport, seen: set[str]) -> bool:
    if not doc.text.strip():
        report.add(doc.where, "empty", f"document {doc.id!r} has no text")
        return False
    if doc.id in seen:
        report.add(doc.where, "duplicate-id", f"id {doc.id!r} is already in the corpus or index")
        return False
    seen.add(doc.id)
    report.read += 1
    return True


def _read_text(file: Path, doc_id: str, report: CorpusReport, seen: set[str]) -> Iterator[Document]:
    data = _read_bytes(file, report)
    if data is None:
        return
    text = _decode(data, str(file), report)
    if text is None:
        return
    doc = Document(doc_id, text, {"title": file.stem}, str(file))
    if _accept(doc, report, seen):
        yield doc


def _read_jsonl(file: Path, report: CorpusReport, seen: set[str]) -> Iterator[Document]:
    data = _read_bytes(file, report)
    if data is None:
        return
    text = _decode(data, str(file), report)
    if text is None:
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            report.add(where, "bad-record", f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(record, dict):
            report.add(where, "bad-record", "a line must hold a JSON object with id and text")
            continue
        doc_id, body = record.get("id"), record.get("text")
        if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
            report.add(where, "bad-record", "missing id")
            continue
        if not isinstance(body, str):
            report.add(where, "bad-record", f"record {doc_id!r}: text must be a string")
            continue
        meta: dict[str, Any] = {}
        for key, value in record.items():
            if key in ("id", "text"):
                continue
            if key == "license":  # accept the American spelling, store one name
                key = "licence"
            if value is None or isinstance(value, str | int | float | bool):
                meta[key] = value
        doc = Document(str(doc_id), body, meta, where)
        if _accept(doc, report, seen):
            yield doc
