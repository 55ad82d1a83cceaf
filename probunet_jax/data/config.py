"""The data configuration (``config.data`` of the training configs) and its validation."""

import re

import ml_collections

from probunet_jax.data import lidc, records, resize, splits

BUILTIN_NAMES = ("synthetic", "lidc")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"  # Names of folder and pickle data sets.
SOURCES = ("folder", "pickle")
ANNOTATOR_CHOICES = ("per_example", "per_batch")
SYNTHETIC_CLASSES = (2, 3)


def default_data_config() -> ml_collections.ConfigDict:
    """The default data configuration: the synthetic set at 128 x 128.

    Fields:
      name: 'synthetic' (built on first use, no download), 'lidc' (build it first with
        ``python -m experiments.prepare_data --dataset=lidc``) or the name of your own folder or
        pickle data set (letters, digits, '_', '-'; build it first with ``python -m
        experiments.prepare_data --dataset=folder|pickle --name=NAME``, see data/README.md).
        Its shape, classes and raters are then read from the built set (:func:`dataset_info`).
      data_dir: where built data sets live, relative to the working directory: ``data``.
      manual_dir: the folder holding ``data_lidc.pickle`` / ``data_lidc.hdf5``, or the source of
        a named set (the case folder, or a pickle file or folder); '' means data_dir.
      lidc_split: 'patient' (pickle, 60:20:20 by series uid), 'slice' (pickle, 60:20:20 by
        slice, as the paper's scripts) or 'phiseg' (hdf5, PHiSeg's split).
      image_size, num_annotations, num_train, num_validation, num_test, seed: the synthetic set;
        each combination (with num_classes) is a separate data set on disk. ``image_size`` is
        also the stored size (square) of a named set when building it; 0 keeps the size of its
        first image.
      num_classes: K, the classes of the masks (2: binary). Synthetic: 2, or 3 (label 1 the
        lesion rim, 2 its core). Named sets: the labels allowed when building (0..K-1).
      source: 'folder' or 'pickle', the layout of a named set's ``manual_dir`` when building.
      image_pattern, mask_pattern: folder sets, the shell patterns of a case's image file and
        of its rater mask files.
      resize_mode: 'resize' (linear for images, nearest for masks) or 'crop' (centre crop or
        zero pad), how a named set's images are brought to ``image_size``.
      normalization: 'dtype', 'dataset' or 'image', how a named set's images are scaled to
        [0, 1] (see :mod:`probunet_jax.data.records`).
      split_seed: seed of a named set's 60:20:20 split (unless its folder has a splits.csv).
      shuffle_seed: seed of the training pipeline's shuffle and annotator choice.
      annotator_choice: 'per_example' (one random valid rater per example) or 'per_batch' (one
        uniform ``u`` for the whole per-process batch, as the paper's code; see the pipeline).
      worker_count: grain worker processes for the training pipeline (0: in the main process).
    """
    return ml_collections.ConfigDict(
        {
            "name": "synthetic",
            "data_dir": "data",
            "manual_dir": "",
            "lidc_split": "patient",
            "image_size": 128,
            "num_annotations": 4,
            "num_train": 2000,
            "num_validation": 500,
            "num_test": 500,
            "seed": 0,
            "num_classes": 2,
            "source": "folder",
            "image_pattern": "image.*",
            "mask_pattern": "mask*",
            "resize_mode": "resize",
            "normalization": "dtype",
            "split_seed": splits.SPLIT_SEED,
            "shuffle_seed": 0,
            "annotator_choice": "per_example",
            "worker_count": 0,
        }
    )


def _check_choice(field: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown data.{field} {value!r}; expected one of {allowed}.")


def is_named(name: str) -> bool:
    """Whether ``name`` is a folder or pickle data set (not 'synthetic' or 'lidc')."""
    return name not in BUILTIN_NAMES


def validate_data_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first unknown or out-of-range value in ``config``."""
    if is_named(config.name) and not re.fullmatch(NAME_PATTERN, str(config.name)):
        raise ValueError(
            f"Unknown data.name {config.name!r}; expected one of {BUILTIN_NAMES} or the name "
            f"of a folder or pickle data set (letters, digits, '_' and '-')."
        )
    _check_choice("annotator_choice", config.annotator_choice, ANNOTATOR_CHOICES)
    _check_choice("lidc_split", config.lidc_split, lidc.LIDC_SPLITS)
    _check_choice("source", config.source, SOURCES)
    _check_choice("resize_mode", config.resize_mode, resize.RESIZE_MODES)
    _check_choice("normalization", config.normalization, records.NORMALIZATIONS)
    if config.name == "synthetic":
        _check_choice("num_classes", config.num_classes, SYNTHETIC_CLASSES)
    minimum = {
        "image_size": 8 if config.name == "synthetic" else 0,
        "num_annotations": 1,
        "num_train": 1,
        "num_validation": 1,
        "num_test": 1,
        "worker_count": 0,
    }
    for field, low in minimum.items():
        if int(config[field]) < low:
            raise ValueError(f"data.{field} must be >= {low}, got {config[field]}.")
    if 0 < int(config.image_size) < 8:
        raise ValueError(f"data.image_size must be 0 or >= 8, got {config.image_size}.")
    if not 2 <= int(config.num_classes) <= 256:
        raise ValueError(f"data.num_classes must be in [2, 256] (uint8), got {config.num_classes}.")
