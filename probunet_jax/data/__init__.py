"""Data: the synthetic ambiguous set, LIDC-IDRI, your own folder or pickle data sets, and the
grain input pipeline."""

from probunet_jax.data.builders import build, get_data_source, make_builder
from probunet_jax.data.config import default_data_config, validate_data_config
from probunet_jax.data.info import DatasetInfo, dataset_info
from probunet_jax.data.pipeline import (
    eval_batches,
    make_eval_batches,
    make_train_iterator,
    train_iterator,
)

__all__ = [
    "DatasetInfo",
    "build",
    "dataset_info",
    "default_data_config",
    "eval_batches",
    "get_data_source",
    "make_builder",
    "make_eval_batches",
    "make_train_iterator",
    "train_iterator",
    "validate_data_config",
]
