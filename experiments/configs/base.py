"""The one place training configs are built from (``default.py``, ``test.py``, ``paper.py``).

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
