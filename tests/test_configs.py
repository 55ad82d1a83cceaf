"""The config files of experiments/configs: every variant validates, and their recipes differ
from the quick start only where their docstrings say."""

import importlib

import pytest

from probunet_jax import config as config_lib
from probunet_jax import presets

FILES = ("default", "long", "paper", "authors")


def _config(name: str, variant: str):
    return importlib.import_module(f"experiments.configs.{name}").get_config(variant)


@pytest.mark.parametrize("name", FILES)
def test_every_variant_of_every_config_file_validates(name):
    for variant in presets.ALL_VARIANTS:
        config = _config(name, variant)
        config_lib.validate(config)
        assert config.model.variant == variant


def test_the_quick_start_trains_the_hierarchical_presets_with_beta_not_geco():
    for variant in presets.ALL_VARIANTS:
        config = _config("default", variant)
        hierarchical = variant in presets.HIERARCHICAL_VARIANTS
        assert config.train.geco_target == (0.0 if hierarchical else 0.015), variant
        assert config.model.beta == 1.0


def test_the_long_config_is_the_quick_start_on_a_wider_network_and_more_data():
    quick, long = _config("default", "mixture_fc"), _config("long", "mixture_fc")
    assert tuple(long.model.filters) == (16, 32, 64, 128) and long.model.convs_per_block == 3
    assert (long.train.num_steps, long.data.num_train) == (2000, 4096)
    assert long.train.num_steps * long.train.batch_size / long.data.num_train < 8  # Epochs.
    changed = {"filters", "convs_per_block"}
    assert {k for k in quick.model if quick.model[k] != long.model[k]} == changed
    same = ("learning_rate", "schedule", "geco_target", "batch_size", "select_by")
    assert all(quick.train[k] == long.train[k] for k in same)
