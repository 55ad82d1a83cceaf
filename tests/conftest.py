"""Fixtures shared by the test modules: the tiny config, a data folder, a compilation cache.

Everything is tiny (16 x 16 images, filters (4, 8)) and runs on the CPU, with XLA's optimizing
passes off (`TEST_XLA_FLAGS`).
"""

import os
from pathlib import Path

import jax
import pytest

from probunet_jax import config as config_lib

# The suite's programs are tiny: XLA:CPU's optimizing passes cost more than they save. Without
# them the suite compiles about 40 % faster (tests/test_model.py: 105 s against 177 s, -n 2);
# set before JAX starts its backend (at its first computation); the launchers and notebooks
# that the tests run inherit it.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = str(ROOT / "experiments" / "configs" / "test.py")
TINY_MODEL = dict(filters=(4, 8), convs_per_block=1, head_depth=2, kl_samples=2)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """One data folder per test process: each synthetic data set is generated once."""
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A persistent compilation cache, so that equal programs compile once per test process."""
    path = str(tmp_path_factory.mktemp("jax_cache"))
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    old = {name: getattr(jax.config, name) for name in names}
    for name, value in zip(names, (path, 0, -1), strict=True):
        jax.config.update(name, value)
    yield path
    for name, value in old.items():
        jax.config.update(name, value)


@pytest.fixture
def make_config(data_dir, cache_dir):
    """``make_config(variant='mixture_fc', **sections)``: ``experiments/configs/test.py`` for
    ``variant`` in the shared data folder, with ``sections`` (``train=dict(...)``...) updated."""
    del cache_dir

    def make(variant: str = "mixture_fc", **sections):
        config = config_lib.load_config_file(f"{TEST_CONFIG}:{variant}")
        config.data.data_dir = data_dir
        for name, fields in sections.items():
            config[name].update(fields)
        return config

    return make


@pytest.fixture
def config(make_config):
    """The test config without the final evaluation."""
    return make_config(eval=dict(num_samples=0))
