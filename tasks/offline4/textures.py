"""The ``textures`` mode of offline4: procedural full-frame textures (the CIFAR-like mode), numpy only.

A class is a generator kind with fixed parameters and two palettes from a shared pool (key ``tex-0042``):

- ``grating``: one or two oriented gratings (sine, square or triangle wave, at most 6 cycles per frame so
  that they survive 32 px);
- ``noise``: band-pass spectral noise, isotropic or anisotropic (an oriented lobe);
- ``voronoi``: cells around random points under the L1, L2 or L-inf metric, shaded by the distance to the
  nearest point (F1), by the edge distance (F2 - F1), or flat per cell;
- ``spots``: a jittered lattice of discs, squares or rings.

Samples vary what a new photograph of the same material would: the random phase, points and noise, a
small rotation, which of the class's two palettes is used and its direction. Every palette is shared by
many classes, so colour stays a weak cue and the structure has to be learned.

Index table: ``palettes``, a list of palettes of three RGB colours. Class entry: the parameters above
(``kind`` and its own fields) and ``palettes``, two indices into the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from mmlo.tasks.offline4.raster import WORK_SIZE, downsample, sample_rng
from mmlo.tasks.offline4.sources import Source

MODE = "textures"
CHANNELS = 3
KINDS: tuple[str, ...] = ("grating", "noise", "voronoi", "spots")
#: Per-sample rotation of the whole pattern, in degrees either way.
ROTATION = 10.0


def sources(table: Mapping[str, Any], classes: Sequence[tuple[str, Any]]) -> list[Source]:
    """None: textures are pure numpy."""
    return []


def _frame(theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in frame units (``[-0.5, 0.5)``), rotated by ``theta`` radians."""
    c = (np.arange(WORK_SIZE, dtype=np.float64) + 0.5) / WORK_SIZE - 0.5
    y, x = np.meshgrid(c, c, indexing="ij")
    cos, sin = np.cos(theta), np.sin(theta)
    return cos * x + sin * y, -sin * x + cos * y


def _wave(phase: np.ndarray, waveform: str) -> np.ndarray:
    """A periodic wave in [-1, 1] of the given phase (radians)."""
    if waveform == "sine":
        return np.sin(phase)
    if waveform == "square":
        return np.tanh(4.0 * np.sin(phase))
    return 2.0 / np.pi * np.arcsin(np.sin(phase))


def grating(p: Mapping[str, Any], rng: np.random.Generator, theta: float) -> np.ndarray:
    x, y = _frame(theta)
    total = np.zeros_like(x)
    for freq, orientation in p["components"]:
        f = freq * rng.uniform(0.95, 1.05)
        along = x * np.cos(orientation) + y * np.sin(orientation)
        total += _wave(2 * np.pi * f * along + rng.uniform(0, 2 * np.pi), p["waveform"])
    return 0.5 + 0.5 * total / len(p["components"])


def noise(p: Mapping[str, Any], rng: np.random.Generator, theta: float) -> np.ndarray:
    f = np.fft.fftfreq(WORK_SIZE) * WORK_SIZE
    fy, fx = np.meshgrid(f, f, indexing="ij")
    radius = np.hypot(fx, fy)
    radius[0, 0] = 1e-6
    angle = np.arctan2(fy, fx)
    radial = np.exp(-(np.log2(radius / p["center"]) ** 2) / (2 * p["bandwidth"] ** 2))
    angular = np.exp((p["anisotropy"] - 1.0) * (np.cos(2 * (angle - p["orientation"] - theta)) - 1.0))
    weight = radial * angular
    weight[0, 0] = 0.0
    white = rng.standard_normal((WORK_SIZE, WORK_SIZE))
    field = np.real(np.fft.ifft2(np.fft.fft2(white) * weight))
    z = (field - field.mean()) / (field.std() + 1e-12)
    return np.clip(0.5 + 0.22 * z, 0.0, 1.0)


