"""The training config: its schema, defaults, variants and validation, in one place.

Config files (``experiments/configs/*.py``) are short calls of :func:`get_config`; launchers
load them with ``ml_collections.config_flags`` (``--config=FILE`` or ``--config=FILE:VARIANT``,
fields overridden with ``--config.a.b=value``), library code with :func:`load_config_file`.
Every run validates its config with :func:`validate` before it generates data or writes a file.

Layout::

    seed                      the run's seed (initialization, latent and KL sampling, evaluation)
    model                     presets.model_config(variant): latent family, Table 3 values, network
                              (model.variant 'custom': latent fields set by hand, not a preset;
                              model.latent_scales > 0: hierarchical latents, hierarchical.py)
    data                      probunet_jax.data.default_data_config(): data set and input pipeline
    train.batch_size          global batch size (divided over processes and devices)
    train.learning_rate       Adam's step size (paper: 1e-4)
    train.weight_decay        Adam's coupled L2 (PyTorch's Adam(weight_decay)): gradient += wd·w
                              for every parameter (authors' code: 1e-5; 0: off)
    train.l2_norm_penalty     λ of λ·Σ‖W‖₂ (L2 norms, not squared, of every parameter tensor of
                              the prior and posterior nets) added to the loss's gradient
                              (authors' code: 1e-5; 0: off; see losses.latent_nets_norm)
    train.num_steps           the most steps to train
    train.eval_every_steps    validation every this many steps: an "epoch" for early stopping
                              (ONE_EPOCH = 0: one pass over the training split, counted at run time)
    train.patience            evaluations without a new best before stopping
    train.validation_samples  samples per image for the validation GED at every validation (0: off)
    train.select_by           'loss' or 'ged' (needs validation_samples > 0): the validation
                              metric that picks the best checkpoint and drives early stopping
    train.schedule, train.warmup_steps   'constant', or 'cosine': linear warm-up, then cosine
                              decay to 0 at train.num_steps
    train.kl_warmup_steps     β ramps linearly from 0 over this many steps (0: off)
    train.geco_target, train.geco_rate, train.geco_decay   GECO instead of β when the target
                              (mean cross-entropy per pixel, nats) is > 0: loss = KL + λ·C,
                              λ ← λ·exp(rate · moving average (decay) of C)
    train.checkpoint_every_steps, train.max_checkpoints_to_keep   periodic checkpoints (ONE_EPOCH
                              as above)
    train.log_every_steps     training metrics, steps/s and ETA
    eval.num_samples          samples per image in the final evaluation (0: skip it)
    eval.batch_size, eval.split   the final evaluation's batch size and split
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from probunet_jax import data as data_lib
from probunet_jax import presets

ONE_EPOCH = 0  # train.eval_every_steps / checkpoint_every_steps: one epoch of the training split.
EVAL_SPLITS = ("validation", "test", "train")
SELECT_BY = ("loss", "ged")
SCHEDULES = ("constant", "cosine")

_TRAIN_DEFAULTS = dict(
    batch_size=32,
    learning_rate=1e-4,
    weight_decay=0.0,
    l2_norm_penalty=0.0,
    num_steps=1000,
    eval_every_steps=ONE_EPOCH,
    patience=20,
    checkpoint_every_steps=ONE_EPOCH,
    log_every_steps=50,
    max_checkpoints_to_keep=2,
    validation_samples=0,
    select_by="loss",
    schedule="constant",
    warmup_steps=0,
    kl_warmup_steps=0,
    geco_target=0.0,
    geco_rate=0.01,
    geco_decay=0.99,
)
_TRAIN_MINIMUM = dict(
    batch_size=1,
    num_steps=1,
    eval_every_steps=ONE_EPOCH,
    patience=1,
    checkpoint_every_steps=ONE_EPOCH,
    log_every_steps=1,
    max_checkpoints_to_keep=1,
    validation_samples=0,
    warmup_steps=0,
    kl_warmup_steps=0,
)
_EVAL_DEFAULTS = dict(num_samples=16, batch_size=32, split="test")


def _section(defaults: dict, overrides: dict | None, name: str) -> ml_collections.ConfigDict:
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        raise ValueError(f"Unknown {name} fields {unknown}; known: {sorted(defaults)}.")
    return ml_collections.ConfigDict({**defaults, **(overrides or {})})


def get_config(
    variant: str = "mixture_fc",
    *,
    model: dict | None = None,
    data: dict | None = None,
    train: dict | None = None,
    eval: dict | None = None,  # noqa: A002 - the section's name.
    seed: int = 0,
) -> ml_collections.ConfigDict:
    """A complete training config: the defaults, ``variant``'s latent settings, then the given
    fields of each section (unknown fields are errors).

    ``train.checkpoint_every_steps`` follows ``train.eval_every_steps`` unless given.
    """
    config = ml_collections.ConfigDict()
    config.seed = seed
    config.model = presets.model_config(variant, **(model or {}))
    config.data = _section(data_lib.default_data_config().to_dict(), data, "data")
    train = dict(train or {})
    train.setdefault("checkpoint_every_steps", train.get("eval_every_steps", ONE_EPOCH))
    config.train = _section(_TRAIN_DEFAULTS, train, "train")
    config.eval = _section(_EVAL_DEFAULTS, eval, "eval")
    return config


def with_variant(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the latent settings of ``variant`` (network, loss, data,
    training and evaluation fields kept)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model = presets.with_variant(config.model, variant)
    return config


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """The config of a config file, as ``--config=spec`` gives it: ``'path.py'`` calls its
    ``get_config()``, ``'path.py:ARG'`` its ``get_config('ARG')``."""
    path, _, argument = spec.partition(".py:")
    path = path if not argument else path + ".py"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"Config file {path!r} defines no get_config().")
    config = module.get_config(argument) if argument else module.get_config()
    return ml_collections.ConfigDict(config.to_dict())


# ----------------------------------------------------------------------------- validation


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first field of ``config`` that is unknown, out of range or
    in disagreement with another (a variant and its latent fields, an image size and the
    network's levels)."""
    for section in ("model", "data", "train", "eval"):
        if section not in config:
            raise ValueError(f"The config has no {section!r} section.")
    presets.check_model_config(config.model)
    data_lib.validate_data_config(config.data)
    _check_data_agrees(config)
    for field, low in _TRAIN_MINIMUM.items():
        if int(config.train[field]) < low:
            raise ValueError(f"train.{field} must be >= {low}, got {config.train[field]}.")
    if config.train.select_by not in SELECT_BY:
        raise ValueError(
            f"Unknown train.select_by {config.train.select_by!r}; expected one of {SELECT_BY}."
        )
    if config.train.select_by == "ged" and int(config.train.validation_samples) < 1:
        raise ValueError("train.select_by='ged' needs train.validation_samples >= 1.")
    if config.train.schedule not in SCHEDULES:
        raise ValueError(
            f"Unknown train.schedule {config.train.schedule!r}; expected one of {SCHEDULES}."
        )
    if config.train.geco_target < 0 or not 0 <= config.train.geco_decay < 1:
        raise ValueError(
            "train.geco_target must be >= 0 (0: off) and train.geco_decay in [0, 1), got "
            f"{config.train.geco_target} and {config.train.geco_decay}."
        )
    if config.train.weight_decay < 0 or config.train.l2_norm_penalty < 0:
        raise ValueError(
            "train.weight_decay and train.l2_norm_penalty must be >= 0 (0: off), got "
            f"{config.train.weight_decay} and {config.train.l2_norm_penalty}."
        )
    if not config.train.learning_rate > 0:
        raise ValueError(f"train.learning_rate must be > 0, got {config.train.learning_rate}.")
    check_eval_arguments(config.eval.split, config.eval.num_samples, config.eval.batch_size, 0)


