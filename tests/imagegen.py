"""Synthetic images for the image-copyright tests and bench: two generator families and
the edits a copier makes (resize, recompress, crop, colour shift, small rotation).

Two families that share no drawing code, so a threshold chosen on one can be
reported on the other (``scenes`` for calibration, ``textures`` for the
result): a figure on the images a threshold was tuned with would flatter it.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

WORDS = (
    "harbour lantern copper meadow orbit velvet quarry ember signal tundra cobalt "
    "saffron glacier atlas ferry violet summit canyon pixel marble"
).split()


def _rgb(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def scene(seed: int) -> Image.Image:
    """A gradient background with shapes, lines, a caption and grain."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    w, h = rng.randrange(200, 400), rng.randrange(200, 400)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / max(w, h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = np.array(_rgb(rng), np.float32), np.array(_rgb(rng), np.float32)
    base = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randrange(4, 10)):
        x0, y0 = rng.randrange(-w // 4, w), rng.randrange(-h // 4, h)
        x1, y1 = x0 + rng.randrange(w // 8, w // 2), y0 + rng.randrange(h // 8, h // 2)
        shape = rng.choice(("ellipse", "rect", "poly", "line"))
        if shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=_rgb(rng))
        elif shape == "rect":
            draw.rectangle((x0, y0, x1, y1), fill=_rgb(rng))
        elif shape == "poly":
            pts = [(rng.randrange(w), rng.randrange(h)) for _ in range(rng.randrange(3, 7))]
            draw.polygon(pts, fill=_rgb(rng))
        else:
            draw.line((x0, y0, x1, y1), fill=_rgb(rng), width=rng.randrange(3, 14))
    font = ImageFont.load_default(size=rng.randrange(18, 44))
    caption = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 4)))
    draw.text((rng.randrange(w // 2), rng.randrange(h - 50)), caption, fill=_rgb(rng), font=font)
    arr = np.asarray(img, np.float32) + nrng.normal(0, rng.uniform(2, 10), (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def texture(seed: int) -> Image.Image:
    """Summed sinusoids through a random palette, with rings and stripes on top."""
    rng = np.random.default_rng(10_000_019 + seed)
    w, h = int(rng.integers(200, 420)), int(rng.integers(200, 420))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(w, h)
    field = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(3, 7))):
        fx, fy = rng.uniform(-9, 9, 2)
        field += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 6))
    field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    stops = rng.integers(0, 256, (4, 3)).astype(np.float32)
    pos = field * 3
    i = np.minimum(pos.astype(int), 2)
    frac = (pos - i)[..., None]
    arr = stops[i] * (1 - frac) + stops[i + 1] * frac
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(15, max(w, h) // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse(
            (cx - r, cy - r, cx + r, cy + r), outline=colour, width=int(rng.integers(4, 16))
        )
    if rng.random() < 0.5:
        step = int(rng.integers(12, 40))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0 = int(rng.integers(0, w // 2))
        for x in range(x0, min(w, x0 + w // 2), step):
            draw.rectangle((x, 0, x + step // 3, h), fill=colour)
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))


FAMILIES = {"scenes": scene, "textures": texture}


# -- the edits of a copy -----------------------------------------------------------
def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def crop(img: Image.Image, rng: random.Random, lo: float = 0.05, hi: float = 0.10) -> Image.Image:
    """Cut ``lo..hi`` of the area away, unevenly from the four sides."""
    w, h = img.size
    keep = math.sqrt(1 - rng.uniform(lo, hi))
    cw, ch = int(w * keep), int(h * keep)
    x0, y0 = rng.randrange(w - cw + 1), rng.randrange(h - ch + 1)
    return img.crop((x0, y0, x0 + cw, y0 + ch))


def colour_shift(img: Image.Image, rng: random.Random) -> Image.Image:
    out = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    out = ImageEnhance.Color(out).enhance(rng.uniform(0.6, 1.4))
    gains = np.array([rng.uniform(0.85, 1.15) for _ in range(3)], np.float32)
    arr = np.asarray(out, np.float32) * gains
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def rotate(img: Image.Image, rng: random.Random) -> Image.Image:
    """Turn by up to 3 degrees and cut the corners the turn left empty."""
    deg = rng.uniform(-3, 3)
    w, h = img.size
    out = img.rotate(deg, resample=Image.Resampling.BICUBIC, expand=False)
    m = int(math.ceil(max(w, h) * math.sin(math.radians(abs(deg))))) + 1
    return out.crop((m, m, w - m, h - m))


def resize(img: Image.Image, rng: random.Random) -> Image.Image:
    scale = rng.choice((rng.uniform(0.4, 0.8), rng.uniform(1.2, 2.0)))
    w, h = img.size
    return img.resize((max(16, int(w * scale)), max(16, int(h * scale))), Image.Resampling.LANCZOS)


EDITS = ("resize", "jpeg", "crop", "colour", "rotate", "combined")


def edited(img: Image.Image, edit: str, seed: int) -> Image.Image:
    """One copy of ``img`` with ``edit`` applied (``combined``: several at once)."""
    rng = random.Random(seed)
    if edit == "resize":
        return resize(img, rng)
    if edit == "jpeg":
        return jpeg(img, rng.randrange(30, 71))
    if edit == "crop":
        return crop(img, rng)
    if edit == "colour":
        return colour_shift(img, rng)
    if edit == "rotate":
        return rotate(img, rng)
    if edit == "combined":
        out = crop(img, rng, 0.03, 0.07)
        out = colour_shift(out, rng)
        out = resize(out, rng)
        return jpeg(out, rng.randrange(40, 71))
    raise ValueError(edit)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
