"""The shared rendering recipe: seeding, framing, pose and elastic warp."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmlo.tasks.offline4.raster import downsample, elastic_warp, fit_to_frame, random_affine, sample_rng


def square(size: int = 64, lo: int = 24, hi: int = 40) -> Image.Image:
    pixels = np.zeros((size, size), dtype=np.uint8)
    pixels[lo:hi, lo:hi] = 255
    return Image.fromarray(pixels, mode="L")


def test_sample_rng_depends_on_mode_key_and_index() -> None:
    # The same (mode, key, index) gives the same stream; changing any one of them gives another.
    first = sample_rng("glyphs", "Latn-0041", 3).random(4)
    np.testing.assert_array_equal(first, sample_rng("glyphs", "Latn-0041", 3).random(4))
    for other in (("emoji", "Latn-0041", 3), ("glyphs", "Latn-0042", 3), ("glyphs", "Latn-0041", 4)):
        assert not np.array_equal(first, sample_rng(*other).random(4))


def test_fit_to_frame_scales_the_content_box() -> None:
    # A 16 px square filling exactly half of a 64 px frame becomes a centred 32 px square.
    framed = np.asarray(fit_to_frame(square(), np.random.default_rng(0), fill=(0.5, 0.5)))
    rows, cols = np.nonzero(framed > 127)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16, 47, 16, 47)


def test_identity_pose_and_zero_warp_change_nothing() -> None:
    # With every range collapsed to the identity, the affine and the elastic warp leave pixels unchanged.
    image = square()
    rng = np.random.default_rng(1)
    posed = random_affine(image, rng, rotation=0.0, shear=0.0, scale=(1.0, 1.0), shift=0.0)
    np.testing.assert_array_equal(np.asarray(posed), np.asarray(image))
    pixels = np.asarray(image, dtype=np.float32)
    np.testing.assert_allclose(elastic_warp(pixels, rng, amplitude=(0.0, 0.0)), pixels, atol=1e-4)


def test_downsample_keeps_channels() -> None:
    # Downsampling gives uint8 [size, size] for grey and [size, size, 3] for RGB.
    assert downsample(square(), 16).shape == (16, 16)
    assert downsample(square().convert("RGB"), 16).shape == (16, 16, 3)