def voronoi(p: Mapping[str, Any], rng: np.random.Generator, theta: float) -> np.ndarray:
    x, y = _frame(theta)
    n = int(p["points"])
    # Points scattered over a margin beyond the frame, so that cells at the border are not all cut open.
    pts = rng.uniform(-0.7, 0.7, size=(n * 2, 2))
    dx = x.reshape(-1, 1) - pts[:, 0]
    dy = y.reshape(-1, 1) - pts[:, 1]
    if p["metric"] == "l1":
        d = np.abs(dx) + np.abs(dy)
    elif p["metric"] == "l2":
        d = np.hypot(dx, dy)
    else:
        d = np.maximum(np.abs(dx), np.abs(dy))
    spacing = 1.0 / np.sqrt(n)
    if p["feature"] == "cell":
        shade = rng.uniform(0.0, 1.0, size=len(pts))
        value = shade[np.argmin(d, axis=1)]
    else:
        two = np.partition(d, 1, axis=1)[:, :2]
        raw = two[:, 0] if p["feature"] == "f1" else two[:, 1] - two[:, 0]
        value = np.clip(raw / spacing, 0.0, 1.0)
    return value.reshape(WORK_SIZE, WORK_SIZE)


def spots(p: Mapping[str, Any], rng: np.random.Generator, theta: float) -> np.ndarray:
    x, y = _frame(theta + p["orientation"])
    g = float(p["grid"])
    u, v = x * g + rng.uniform(0, 1), y * g + rng.uniform(0, 1)
    cell_u, cell_v = np.floor(u), np.floor(v)
    # One jitter per lattice cell, so each spot moves as one piece; the table is wider than the rotated
    # frame's span of cells, so no two visible cells share a jitter.
    span = 2 * int(g) + 4
    jitter = rng.uniform(-p["jitter"], p["jitter"], size=(2, span, span))
    iu = (cell_u.astype(np.int64) % span, cell_v.astype(np.int64) % span)
    fu = u - cell_u - 0.5 - jitter[0][iu]
    fv = v - cell_v - 0.5 - jitter[1][iu]
    r = np.maximum(np.abs(fu), np.abs(fv)) if p["shape"] == "square" else np.hypot(fu, fv)
    edge = p["radius"] - r
    if p["shape"] == "ring":
        edge = p["radius"] * 0.35 - np.abs(r - p["radius"] * 0.7)
    return 1.0 / (1.0 + np.exp(-edge / (p["softness"] + 1e-3)))


_GENERATORS = {"grating": grating, "noise": noise, "voronoi": voronoi, "spots": spots}


def colourise(value: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Map a ``[H, W]`` field in [0, 1] through a three-colour palette (piecewise linear), uint8 RGB."""
    v = np.clip(value, 0.0, 1.0)[..., None] * 2.0
    low, high = palette[0], palette[1]
    out = np.where(v <= 1.0, low + (high - low) * v, palette[1] + (palette[2] - palette[1]) * (v - 1.0))
    return np.clip(out, 0, 255).round().astype(np.uint8)


def render_sample(table: Mapping[str, Any], key: str, entry: Mapping[str, Any], index: int) -> Image.Image:
    """Sample ``index`` of texture class ``key`` at the 64 px working size (RGB)."""
    rng = sample_rng(MODE, key, index)
    theta = np.radians(rng.uniform(-ROTATION, ROTATION))
    value = _GENERATORS[entry["kind"]](entry, rng, theta)
    palette = np.asarray(table["palettes"][entry["palettes"][int(rng.integers(2))]], dtype=np.float64)
    if rng.random() < 0.5:
        palette = palette[::-1]
    return Image.fromarray(colourise(value, palette), mode="RGB")


def render_class(table: Mapping[str, Any], key: str, entry: Any, samples: int, size: int) -> np.ndarray:
    """``samples`` images of texture class ``key`` as uint8 ``[samples, size, size, 3]``."""
    return np.stack([downsample(render_sample(table, key, entry, i), size) for i in range(samples)])
