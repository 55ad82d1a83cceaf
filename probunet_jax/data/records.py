"""Raw image and rater masks -> a checked stored example, the same for every data source.

Stored example: ``'image'`` float32 [H, W, C] in [0, 1], ``'masks'`` uint8 [A, H, W] labels
``0..K-1`` (raters in source order, slots past the image's own raters zero), ``'rater_valid'``
bool [A] (True for the image's own raters).

Image normalisation to [0, 1] (``normalization``), after a check for NaN / infinite pixels:

* ``'dtype'`` (default): integer images are divided by their type's maximum (uint8 by 255,
  uint16 by 65535, bool as 0 / 1); float images must already lie in [0, 1] (values at most
  ``RANGE_TOLERANCE`` outside are clipped), else it is an error.
* ``'dataset'``: ``(x - low) / (high - low)`` with the minimum and maximum over all images of the
  data set (all splits, all channels), computed by a first pass over the images.
* ``'image'``: the same with each image's own minimum and maximum.

A constant image (``high == low``) becomes all zeros. Masks: integers (or integral floats) in
``0..K-1``; with ``K = 2`` a mask of 0 and 255 (8-bit image convention) is read as 0 and 1.
"""

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np

from probunet_jax.data import resize

NORMALIZATIONS = ("dtype", "dataset", "image")
RANGE_TOLERANCE = 1e-3  # Float images may exceed [0, 1] by this much (rounding); clipped.


class Layout(NamedTuple):
    """What every stored example of one data set looks like, and how to get there."""

    height: int
    width: int
    channels: int  # C
    num_raters: int  # A, the maximum over the data set
    num_classes: int  # K (2: binary)
    resize_mode: str = "resize"  # see probunet_jax.data.resize
    normalization: str = "dtype"
    value_range: tuple[float, float] = (0.0, 1.0)  # (low, high) for 'dataset' normalisation


def check_finite(image: np.ndarray, name: str) -> None:
    """Raises ValueError naming ``name`` if ``image`` has NaN or infinite pixels."""
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise ValueError(f"{name}: the image has NaN or infinite values.")


def _scale(image: np.ndarray, low: float, high: float) -> np.ndarray:
    image = image.astype(np.float32)
    if high <= low:
        return np.zeros_like(image)
    return np.clip((image - np.float32(low)) / np.float32(high - low), 0, 1)


def normalize(image: np.ndarray, name: str, layout: Layout) -> np.ndarray:
    """An image [H, W, C] of any numeric dtype -> float32 in [0, 1] (see the module doc)."""
    check_finite(image, name)
    if layout.normalization == "dataset":
        return _scale(image, *layout.value_range)
    if layout.normalization == "image":
        return _scale(image, float(image.min()), float(image.max()))
    if image.dtype.kind in "biu":
        return _scale(image, 0.0, 1.0 if image.dtype.kind == "b" else np.iinfo(image.dtype).max)
    low, high = float(image.min()), float(image.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(
            f"{name}: float image values in [{low}, {high}], expected [0, 1] (use "
            "normalization 'dataset' or 'image' to rescale)."
        )
    return np.clip(image, 0, 1).astype(np.float32)


def labels(mask: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    """A mask [H, W] -> uint8 labels in ``0..K-1``; ValueError naming ``name`` otherwise."""
    if mask.ndim != 2:
        raise ValueError(f"{name}: a mask of shape {mask.shape}; expected a 2-D label map.")
    values = np.unique(mask)
    if num_classes == 2 and set(values.tolist()) <= {0, 255} and mask.dtype == np.uint8:
        return (mask != 0).astype(np.uint8)
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise ValueError(f"{name}: mask values {values[:8]} are not integer labels.")
    if values.min() < 0 or values.max() >= num_classes:
        expected = "0 or 1 (binary masks)" if num_classes == 2 else f"0..{num_classes - 1}"
        raise ValueError(
            f"{name}: mask values {values[:8]}, expected {expected}; a label >= num_classes "
            f"({num_classes}) or negative."
        )
    return mask.astype(np.uint8)


def _channels_last(image: np.ndarray, name: str) -> np.ndarray:
    if image.ndim == 2:
        return image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"{name}: an image of shape {image.shape}; expected [H, W] or [H, W, C].")
    return image


def make_example(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    layout: Layout,
    *,
    image_name: str,
    mask_names: Sequence[str],
) -> dict[str, np.ndarray]:
    """Checks one image and its raters' masks and converts them to the stored layout.

    Args:
      image: [H, W] or [H, W, C], any numeric dtype.
      masks: 1 to ``layout.num_raters`` label maps [H, W], one per rater.
      layout: the data set's stored layout.
      image_name, mask_names: the file (or entry) names, for error messages.

    Returns:
      ``{'image': float32 [h, w, C], 'masks': uint8 [A, h, w], 'rater_valid': bool [A]}``.
    """
    image = _channels_last(np.asarray(image), image_name)
    if image.shape[2] != layout.channels:
        raise ValueError(
            f"{image_name}: {image.shape[2]} channel(s), but the data set has {layout.channels}."
        )
    if not 1 <= len(masks) <= layout.num_raters:
        raise ValueError(f"{image_name}: {len(masks)} masks; expected 1 to {layout.num_raters}.")
    stack = []
    for mask, name in zip(masks, mask_names, strict=True):
        mask = labels(np.asarray(mask), name, layout.num_classes)
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"{name}: mask of size {mask.shape}, but the image {image_name} is "
                f"{image.shape[:2]}."
            )
        stack.append(mask)
    image, stack = resize.fit(
        normalize(image, image_name, layout), np.stack(stack), *layout[:2], layout.resize_mode
    )
    padded = np.zeros((layout.num_raters, *stack.shape[1:]), np.uint8)
    padded[: len(stack)] = stack
    return {
        "image": image.astype(np.float32),
        "masks": padded,
        "rater_valid": np.arange(layout.num_raters) < len(stack),
    }


class Source(NamedTuple):
    """A checked data set ready to be written: its layout, and per split the keys of its
    examples; ``read(key)`` returns the stored example of a key (with its ``'id'``)."""

    layout: Layout
    splits: dict[str, list]  # split -> keys, in order
    read: Callable[[object], dict[str, np.ndarray | str]]
    description: dict  # Where it came from, for the manifest (JSON-serialisable).


def data_range(images: Iterable[tuple[np.ndarray, str]]) -> tuple[float, float]:
    """(minimum, maximum) over all ``(image, name)`` pairs, for 'dataset' normalisation."""
    low, high = np.inf, -np.inf
    for image, name in images:
        check_finite(image, name)
        low, high = min(low, float(np.min(image))), max(high, float(np.max(image)))
    return low, high


def make_layout(
    first_image: np.ndarray,
    num_raters: int,
    config,
    images: Callable[[], Iterable[tuple[np.ndarray, str]]],
    name: str,
) -> Layout:
    """The layout of a data set from its first image, its maximum rater count and the data
    ``config`` (``image_size`` (0: the first image's size), ``num_classes``, ``resize_mode``,
    ``normalization``); ``images()`` iterates all ``(image, name)`` pairs for 'dataset'."""
    image = _channels_last(np.asarray(first_image), name)
    size = int(config.image_size)
    height, width = (size, size) if size else image.shape[:2]
    value_range = data_range(images()) if config.normalization == "dataset" else (0.0, 1.0)
    return Layout(
        height=int(height),
        width=int(width),
        channels=int(image.shape[2]),
        num_raters=int(num_raters),
        num_classes=int(config.num_classes),
        resize_mode=config.resize_mode,
        normalization=config.normalization,
        value_range=value_range,
    )
