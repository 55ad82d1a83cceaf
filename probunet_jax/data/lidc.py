"""Reading, validating and splitting the two public preprocessed LIDC-IDRI files.

Both hold 128 x 128 lesion patches with 4 expert masks each; see ``data/README.md`` for where to
get them. Records are dicts ``{'image': float32 [128, 128, 1] in [0, 1], 'masks': uint8
[4, 128, 128] in {0, 1} (grader order as stored), 'id': str}``.

* ``data_lidc.pickle`` (Probabilistic-Unet-Pytorch): a dict slice name -> ``{'image': [128,
  128] in [0, 1], 'masks': 4 x [128, 128], 'series_uid': str}``. Split ``'patient'``: 60:20:20
  by series uid (no uid in two splits); split ``'slice'``: 60:20:20 by slice, as the paper's own
  scripts did. Both are seeded with ``SPLIT_SEED``.
* ``data_lidc.hdf5`` (PHiSeg): groups ``train``/``val``/``test``, each with ``images`` (N, 128,
  128) holding image - 0.5, ``labels`` (N, 128, 128, 4) and ``uids`` (N,). Split ``'phiseg'``
  keeps its split (PHiSeg's own, by series uid).
"""

import os
import pickle
from collections.abc import Mapping, Sequence

import numpy as np

PICKLE_NAME = "data_lidc.pickle"
HDF5_NAME = "data_lidc.hdf5"
LIDC_SPLITS = ("patient", "slice", "phiseg")
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_SEED = 20220901
IMAGE_SIZE = 128
NUM_ANNOTATIONS = 4
RANGE_TOLERANCE = 1e-3  # Images may exceed [0, 1] by this much (rounding); they are clipped.

_SOURCES = {
    PICKLE_NAME: "the README of https://github.com/stefanknegt/Probabilistic-Unet-Pytorch",
    HDF5_NAME: "https://github.com/baumgach/PHiSeg-code (see its README)",
}
_HDF5_GROUPS = {"train": "train", "validation": "val", "test": "test"}


def source_file(lidc_split: str) -> str:
    """Name of the file that ``lidc_split`` is built from."""
    if lidc_split not in LIDC_SPLITS:
        raise ValueError(f"Unknown lidc_split {lidc_split!r}; expected one of {LIDC_SPLITS}.")
    return HDF5_NAME if lidc_split == "phiseg" else PICKLE_NAME


def find_file(manual_dir: str, lidc_split: str) -> str:
    """Path of the file for ``lidc_split`` in ``manual_dir``; else FileNotFoundError with help."""
    name = source_file(lidc_split)
    path = os.path.join(os.path.expanduser(manual_dir), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"LIDC split {lidc_split!r} is built from {name}, which is not in {manual_dir!r}. "
            f"Download it (see {_SOURCES[name]} and data/README.md) and put it at {path}, or "
            f"pass --manual_dir=<folder holding it>."
        )
    return path


