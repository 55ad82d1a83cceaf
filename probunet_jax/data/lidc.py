"""Reading, validating and splitting the two public preprocessed LIDC-IDRI files.

Both hold 128 x 128 lesion patches with 4 expert masks each; see ``data/README.md`` for where to
get them. Records are dicts ``{'image': float32 [128, 128, 1] in [0, 1], 'masks': uint8
[4, 128, 128] in {0, 1} (grader order as stored), 'rater_valid': bool [4] (all True), 'id':
str}``, made by :func:`probunet_jax.data.records.make_example`.

* ``data_lidc.pickle`` (Probabilistic-Unet-Pytorch): a dict slice name -> ``{'image': [128,
  128] in [0, 1], 'masks': 4 x [128, 128], 'series_uid': str}`` (the layout of
  :mod:`probunet_jax.data.pickled`, read with its :func:`~pickled.load`). Split ``'patient'``:
  60:20:20 by series uid (no uid in two splits); split ``'slice'``: 60:20:20 by slice, as the
  paper's own scripts did. Both are seeded with ``splits.SPLIT_SEED`` (:func:`splits.split_groups`).
* ``data_lidc.hdf5`` (PHiSeg): groups ``train``/``val``/``test``, each with ``images`` (N, 128,
  128) holding image - 0.5, ``labels`` (N, 128, 128, 4) and ``uids`` (N,). Split ``'phiseg'``
  keeps its split (PHiSeg's own, by series uid).
"""

import os

import numpy as np

from probunet_jax.data import pickled, records
from probunet_jax.data.splits import check_nonempty, split_groups

PICKLE_NAME = "data_lidc.pickle"
HDF5_NAME = "data_lidc.hdf5"
LIDC_SPLITS = ("patient", "slice", "phiseg")
IMAGE_SIZE = 128
NUM_ANNOTATIONS = 4
LAYOUT = records.Layout(IMAGE_SIZE, IMAGE_SIZE, 1, NUM_ANNOTATIONS, 2)

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
    """Checks one patch and converts it to the stored layout (see :mod:`records`).

    Args:
      image: [128, 128] intensities in [0, 1].
      masks: [4, 128, 128] binary masks, grader order.
      name: the example's id, for error messages.

    Returns:
      ``{'image': float32 [128, 128, 1], 'masks': uint8 [4, 128, 128], 'rater_valid': bool
      [4] (all True)}``.
    """
    image, masks = np.asarray(image), np.asarray(masks)
    expected = (IMAGE_SIZE, IMAGE_SIZE)
    if image.shape != expected or masks.shape != (NUM_ANNOTATIONS, *expected):
        raise ValueError(
            f"Example {name!r}: expected an image of shape {expected} and masks of shape "
            f"{(NUM_ANNOTATIONS, *expected)}, got {image.shape} and {masks.shape}."
        )
    where = f"Example {name!r}"
    return records.make_example(
        image,
        list(masks),
        LAYOUT,
        image_name=where,
        mask_names=[f"{where} mask {k}" for k in range(NUM_ANNOTATIONS)],
    )


def read_pickle_splits(path: str, lidc_split: str) -> dict[str, list[dict[str, np.ndarray]]]:
    """Validated records of ``data_lidc.pickle`` by split ('patient' or 'slice' level)."""
    data = pickled.load(path)
    names = list(data)
    groups = [str(data[n]["series_uid"]) for n in names] if lidc_split == "patient" else names
    indices = split_groups(groups)
    check_nonempty(indices, path)
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
    check_nonempty(splits, path)
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
