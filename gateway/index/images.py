"""Image indexes: perceptual hashes of protected images and a Hamming-distance search.

``gateway index build --images DIR`` hashes every image under ``DIR`` with a
64-bit DCT perceptual hash (pHash, from ``imagehash``). A hash survives
resizing, JPEG recompression and brightness or colour changes almost
unchanged, but cropping moves the image under the hash grid; so each image
is stored as several hashes: the whole image, and crops that cut a strip of
each side and the border. A cropped copy then lands near one of them. (The
choice of hash and crops was measured, see ``docs/images.md``.)

On disk an image index is one directory::

    manifest.json   kind "image", hash parameters, counts, source hash, build time
    hashes.npy      uint64: every stored hash (an image's variants are consecutive)
    owners.npy      uint32: the image row of each hash
    variants.npy    uint8: which variant (whole, crop…) each hash is
    images.jsonl    per image: id, path, title, metadata, size, sha256, thumbnail range
    thumbs.bin      small JPEG thumbnails back to back (the reviewer's view of a match)

A search XORs the query hash with every stored hash and counts bits: for
100,000 images (1.1 million hashes) that is a few milliseconds of numpy on
one core, so no tree or multi-index structure is needed at that size.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import mmap
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from gateway.errors import IndexUnavailable
from gateway.index.store import manifest_json
from gateway.records.manifest import FILE as MANIFEST
from gateway.records.manifest import ImageCounts, ImageIndexManifest, ImageSourceInfo

FORMAT = 1
HASH = "phash"
HASH_BITS = 64
# fractions of a side cut away in the stored crop variants: a copy cropped by
# up to about 12% is then within a few bits of one of them
CROPS = (0.06, 0.12)
SIDES = ("left", "right", "top", "bottom", "border")
VARIANTS = ("whole",) + tuple(f"{side}-{round(c * 100)}%" for c in CROPS for side in SIDES)
# images are shrunk to this before hashing: pHash looks at 32x32 pixels, and
# decoding and resizing a full-size image would cost ten times more
WORK_PX = 512
# a larger image is first cut down by a whole factor to between this and twice
# this on its longer side, before any full-size copy (transparency flattened,
# grey) is made: a 40-megapixel RGBA image would otherwise take several copies
# of 160 MB; smaller images take the exact path they always took
REDUCE_PX = 2 * WORK_PX
THUMB_PX = 96
SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"})
FORMATS = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "MPO"})
# the plugins tried on the bytes (a multi-picture JPEG comes from the JPEG one as MPO)
OPENERS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
# the file beside the images that names them: one JSON object per line with
# ``path`` (relative to the directory) and any of ``id``, ``title``, ``owner``,
# ``licence``, ``url``
SOURCES_FILE = "sources.jsonl"
# pixels an image of an answer may have (read from the header, before decoding):
# 16 million is a 4096x4096 image, over any generator's output size, and keeps
# the decoded image of one answer under 64 MB
MAX_PIXELS = 16_000_000
# a build reads the operator's own files, which may be full-size photographs
BUILD_MAX_PIXELS = 40_000_000
# the files an image index build writes; anything else in the output directory
# (notes, a licence file) is carried over to the new build
INDEX_FILES = frozenset(
    {MANIFEST, "hashes.npy", "owners.npy", "variants.npy", "images.jsonl", "thumbs.bin"}
)


class ImageUnreadable(ValueError):
    """Bytes that are not an image this gateway will decode (bad base64, format, size)."""


# -- decoding and hashing ----------------------------------------------------------
def decode_base64(data: str, where: str, max_bytes: int) -> bytes:
    """The bytes of base64 ``data`` (a ``data:`` URI prefix is allowed), strictly checked."""
    if data.startswith("data:"):
        head, sep, data = data.partition(",")
        if not sep or ";base64" not in head:
            raise ImageUnreadable(f"{where}: a data URI that is not base64")
    # base64 in JSON may be wrapped; anything else outside the alphabet is an error
    compact = "".join(data.split())
    if len(compact) * 3 // 4 > max_bytes:
        raise ImageUnreadable(
            f"{where}: the image is about {len(compact) * 3 // 4} bytes, over the limit "
            f"of {max_bytes}"
        )
    try:
        return base64.b64decode(compact, validate=True)
    except ValueError as exc:
        raise ImageUnreadable(f"{where}: not valid base64 ({exc})") from None


def open_image(raw: bytes, where: str, max_pixels: int = MAX_PIXELS) -> Any:
    """A decoded Pillow image, refusing unknown formats and oversized pixel counts."""
    from PIL import Image

    try:
        # only the plugins of the formats read here are tried on the bytes
        img = Image.open(io.BytesIO(raw), formats=OPENERS)
    except Image.DecompressionBombError as exc:
        # Pillow's own ceiling, met before ours when max_pixels is set above it
        raise ImageUnreadable(f"{where}: too many pixels to decode ({exc})") from None
    except Exception as exc:  # a plugin may raise anything on hostile bytes
        raise ImageUnreadable(f"{where}: not a readable image ({exc})") from None
    if img.format not in FORMATS:
        raise ImageUnreadable(f"{where}: image format {img.format} is not one the gateway reads")
    w, h = img.size
    if w < 1 or h < 1 or w * h > max_pixels:
        raise ImageUnreadable(
            f"{where}: {w}x{h} pixels; the limit is {max_pixels} pixels per image"
        )
    try:
        # JPEG decodes straight to a smaller size, which is all hashing needs
        img.draft("RGB", (WORK_PX, WORK_PX))
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageUnreadable(f"{where}: too many pixels to decode ({exc})") from None
    except Exception as exc:
        raise ImageUnreadable(f"{where}: the image data is damaged ({exc})") from None
    return img


def reduce(img: Any) -> Any:
    """``img`` cut down by a whole factor when it is over twice ``REDUCE_PX``, else itself."""
    from PIL import Image

    w, h = img.size
    factor = max(w, h) // REDUCE_PX
    if factor < 2:
        return img
    size = (-(-w // factor), -(-h // factor))
    if img.mode not in ("1", "P"):
        try:
            # box averages of factor x factor pixels: what the later resize does
            # anyway. In strips, because Pillow reduces RGBA through a whole-size
            # premultiplied copy; strips a multiple of the factor high give the
            # same pixels as one call
            out = Image.new(img.mode, size)
            step = factor * 64
            for top in range(0, h, step):
                strip = img.crop((0, top, w, min(h, top + step))).reduce(factor)
                out.paste(strip, (0, top // factor))
            out.info = dict(img.info)
            return out
        except ValueError:  # a mode reduce does not handle
            pass
    # a palette has no averages: every factor-th pixel is a fair sample at this size
    return img.resize(size, Image.Resampling.NEAREST)


def flatten(img: Any) -> Any:
    """RGB on white: a transparent area hashes as the white a viewer shows."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        back = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(back, rgba).convert("RGB")
    return img.convert("RGB")


