"""Options and inputs that would make a number silently wrong are refused (or, for deep images, read
the way every viewer shows them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simplematch.errors import SimpleMatchError


@pytest.mark.parametrize("size", [0, -64, 32])
def test_fusion_stats_refuse_a_size_below_the_largest_map(size: int) -> None:
    from simplematch.data.stats import keypoint_fusion_stats

    with pytest.raises(SimpleMatchError, match=f"--img-size {size} is invalid: must be an integer >= 64"):
        keypoint_fusion_stats([], img_size=size)


def test_bench_refuses_more_threads_than_cores() -> None:
    import os

    from simplematch.bench.plan import _check_counts

    cores = len(os.sched_getaffinity(0))
    _check_counts(0, 1, 1, cores, 30)  # every core: fine
    with pytest.raises(SimpleMatchError, match=f"--threads {cores + 1} is more than the {cores} CPU cores"):
        _check_counts(0, 1, 1, cores + 1, 30)


def test_16_bit_images_are_scaled_by_bit_depth_not_stretched(tmp_path: Path) -> None:
    from simplematch.image import load_image, to_rgb_uint8

    # A dark 16-bit photo (values up to 4096 of 65535): a viewer shows it dark, so must the model.
    values = np.array([[0, 257, 1024], [2048, 3000, 4096]], dtype=np.uint16)
    expected = np.round(values / 65535 * 255).astype(np.uint8)  # 0, 1, 4, 8, 12, 16
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I;16"), check.mode  # really read back as a 16-bit image
    np.testing.assert_array_equal(load_image(path)[:, :, 0], expected)
    # Mode I (32-bit integers, how older Pillow reads 16-bit PNGs) holds 16-bit data the same way.
    as_i = Image.fromarray(values.astype(np.int32), mode="I")
    np.testing.assert_array_equal(to_rgb_uint8(as_i)[:, :, 0], expected)


def test_float_images_map_zero_one_to_the_full_range() -> None:
    from simplematch.image import to_rgb_uint8

    img = Image.fromarray(np.array([[0.0, 0.5], [1.0, 2.0]], dtype=np.float32), mode="F")
    np.testing.assert_array_equal(to_rgb_uint8(img)[:, :, 0], [[0, 128], [255, 255]])
