"""The shared rendering recipe of the built-in image modes: seeding, framing, pose and elastic warp.

Every sample is drawn at a 64 px working resolution from a generator seeded by ``(mode, class key, sample
index)`` alone, then downsampled with LANCZOS to the study's image size; so the same sample is the same
picture at every size, in every process, and whatever other classes are rendered beside it.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from PIL import Image

#: Side of the working canvas every mode draws on before the final downsampling.
WORK_SIZE = 64


def sample_rng(mode: str, key: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of class ``key`` of ``mode`` (a hash, so no seed is ever shared)."""
    digest = hashlib.sha256(f"offline4:{mode}:{key}:{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def fit_to_frame(
    image: Image.Image,
    rng: np.random.Generator,
    fill: tuple[float, float] = (0.6, 0.95),
    size: int = WORK_SIZE,
) -> Image.Image:
    """Crop ``image`` to its content box and scale it, centred, so that its longer side fills a random
    fraction ``fill`` of a ``size`` square; the content box is the alpha channel for RGBA, the ink for L.

    The fill fraction is one of the intra-class variations: a class is not recognisable by its size.
    """
    box = image.getchannel("A").getbbox() if image.mode == "RGBA" else image.getbbox()
    if box is None:
        raise ValueError("nothing to frame: the rendered image is empty")
    content = image.crop(box)
    longer = max(content.size)
    target = float(rng.uniform(*fill)) * size
    scale = target / longer
    w = max(1, round(content.size[0] * scale))
    h = max(1, round(content.size[1] * scale))
    content = content.resize((w, h), Image.Resampling.LANCZOS)
    canvas = Image.new(image.mode, (size, size), 0)
    canvas.paste(content, ((size - w) // 2, (size - h) // 2))
    return canvas


def random_affine(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    rotation: float = 15.0,
    shear: float = 0.15,
    scale: tuple[float, float] = (0.9, 1.1),
    shift: float = 0.06,
) -> Image.Image:
    """A random pose about the centre: rotation (degrees), shear, isotropic scale, shift (fraction of the
    side), all uniform in ``[-x, x]`` (scale in its range); the uncovered corners stay zero (background)."""
    side = image.size[0]
    theta = math.radians(float(rng.uniform(-rotation, rotation)))
    k = float(rng.uniform(-shear, shear))
    s = float(rng.uniform(*scale))
    tx, ty = (float(v) * side for v in rng.uniform(-shift, shift, size=2))
    cos, sin = math.cos(theta), math.sin(theta)
    # Forward map A = s * R(theta) @ Shear(k); Pillow wants the inverse (output pixel -> input pixel).
    a = np.array([[cos, cos * k - sin], [sin, sin * k + cos]]) * s
    inv = np.linalg.inv(a)
    c = (side - 1) / 2.0
    offset = np.array([c, c]) - inv @ np.array([c + tx, c + ty])
    data = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
    return image.transform(image.size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)


def elastic_warp(
    pixels: np.ndarray,
    rng: np.random.Generator,
    amplitude: tuple[float, float] = (2.0, 4.0),
    grid: int = 4,
) -> np.ndarray:
    """Warp ``[H, W]`` float pixels by a smooth random displacement field: a ``grid x grid`` lattice of
    offsets (at most ``amplitude`` px, itself drawn per sample) upsampled bilinearly, then a bilinear remap.

    This is the pen-and-hand variation Omniglot's drawers give for free.
    """
    h, w = pixels.shape
    amp = float(rng.uniform(*amplitude))
    coarse = rng.uniform(-amp, amp, size=(2, grid, grid)).astype(np.float32)
    dy, dx = (np.asarray(Image.fromarray(c, mode="F").resize((w, h), Image.Resampling.BILINEAR)) for c in coarse)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return _bilinear(pixels, yy + dy, xx + dx)


def _bilinear(pixels: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sample ``pixels`` at fractional ``(y, x)``; points outside the image read as zero (background)."""
    h, w = pixels.shape
    padded = np.zeros((h + 2, w + 2), dtype=np.float32)
    padded[1:-1, 1:-1] = pixels
    y = np.clip(y + 1.0, 0.0, h + 0.999)
    x = np.clip(x + 1.0, 0.0, w + 0.999)
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0
    y1, x1 = np.minimum(y0 + 1, h + 1), np.minimum(x0 + 1, w + 1)
    top = padded[y0, x0] * (1 - fx) + padded[y0, x1] * fx
    bottom = padded[y1, x0] * (1 - fx) + padded[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def composite(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """An RGBA image flattened onto a plain ``background`` colour."""
    ground = Image.new("RGB", image.size, background)
    ground.paste(image, mask=image.getchannel("A"))
    return ground


def downsample(image: Image.Image, size: int) -> np.ndarray:
    """``image`` at ``size x size`` (LANCZOS) as a uint8 array ``[size, size]`` or ``[size, size, 3]``."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)
