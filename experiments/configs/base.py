"""The one place training configs are built from (``default.py``, ``test.py``, ``paper.py``),
and the tools that load a config file and derive one variant's config from it.

Layout of a training config::

    seed                      the run's seed (initialization, latent and KL sampling)
    model                     presets.model_config(variant): latent family, Table 3 values, network
    data                      probunet_jax.data.default_data_config(): data set and input pipeline
    train.batch_size          global batch size (divided over processes and devices)
    train.learning_rate       Adam's step size (paper: 1e-4)
    train.num_steps           the most steps to train
    train.eval_every_steps    validation loss every this many steps: an "epoch" for early stopping
                              (ONE_EPOCH = 0: one pass over the training split, counted at run time)
    train.patience            evaluations without a new best validation loss before stopping
    train.checkpoint_every_steps, train.max_checkpoints_to_keep   periodic checkpoints (ONE_EPOCH
                              as above)
    train.log_every_steps     training metrics, steps/s and ETA
    eval.num_samples          samples per test image in the final evaluation (0: skip it)
    eval.batch_size, eval.split   the final evaluation's batch size and split
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
from collections.abc import Sequence

import ml_collections

from probunet_jax import data, presets

ONE_EPOCH = 0  # For train.eval_every_steps / checkpoint_every_steps: one epoch of training data.


def get_base_config(
    variant: str = "mixture_fc",
    *,
    model: dict | None = None,
    data_overrides: dict | None = None,
    batch_size: int = 32,
    num_steps: int = 1000,
    eval_every_steps: int = ONE_EPOCH,
    patience: int = 20,
    learning_rate: float = 1e-4,
    log_every_steps: int = 50,
    eval_batch_size: int = 32,
    num_samples: int = 16,
) -> ml_collections.ConfigDict:
    """A complete training config; ``eval_every_steps`` defaults to one epoch of training data
    (``ONE_EPOCH``, resolved at run time from the size of the training split).

    ``model`` overrides fields of ``presets.model_config(variant)`` (e.g. ``filters``), and
    ``data_overrides`` fields of ``data.default_data_config()``. Checkpoints are written at
    every evaluation.
    """
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = presets.model_config(variant, **(model or {}))
    config.data = data.default_data_config()
    config.data.update(data_overrides or {})
    config.train = ml_collections.ConfigDict(
        dict(
            batch_size=batch_size,
            learning_rate=learning_rate,
            num_steps=num_steps,
            eval_every_steps=eval_every_steps,
            patience=patience,
            checkpoint_every_steps=eval_every_steps,
            log_every_steps=log_every_steps,
            max_checkpoints_to_keep=2,
        )
    )
    config.eval = ml_collections.ConfigDict(
        dict(num_samples=num_samples, batch_size=eval_batch_size, split="test")
    )
    return config


def load_config_module(path: str):
    """Imports a config file (a Python file defining ``get_config``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"Config file {path!r} defines no get_config().")
    return module


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Sets ``config[a][b] = value`` from ``'a.b=value'`` (value a Python literal or a string)."""
    path, sep, text = override.partition("=")
    if not sep or not path:
        raise ValueError(f"--override must look like key.path=value, got {override!r}.")
    *parents, name = path.strip().split(".")
    node = config
    for part in parents:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise ValueError(f"Unknown config field {path!r} in --override={override!r}.")
        node = node[part]
    if name not in node:
        raise ValueError(f"Unknown config field {path!r} in --override={override!r}.")
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        value = text.strip()
    try:
        node[name] = value
    except TypeError as e:
        raise ValueError(f"Bad value in --override={override!r}: {e}") from e


def variant_config(
    config_file: str, variant: str, dataset: str | None = None, overrides: Sequence[str] = ()
) -> ml_collections.ConfigDict:
    """The training config of ``variant`` from ``config_file``: the file's ``get_config()`` (or
    ``get_config(variant)`` when it takes an argument, as ``paper.py``) with the variant's latent
    settings swapped in (``presets.with_variant``), ``config.data.name = dataset`` if given,
    then ``overrides`` (``'a.b=value'``)."""
    if variant not in presets.VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; expected one of {list(presets.VARIANTS)}.")
    get_config = load_config_module(config_file).get_config
    if inspect.signature(get_config).parameters:
        config = get_config(variant)  # e.g. configs/paper.py:<variant>
    else:
        config = get_config()
    config = ml_collections.ConfigDict(config.to_dict())  # Unlocked, our own copy.
    config.model = presets.with_variant(config.model, variant)
    if dataset is not None:
        config.data.name = dataset
    for override in overrides:
        apply_override(config, override)
    if int(config.eval.num_samples) < 1:
        raise ValueError(
            "The paper pipeline evaluates every variant: eval.num_samples must be >= 1."
        )
    return config
