"""Policy kind ``image_copyright``: images in an answer that copy an indexed protected image.

Each image of an answer (an image segment, see ``gateway.contract.detector``)
is decoded, hashed with the same 64-bit perceptual hash the index was built
with (``gateway.index.images``), and compared with every stored hash by
Hamming distance. A distance of at most ``max_distance`` bits is a copy; the
finding names the matched source and, for the review page, carries small
thumbnails of both images.

The gateway never fetches an image the answer gives only as a link: a fetch
from inside the gateway could be pointed at internal addresses (SSRF) and
would add a download to every answer. Such an image is an ``error`` (the
policy's ``on_error`` decides) unless ``url_images: allow``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from gateway.contract.detector import Finding, ImagePart, ScanContext, WholeTextScan
from gateway.contract.kind import BuildContext, PolicyKind
from gateway.contract.policy import Action, PolicyBase
from gateway.index.images import (
    HASH_BITS,
    MAX_PIXELS,
    ImageIndex,
    ImageUnreadable,
    data_uri,
    decode_base64,
    hex64,
    open_image,
    phash64,
    shrink,
    thumbnail,
    working,
)

# calibrated on the ``scenes`` family of generated images and reported on the
# ``textures`` family (tests/test_image_copyright.py, docs/images.md): the
# largest distance whose false-positive rate on unrelated scenes stays <= 0.5%
DEFAULT_MAX_DISTANCE = 10


class ImageCopyrightPolicy(PolicyBase):
    kind: Literal["image_copyright"]
    # a name in the gateway's ``indexes:`` configuration, or a directory
    # relative to the policy file (``./data/sample-images``)
    index: str = "images"
    # Hamming distance in bits (of 64) at or under which an image is a copy
    max_distance: int = Field(default=DEFAULT_MAX_DISTANCE, ge=0, le=24)
    # decoded size and pixel count past which an image is refused (an error),
    # never decoded: a bound on the memory and time one answer can cost
    max_image_bytes: int = Field(default=20 * 1024 * 1024, gt=0, le=200 * 1024 * 1024)
    max_pixels: int = Field(default=MAX_PIXELS, gt=0, le=400_000_000)
    # an image given only as a URL: ``error`` (on_error decides) or let it pass unchecked
    url_images: Literal["error", "allow"] = "error"
    # source ids whose copies are allowed (licensed images)
    allow_sources: list[str] = Field(default_factory=list)
    # small JPEG thumbnails of both images in the evidence, for the review page
    thumbnails: bool = True
    timeout_ms: int = Field(default=5000, gt=0, le=60000)

    @field_validator("action")
    @classmethod
    def _not_redact(cls, value: Action) -> Action:
        if value is Action.REDACT:
            # a redaction masks characters; an image would go out untouched
            raise ValueError("redact cannot mask part of an image; use block, review or fallback")
        return value


class ImageCopyrightDetector:
    """Built once per policy; each image segment looks the current index up."""

    modality = "image"
    # an image segment has no text to hold back
    hold_back = 0
    # decoding and hashing an image takes milliseconds of CPU: off the event loop
    blocking = True

    def __init__(self, config: ImageCopyrightPolicy, get_index: Callable[[], Any]):
        self.config = config
        self._get_index = get_index

    def start(self, ctx: ScanContext) -> WholeTextScan:
        image = ctx.image
        return WholeTextScan(lambda _text: self.check(image) if image is not None else [])

    def check(self, part: ImagePart) -> list[Finding]:
        cfg = self.config
        if part.data is None:
            if cfg.url_images == "allow":
                return []
            raise ImageUnreadable(
                f"{part.where}: the answer gives the image only as a link ({part.url}); the "
                "gateway does not fetch links, so ask the upstream for base64 "
                '(response_format: "b64_json") or set url_images: allow'
            )
        raw = decode_base64(part.data, part.where, cfg.max_image_bytes)
        img = open_image(raw, part.where, cfg.max_pixels)
        # one reduced working copy serves the hash and the thumbnail: never a
        # full-size copy past the decoded image itself
        small = shrink(img)
        del img
        value = phash64(working(small))
        index = self._get_index()
        if not isinstance(index, ImageIndex):
            raise TypeError(f"index {cfg.index!r} is not an image index")
        matches = [
            m
            for m in index.search(value, cfg.max_distance, limit=len(cfg.allow_sources) + 3)
            if index.images[m.row]["id"] not in cfg.allow_sources
        ]
        if not matches:
            return []
        best = matches[0]
        ev = index.evidence(best.row)
        ev.update(
            match_type="image",
            image=part.where,
            distance=best.distance,
            max_distance=cfg.max_distance,
            hash=hex64(value),
            source_hash=hex64(best.stored_hash),
            variant=best.variant,
            also=[index.images[m.row]["id"] for m in matches[1:]],
            index=index.name,
            index_generation=index.manifest.generation,
        )
        if cfg.thumbnails:
            ev["thumbnail"] = data_uri(thumbnail(small))
            ev["source_thumbnail"] = data_uri(index.thumbnail(best.row))
        return [
            Finding(
                0,
                0,
                round(1 - best.distance / HASH_BITS, 4),
                f"image copy of {ev['source_id']} ({best.distance} of {HASH_BITS} bits differ)",
                ev,
            )
        ]


def build(config: ImageCopyrightPolicy, ctx: BuildContext) -> ImageCopyrightDetector:
    from gateway.errors import ConfigError
    from gateway.index.images import is_image_index
    from gateway.index.manager import IndexManager
    from gateway.records.manifest import FILE as MANIFEST

    name = config.index
    if name.startswith(("./", "../")):
        # an index shipped beside the policy file: opened once, shared by reloads
        path = (ctx.base_dir / name).resolve()
        if not is_image_index(path):
            raise ConfigError(f"policy {config.id}: {path} holds no image index")
        index = ctx.resources.shared(f"image-index:{path}", lambda: ImageIndex(path))
        return ImageCopyrightDetector(config, lambda: index)
    manager = ctx.resources.indexes
    if manager is None:
        manager = ctx.resources.indexes = IndexManager.from_root(ctx.base_dir.parent / "indexes")
    if not manager.has(name):
        hint = ""
        inside = ctx.base_dir.parent / "indexes" / name / "images"
        if isinstance(manager, IndexManager) and inside.is_dir():
            # a build replaces its output directory, so the images must live elsewhere
            source = ctx.base_dir.parent / "images" / name
            hint = (
                f"; it is not built yet: move the images in {inside} out of the index "
                f"directory, for example to {source}, and run gateway index build "
                f"--images {source} --out {inside.parent}"
            )
        raise ConfigError(
            f"policy {config.id}: unknown index {name!r} "
            f"(configured: {', '.join(manager.names()) or 'none'}){hint}"
        )
    if (
        isinstance(manager, IndexManager)
        and (Path(manager.path(name)) / MANIFEST).is_file()
        and (not is_image_index(Path(manager.path(name))))
    ):
        raise ConfigError(
            f"policy {config.id}: index {name!r} is a text index; image_copyright needs one "
            "built with gateway index build --images"
        )
    return ImageCopyrightDetector(config, lambda: manager.get(name))


KIND = PolicyKind(
    "image_copyright",
    ImageCopyrightPolicy,
    build,
    "Images that copy an indexed protected image (perceptual hash, Hamming distance).",
)
