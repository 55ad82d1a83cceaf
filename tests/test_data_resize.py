"""Tests of resizing, centre crop / pad, and the per-batch rater rule."""

import jax
import numpy as np
import pytest

from probunet_jax.data import pipeline, resize


@pytest.mark.parametrize(
    "shape, size", [((20, 24), (16, 16)), ((7, 9), (16, 12)), ((5, 5), (5, 9))]
)
def test_linear_resize_matches_jax(shape, size):
    image = np.random.default_rng(0).random((*shape, 2)).astype(np.float32)
    want = jax.image.resize(image, (*size, 2), "linear", antialias=True)
    np.testing.assert_allclose(resize.resize_image(image, *size), want, atol=1e-5)


def test_nearest_resize_keeps_labels_and_blocks():
    masks = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
    up = resize.resize_masks(masks, 6, 8)
    np.testing.assert_array_equal(up[0], np.repeat(np.repeat(masks[0], 2, 0), 2, 1))
    np.testing.assert_array_equal(resize.resize_masks(up, 3, 4), masks)


def test_crop_or_pad_is_centred():
    array = np.arange(30).reshape(5, 6)
    np.testing.assert_array_equal(resize.crop_or_pad(array, 3, 2, (0, 1)), array[1:4, 2:4])
    padded = resize.crop_or_pad(array, 8, 6, (0, 1))
    np.testing.assert_array_equal(padded[1:6], array)
    assert not padded[[0, 6, 7]].any()


def test_valid_rater_takes_floor_u_times_count_among_valid():
    valid = np.array([[True, False, True, True], [False, True, False, False]])
    for u, want in ((0.0, [0, 1]), (0.34, [2, 1]), (0.99, [3, 1]), (0.66, [2, 1])):
        np.testing.assert_array_equal(pipeline.valid_rater(valid, np.full(2, u)), want)
