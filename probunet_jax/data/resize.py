"""Bringing images and masks to a fixed size: resizing, or centre crop / zero pad.

* :func:`resize_image`: linear interpolation with half-pixel centres; when shrinking, the
  triangle kernel is widened by the shrink factor (antialiasing), as
  ``jax.image.resize(..., 'linear')``. Separable, so two small matrix products per image.
* :func:`resize_masks`: nearest neighbour (labels stay labels): output pixel ``i`` takes input
  pixel ``floor((i + 0.5) * in / out)``.
* :func:`crop_or_pad`: the centred ``out`` pixels of each spatial axis; axes shorter than
  ``out`` are padded with zeros on both sides (the extra pixel of an odd difference at the end).
"""

import functools

import numpy as np

RESIZE_MODES = ("resize", "crop")


@functools.lru_cache(maxsize=64)
def _linear_weights(size_in: int, size_out: int) -> np.ndarray:
    """float32 [out, in] rows of normalised triangle-kernel weights."""
    scale = size_out / size_in
    kernel_scale = min(scale, 1.0)  # Widen the kernel when shrinking.
    centres = (np.arange(size_out) + 0.5) / scale - 0.5
    distance = np.abs(centres[:, None] - np.arange(size_in)[None, :]) * kernel_scale
    weights = np.maximum(0.0, 1.0 - distance)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [H, W, C] -> float32 [height, width, C] (linear, antialiased when shrinking)."""
    rows = _linear_weights(image.shape[0], height)
    cols = _linear_weights(image.shape[1], width)
    return np.einsum("ih,hwc,jw->ijc", rows, image.astype(np.float32), cols, optimize=True)


def _nearest_index(size_in: int, size_out: int) -> np.ndarray:
    return np.minimum((np.arange(size_out) + 0.5) * size_in / size_out, size_in - 1).astype(int)


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """[A, H, W] labels -> [A, height, width] by nearest neighbour."""
    rows = _nearest_index(masks.shape[1], height)
    cols = _nearest_index(masks.shape[2], width)
    return masks[:, rows[:, None], cols[None, :]]


def crop_or_pad(array: np.ndarray, height: int, width: int, axes: tuple[int, int]) -> np.ndarray:
    """The centred [height, width] window of ``array`` on ``axes``, zero-padded where smaller."""
    for axis, size in zip(axes, (height, width), strict=True):
        extra = array.shape[axis] - size
        if extra > 0:
            array = np.take(array, np.arange(extra // 2, extra // 2 + size), axis=axis)
        elif extra < 0:
            padding = [(0, 0)] * array.ndim
            padding[axis] = (-extra // 2, -extra - (-extra // 2))
            array = np.pad(array, padding)
    return array


def fit(
    image: np.ndarray, masks: np.ndarray, height: int, width: int, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Image float32 [H, W, C] and masks [A, H, W] brought to [height, width] by ``mode``."""
    if image.shape[:2] == (height, width):
        return image, masks
    if mode == "resize":
        return resize_image(image, height, width), resize_masks(masks, height, width)
    if mode == "crop":
        return crop_or_pad(image, height, width, (0, 1)), crop_or_pad(masks, height, width, (1, 2))
    raise ValueError(f"Unknown resize mode {mode!r}; expected one of {RESIZE_MODES}.")