def validate_example(image: np.ndarray, masks: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """Checks one patch and converts it to the stored layout.

    Args:
      image: [128, 128] intensities in [0, 1].
      masks: [4, 128, 128] binary masks, grader order.
      name: the example's id, for error messages.

    Returns:
      ``{'image': float32 [128, 128, 1], 'masks': uint8 [4, 128, 128]}``.
    """
    image, masks = np.asarray(image), np.asarray(masks)
    expected = (IMAGE_SIZE, IMAGE_SIZE)
    if image.shape != expected or masks.shape != (NUM_ANNOTATIONS, *expected):
        raise ValueError(
            f"Example {name!r}: expected an image of shape {expected} and masks of shape "
            f"{(NUM_ANNOTATIONS, *expected)}, got {image.shape} and {masks.shape}."
        )
    if not np.all(np.isfinite(image)):
        raise ValueError(f"Example {name!r}: the image has NaN or infinite values.")
    low, high = float(image.min()), float(image.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ValueError(f"Example {name!r}: image values in [{low}, {high}], expected [0, 1].")
    if not np.all((masks == 0) | (masks == 1)):
        raise ValueError(f"Example {name!r}: mask values {np.unique(masks)[:8]}, expected 0 or 1.")
    return {
        "image": np.clip(image, 0, 1).astype(np.float32)[..., None],
        "masks": masks.astype(np.uint8),
    }


def _load_pickle(path: str) -> Mapping:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as e:
        raise ValueError(f"{path} is not a readable pickle ({e!r}); expected {PICKLE_NAME}.") from e
    keys = {"image", "masks", "series_uid"}
    if not isinstance(data, Mapping) or not all(
        isinstance(v, Mapping) and keys <= set(v) for v in data.values()
    ):
        raise ValueError(
            f"{path}: unknown format; expected a dict of slice name -> dict with keys "
            f"{sorted(keys)}."
        )
    return data


def _check_nonempty(splits: Mapping[str, Sequence], source: str) -> None:
    empty = [name for name in SPLITS if len(splits[name]) == 0]
    if empty:
        raise ValueError(f"{source}: split(s) {empty} would be empty; the file has too few data.")


def split_groups(groups: Sequence[str], seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """60:20:20 split of items by group, no group in two splits: split -> sorted item indices.

    Groups are shuffled with ``seed`` and laid end to end by their item counts; a group goes to
    the split (by cumulative fraction) in which its midpoint falls. With one item per group this
    is a plain seeded 60:20:20 split of the items.
    """
    names, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    ends = np.cumsum(counts[order]) / len(groups)  # Cumulative share after each group.
    bounds = np.cumsum(SPLIT_FRACTIONS)[:-1]
    split_of_group = np.empty(len(names), np.int64)
    split_of_group[order] = np.searchsorted(bounds, ends - 0.5 * counts[order] / len(groups))
    split_of_item = split_of_group[inverse]
    return {name: np.flatnonzero(split_of_item == i) for i, name in enumerate(SPLITS)}


def read_pickle_splits(path: str, lidc_split: str) -> dict[str, list[dict[str, np.ndarray]]]:
    """Validated records of ``data_lidc.pickle`` by split ('patient' or 'slice' level)."""
    data = _load_pickle(path)
    names = list(data)
    groups = [str(data[n]["series_uid"]) for n in names] if lidc_split == "patient" else names
    indices = split_groups(groups) if names else {name: [] for name in SPLITS}
    _check_nonempty(indices, path)
    return {
        split: [_record(data[names[i]]["image"], data[names[i]]["masks"], names[i]) for i in idx]
        for split, idx in indices.items()
    }


def _record(image, masks, name: str) -> dict[str, np.ndarray]:
    """A validated record; ``masks`` is an array or a sequence of per-grader arrays."""
    try:
        masks = np.stack(list(masks))
    except (TypeError, ValueError) as e:
        raise ValueError(f"Example {name!r}: masks are not arrays of one shape ({e}).") from e
    return {**validate_example(image, masks, name), "id": name}


def read_hdf5_splits(path: str) -> dict[str, list[dict[str, np.ndarray]]]:
    """Validated records of PHiSeg's ``data_lidc.hdf5`` by its own split (0.5 added back)."""
    import h5py

    try:
        file = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 file ({e}); expected {HDF5_NAME}.") from e
    with file:
        missing = [
            f"{group}/{key}"
            for group in _HDF5_GROUPS.values()
            for key in ("images", "labels", "uids")
            if group not in file or key not in file[group]
        ]
        if missing:
            raise ValueError(f"{path}: unknown format, missing datasets {missing}.")
        splits = {split: _hdf5_records(file[group], path) for split, group in _HDF5_GROUPS.items()}
    _check_nonempty(splits, path)
    return splits


def _hdf5_records(group, path: str) -> list[dict[str, np.ndarray]]:
    """Records of one HDF5 group; ids are ``'{group}-{index:05d}-{uid}'``."""
    images, labels, uids = (group[k][()] for k in ("images", "labels", "uids"))
    if images.ndim != 3 or labels.ndim != 4 or not len(images) == len(labels) == len(uids):
        raise ValueError(
            f"{path}: group {group.name!r} has images {images.shape}, labels {labels.shape} and "
            f"uids {uids.shape}; expected (N, 128, 128), (N, 128, 128, 4) and (N,)."
        )
    name = group.name.strip("/")
    return [
        _record(image + 0.5, np.moveaxis(label, -1, 0), f"{name}-{i:05d}-{_text(uid)}")
        for i, (image, label, uid) in enumerate(zip(images, labels, uids, strict=True))
    ]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_splits(manual_dir: str, lidc_split: str) -> dict[str, list[dict[str, np.ndarray]]]:
    """Validated LIDC records by split ('train', 'validation', 'test') from ``manual_dir``."""
    path = find_file(manual_dir, lidc_split)
    if lidc_split == "phiseg":
        return read_hdf5_splits(path)
    return read_pickle_splits(path, lidc_split)
