"""Data: the synthetic ambiguous set, LIDC-IDRI, and the grain input pipeline."""

from probunet_jax.data.builders import build, get_data_source, make_builder
from probunet_jax.data.config import default_data_config, image_shape, validate_data_config
from probunet_jax.data.pipeline import (
    eval_batches,
    make_eval_batches,
    make_train_iterator,
    train_iterator,
)

__all__ = [
    "build",
    "default_data_config",
    "eval_batches",
    "get_data_source",
    "image_shape",
    "make_builder",
    "make_eval_batches",
    "make_train_iterator",
    "train_iterator",
    "validate_data_config",
]