def shrink(img: Any) -> Any:
    """``img`` reduced (see ``reduce``) and then flattened to RGB: the working copy."""
    return flatten(reduce(img))


def working(img: Any) -> Any:
    """The grey image hashes are taken from, at most ``WORK_PX`` on its longer side."""
    from PIL import Image

    grey = shrink(img).convert("L")
    w, h = grey.size
    if max(w, h) > WORK_PX:
        scale = WORK_PX / max(w, h)
        grey = grey.resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BOX
        )
    return grey


def phash64(grey: Any) -> int:
    import imagehash

    bits = imagehash.phash(grey, hash_size=8).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


def variant_hashes(grey: Any) -> np.ndarray:
    """The hashes an image is stored under, in ``VARIANTS`` order."""
    w, h = grey.size
    out = [phash64(grey)]
    for c in CROPS:
        dx, dy = max(1, int(w * c)), max(1, int(h * c))
        boxes = (
            (dx, 0, w, h),
            (0, 0, w - dx, h),
            (0, dy, w, h),
            (0, 0, w, h - dy),
            (dx // 2, dy // 2, w - dx // 2, h - dy // 2),
        )
        out.extend(phash64(grey.crop(box)) for box in boxes)
    return np.asarray(out, dtype=np.uint64)


def thumbnail(img: Any, px: int = THUMB_PX) -> bytes:
    """A small JPEG of ``img`` (best the ``shrink`` copy) for the review page."""
    small = shrink(img)
    small.thumbnail((px, px))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=75)
    return buf.getvalue()


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def hex64(value: int) -> str:
    return f"{value:016x}"


if hasattr(np, "bitwise_count"):

    def popcount(values: np.ndarray) -> np.ndarray:
        return np.bitwise_count(values)

else:  # numpy < 2: a byte table
    _BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], np.uint8)

    def popcount(values: np.ndarray) -> np.ndarray:
        return _BYTE_BITS[values.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.uint8)


# -- the index ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ImageMatch:
    row: int
    distance: int
    variant: str
    stored_hash: int


def read_image_manifest(path: Path) -> ImageIndexManifest:
    file, data = manifest_json(path)
    try:
        return ImageIndexManifest.from_json(data)
    except ValidationError as exc:
        raise IndexUnavailable(f"{file}: not an image index manifest: {exc}") from None


