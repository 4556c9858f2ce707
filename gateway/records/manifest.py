"""``IndexManifest``: what a built copyright index holds and how it was made.

Written as ``manifest.json`` beside the index files, last, so a directory
with a manifest is complete. The gateway's index watcher reloads an index
when this file changes; the admin API and ``gateway index stats`` show it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = 1
FILE = "manifest.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Counts(_Frozen):
    documents: int = 0
    passages: int = 0
    anchors: int = 0
    vectors: int = 0
    # documents marked removed by ``gateway index remove`` (kept until a rebuild)
    documents_removed: int = 0


class CorpusInfo(_Frozen):
    path: str
    sha256: str
    documents: int = 0
    problems: int = 0
    by_kind: dict[str, int] = Field(default_factory=dict)


class Update(_Frozen):
    """One ``add`` or ``remove`` applied since the build."""

    op: str
    documents: int
    at: str
    corpus_sha256: str | None = None


class IndexManifest(_Frozen):
    # the on-disk index layout; an index of another format is refused
    format: int
    name: str
    created_at: str
    updated_at: str
    build_seconds: float
    # the sentence-embedding model of the semantic layer; None without one
    model: str | None
    # the build parameters (``gateway.index.build.BuildParams``)
    params: dict[str, Any]
    counts: Counts
    corpus: CorpusInfo
    # FAISS index type and search settings, chosen by corpus size
    faiss: dict[str, Any] | None = None
    # the static first-stage screen distilled from the model
    screen: dict[str, Any] | None = None
    generation: int = 1
    updates: tuple[Update, ...] = ()
    schema_version: int = Field(default=SCHEMA, alias="schema")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexManifest:
        return cls.model_validate(data)

    def write(self, directory: Path) -> None:
        (directory / FILE).write_text(self.model_dump_json(indent=2, by_alias=True) + "\n")


class ImageCounts(_Frozen):
    images: int = 0
    # perceptual hashes stored: several per image (the whole and its crops)
    hashes: int = 0
    # files under the source directory that could not be read as images
    problems: int = 0


class ImageSourceInfo(_Frozen):
    path: str
    # over every indexed file's relative path and bytes, in path order
    sha256: str
    files: int = 0


class ImageIndexManifest(_Frozen):
    """What a built image index holds (``gateway index build --images``)."""

    # tells an image index from a text one before either is loaded
    kind: Literal["image"] = "image"
    format: int
    name: str
    created_at: str
    build_seconds: float
    # the hash function, its size, the crop variants and the thumbnail size
    params: dict[str, Any]
    counts: ImageCounts
    source: ImageSourceInfo
    generation: int = 1
    schema_version: int = Field(default=SCHEMA, alias="schema")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageIndexManifest:
        return cls.model_validate(data)

    def write(self, directory: Path) -> None:
        (directory / FILE).write_text(self.model_dump_json(indent=2, by_alias=True) + "\n")
