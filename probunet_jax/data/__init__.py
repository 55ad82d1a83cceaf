"""Data: the synthetic ambiguous set, LIDC-IDRI, and the grain input pipeline."""

from probunet_jax.data.builders import build, get_data_source, make_builder
from probunet_jax.data.config import default_data_config, validate_data_config

__all__ = [
    "build",
    "default_data_config",
    "get_data_source",
    "make_builder",
    "validate_data_config",
]