def is_image_index(path: str | Path) -> bool:
    """Whether the manifest in ``path`` says ``kind: image`` (False when unreadable)."""
    try:
        data = json.loads((Path(path) / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") == "image"


class ImageIndex:
    """Read-only view of one image index directory; swapped whole, never changed."""

    kind = "image"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_image_manifest(self.path)
        if self.manifest.format != FORMAT:
            raise IndexUnavailable(
                f"{self.path}: image index format {self.manifest.format} unknown"
            )
        params = self.manifest.params
        if params.get("hash") != HASH or tuple(params.get("variants", ())) != VARIANTS:
            raise IndexUnavailable(
                f"{self.path}: built with other hash parameters than this gateway uses; rebuild it"
            )
        try:
            self.hashes: np.ndarray = np.load(self.path / "hashes.npy")
            self.owners: np.ndarray = np.load(self.path / "owners.npy")
            self.variants: np.ndarray = np.load(self.path / "variants.npy")
            with open(self.path / "images.jsonl", encoding="utf-8") as fh:
                self.images: list[dict[str, Any]] = [json.loads(line) for line in fh]
        except FileNotFoundError as exc:
            raise IndexUnavailable(f"{self.path}: incomplete image index ({exc})") from None
        if not (len(self.hashes) == len(self.owners) == len(self.variants)):
            raise IndexUnavailable(f"{self.path}: hash, owner and variant files disagree")
        with open(self.path / "thumbs.bin", "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self.thumbs: Any = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    @property
    def name(self) -> str:
        return self.path.name

    def __len__(self) -> int:
        return len(self.images)

    def search(self, value: int, max_distance: int, limit: int = 3) -> list[ImageMatch]:
        """The closest stored images within ``max_distance`` bits, best first, one per image."""
        if not len(self.hashes):
            return []
        dist = popcount(self.hashes ^ np.uint64(value))
        near = np.flatnonzero(dist <= max_distance)
        if not len(near):
            return []
        near = near[np.argsort(dist[near], kind="stable")]
        out: list[ImageMatch] = []
        seen: set[int] = set()
        for i in near.tolist():
            row = int(self.owners[i])
            if row in seen:
                continue
            seen.add(row)
            out.append(
                ImageMatch(row, int(dist[i]), VARIANTS[int(self.variants[i])], int(self.hashes[i]))
            )
            if len(out) == limit:
                break
        return out

    def evidence(self, row: int) -> dict[str, Any]:
        d = self.images[row]
        source = dict(d.get("meta") or {})
        source.setdefault("title", d.get("title"))
        source.setdefault("path", d.get("path"))
        return {"source_id": d["id"], "source": source}

    def thumbnail(self, row: int) -> bytes:
        start, end = self.images[row].get("thumb") or (0, 0)
        return bytes(self.thumbs[start:end])

    def counts(self) -> dict[str, int]:
        return {"images": len(self.images), "hashes": int(len(self.hashes))}

    def memory(self) -> dict[str, int]:
        return {
            "hashes_bytes": int(self.hashes.nbytes + self.owners.nbytes + self.variants.nbytes),
            "thumbs_bytes_mapped": len(self.thumbs),
        }

    def close(self) -> None:
        if isinstance(self.thumbs, mmap.mmap):
            try:
                self.thumbs.close()
            except BufferError:
                pass


# -- building -----------------------------------------------------------------------
@dataclass
class ImageBuildReport:
    path: str
    operation: str = "build"
    images: int = 0
    hashes: int = 0
    # image files left out (unreadable, damaged, too large, a duplicate id)
    skipped: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "operation": self.operation,
            "images": self.images,
            "hashes": self.hashes,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "images_per_second": round(self.images / self.seconds, 1) if self.seconds else None,
            "problems": list(self.problems),
        }


def _read_sources(root: Path, problems: list[str]) -> dict[str, dict[str, Any]]:
    file = root / SOURCES_FILE
    if not file.is_file():
        return {}
    out: dict[str, dict[str, Any]] = {}
    with open(file, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                meta = json.loads(line)
                if not isinstance(meta, dict) or not isinstance(meta.get("path"), str):
                    raise ValueError('expected an object with a "path" string')
            except ValueError as exc:
                problems.append(f"{file}:{lineno}: {exc}")
                continue
            out[Path(meta["path"]).as_posix()] = meta
    return out


def build_image_index(
    source: str | Path, out: str | Path, *, progress: bool = False
) -> ImageBuildReport:
    """Hash every image under ``source`` into a new index at ``out``.

    The index's own files are replaced together; other files in ``out`` are
    kept. A source inside ``out``, or an ``out`` that holds another kind of
    index, is refused before anything is read or written.
    """
    started = time.perf_counter()
    root, dest = Path(source), Path(out)
    report = ImageBuildReport(path=str(dest))
    if not root.is_dir():
        report.problems.append(f"{root}: not a directory of images")
        return report
    refusal = _refuse_output(root, dest)
    if refusal:
        report.problems.append(refusal)
        return report
    sources = _read_sources(root, report.problems)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    digest = hashlib.sha256()
    rows: list[dict[str, Any]] = []
    hash_parts: list[np.ndarray] = []
    thumbs = bytearray()
    seen_ids: set[str] = set()
    from tqdm import tqdm

    for file in tqdm(files, unit="image", disable=not progress, file=sys.stderr):
        rel = file.relative_to(root).as_posix()
        meta = dict(sources.get(rel, {}))
        meta.pop("path", None)
        image_id = str(meta.pop("id", None) or rel.rsplit(".", 1)[0])
        if image_id in seen_ids:
            report.problems.append(f"{rel}: id {image_id!r} is used by another image; skipped")
            report.skipped += 1
            continue
        try:
            raw = file.read_bytes()
            img = open_image(raw, rel, BUILD_MAX_PIXELS)
            small = shrink(img)
            hashes = variant_hashes(working(small))
            thumb = thumbnail(small)
        except ImageUnreadable as exc:
            report.problems.append(f"{exc}; skipped")
            report.skipped += 1
            continue
        except Exception as exc:
            # one file must not end the build of all the others, whatever it raises
            report.problems.append(f"{rel}: skipped ({type(exc).__name__}: {exc})")
            report.skipped += 1
            continue
        seen_ids.add(image_id)
        digest.update(rel.encode("utf-8") + b"\0" + hashlib.sha256(raw).digest())
        title = str(meta.pop("title", None) or file.stem)
        rows.append(
            {
                "id": image_id,
                "path": rel,
                "title": title,
                "meta": meta,
                "width": img.size[0],
                "height": img.size[1],
                "sha256": hashlib.sha256(raw).hexdigest(),
                "thumb": [len(thumbs), len(thumbs) + len(thumb)],
            }
        )
        thumbs += thumb
        hash_parts.append(hashes)
    n_var = len(VARIANTS)
    hashes_all = np.concatenate(hash_parts) if hash_parts else np.zeros(0, np.uint64)
    owners = np.repeat(np.arange(len(rows), dtype=np.uint32), n_var)
    variants = np.tile(np.arange(n_var, dtype=np.uint8), len(rows))
    tmp = dest.parent / f".{dest.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    np.save(tmp / "hashes.npy", hashes_all)
    np.save(tmp / "owners.npy", owners)
    np.save(tmp / "variants.npy", variants)
    with open(tmp / "images.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    (tmp / "thumbs.bin").write_bytes(bytes(thumbs))
    report.images, report.hashes = len(rows), int(len(hashes_all))
    report.seconds = round(time.perf_counter() - started, 3)
    previous = 0
    if dest.exists() and is_image_index(dest):
        try:
            previous = read_image_manifest(dest).generation
        except IndexUnavailable:
            previous = 0
    ImageIndexManifest(
        format=FORMAT,
        name=dest.name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=report.seconds,
        params={
            "hash": HASH,
            "hash_bits": HASH_BITS,
            "work_px": WORK_PX,
            "crops": list(CROPS),
            "variants": list(VARIANTS),
            "thumb_px": THUMB_PX,
        },
        counts=ImageCounts(
            images=len(rows), hashes=int(len(hashes_all)), problems=len(report.problems)
        ),
        source=ImageSourceInfo(path=str(root), sha256=digest.hexdigest(), files=len(files)),
        generation=previous + 1,
    ).write(tmp)  # last: a directory with a manifest is complete
    _swap(tmp, dest)
    return report


def _refuse_output(root: Path, dest: Path) -> str | None:
    """Why ``dest`` may not receive an image index built from ``root`` (None when it may)."""
    src, out = root.resolve(), dest.resolve()
    if src == out or out in src.parents:
        return (
            f"{root}: the images are inside the output directory {dest}, which the build "
            "replaces; move them out of it (for example to images/NAME) and build with "
            f"--images images/NAME --out {dest}"
        )
    if dest.exists() and not dest.is_dir():
        return f"{dest}: exists and is not a directory"
    if (dest / MANIFEST).exists() and not is_image_index(dest):
        return (
            f"{dest}: holds a text copyright index (or an unreadable manifest), which an "
            "image build would replace; choose another --out"
        )
    return None


def _swap(tmp: Path, dest: Path) -> None:
    """Put the finished build ``tmp`` in place of ``dest``, keeping dest's other files."""
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    if dest.exists():
        for item in dest.iterdir():
            if item.name in INDEX_FILES or (tmp / item.name).exists():
                continue
            # hard links: nothing is copied, and removing the old directory leaves them
            if item.is_dir() and not item.is_symlink():
                shutil.copytree(item, tmp / item.name, symlinks=True, copy_function=_link)
            else:
                _link(item, tmp / item.name)
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _link(src: Any, dst: Any) -> None:
    if Path(src).is_symlink():
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)