def check_eval_arguments(split: str, num_samples: int, batch_size: int, min_samples: int) -> None:
    """Raises ValueError for an unknown split, too few samples or a batch size below 1."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"Unknown eval split {split!r}; expected one of {EVAL_SPLITS}.")
    if int(num_samples) < min_samples:
        raise ValueError(f"eval num_samples must be >= {min_samples}, got {num_samples}.")
    if int(batch_size) < 1:
        raise ValueError(f"eval batch_size must be >= 1, got {batch_size}.")


def _check_data_agrees(config: ml_collections.ConfigDict) -> None:
    """The data set's image size and classes against the network's levels and head."""
    info = data_lib.dataset_info(config.data)
    factor = 2 ** (len(config.model.filters) - 1)
    height, width, _ = info.image_shape
    if height % factor or width % factor:
        raise ValueError(
            f"The images of data set {info.name!r} are {height} x {width}: both must be "
            f"divisible by {factor}, as model.filters {tuple(config.model.filters)} has "
            f"{len(config.model.filters)} resolution levels (set data.image_size)."
        )
    head = 1 if info.num_classes == 2 else info.num_classes
    if int(config.model.num_classes) != head:
        raise ValueError(
            f"Data set {info.name!r} has {info.num_classes} classes, so model.num_classes must "
            f"be {head} (1: a sigmoid for binary masks), got {config.model.num_classes}."
        )
