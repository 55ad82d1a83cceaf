"""The data configuration (``config.data`` of the training configs) and its validation."""

import ml_collections

from probunet_jax.data import lidc

NAMES = ("synthetic", "lidc")
ANNOTATOR_CHOICES = ("per_example", "per_batch")


def default_data_config() -> ml_collections.ConfigDict:
    """The default data configuration: the synthetic set at 128 x 128.

    Fields:
      name: 'synthetic' (built on first use, no download) or 'lidc' (build it first with
        ``python -m experiments.prepare_data --dataset=lidc``).
      data_dir: where built data sets live, relative to the working directory: ``data``.
      manual_dir: the folder holding ``data_lidc.pickle`` / ``data_lidc.hdf5``; '' means data_dir.
      lidc_split: 'patient' (pickle, 60:20:20 by series uid), 'slice' (pickle, 60:20:20 by
        slice, as the paper's scripts) or 'phiseg' (hdf5, PHiSeg's split).
      image_size, num_annotations, num_train, num_validation, num_test, seed: the synthetic set;
        each combination is a separate data set on disk.
      shuffle_seed: seed of the training pipeline's shuffle and annotator choice.
      annotator_choice: 'per_example' (one random grader per example) or 'per_batch' (one random
        grader for the whole per-process batch, as the paper's code).
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
            "shuffle_seed": 0,
            "annotator_choice": "per_example",
            "worker_count": 0,
        }
    )


def _check_choice(field: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown data.{field} {value!r}; expected one of {allowed}.")


def validate_data_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first unknown or out-of-range value in ``config``."""
    _check_choice("name", config.name, NAMES)
    _check_choice("annotator_choice", config.annotator_choice, ANNOTATOR_CHOICES)
    _check_choice("lidc_split", config.lidc_split, lidc.LIDC_SPLITS)
    minimum = {
        "image_size": 8,
        "num_annotations": 1,
        "num_train": 1,
        "num_validation": 1,
        "num_test": 1,
        "worker_count": 0,
    }
    for field, low in minimum.items():
        if int(config[field]) < low:
            raise ValueError(f"data.{field} must be >= {low}, got {config[field]}.")


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """``[H, W, C]`` of the images of the data ``config``."""
    return (int(config.image_size), int(config.image_size), 1)
