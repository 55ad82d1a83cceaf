"""Hyperparameter search: the paper's (Bhat et al. 2022, Appendix A, Table 2) for one variant.

:func:`run` is the whole search: the trials of the search space around a base config
(:mod:`~probunet_jax.search.space`, :mod:`~probunet_jax.search.trials`), trained one after the
other (``backend='local'``, resumable) or by Ray Tune with ASHA early stopping
(``backend='ray'``, :mod:`~probunet_jax.search.ray_backend`); every trial's best checkpoint
evaluated on the validation split, the winner chosen by its validation GED or its loss
(:mod:`~probunet_jax.search.selection`, which explains why the loss cannot compare β), and the
tables, ``best.json`` and ``best_config.py`` written (:mod:`~probunet_jax.search.report`)::

    summary = search.run(config.get_config(), "mixture_fc", "runs/sweep", num_random=2)
    print(search.describe(summary))
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import ml_collections

from probunet_jax import config as config_lib
from probunet_jax import train
from probunet_jax.search.ray_backend import RayOptions, run_ray
from probunet_jax.search.report import SearchSummary, describe, write_report
from probunet_jax.search.selection import (
    DEFAULT_NUM_SAMPLES,
    METRICS,
    ValidationFn,
    evaluate_validation,
    metric_name,
    scored,
)
from probunet_jax.search.space import PAPER_SEARCH_SPACE, SearchSpace
from probunet_jax.search.trials import Trial, TrialFn, TrialResult, make_trials, run_local

BACKENDS = ("local", "ray")
SELECT_BY = tuple(METRICS)

__all__ = [
    "BACKENDS",
    "DEFAULT_NUM_SAMPLES",
    "PAPER_SEARCH_SPACE",
    "SELECT_BY",
    "RayOptions",
    "SearchSpace",
    "SearchSummary",
    "Trial",
    "TrialResult",
    "describe",
    "make_trials",
    "run",
]


def run(
    base: ml_collections.ConfigDict,
    variant: str,
    root: str | os.PathLike,
    *,
    space: SearchSpace = PAPER_SEARCH_SPACE,
    num_random: int = 1,
    seed: int = 0,
    backend: str = "local",
    select_by: str = "ged",
    num_samples: int = DEFAULT_NUM_SAMPLES,
    ray_options: RayOptions | None = None,
    train_fn: TrialFn = train.train_and_evaluate,
    validation_fn: ValidationFn | None = None,
    log: Callable[[str], None] = print,
) -> SearchSummary:
    """Runs the search for ``variant`` around ``base`` in ``root``; re-running it resumes.

    Args:
      base: the training config that every trial changes only in its model's latent and β.
      variant: the variant family searched (a key of ``presets.VARIANTS``).
      root: the search's folder (``trials/<id>/`` of every trial, the tables, the winner).
      space, num_random, seed: the trials (``trials.make_trials``).
      backend: 'local' (one after the other) or 'ray' (``ray_options``).
      select_by: 'ged' (lowest validation GED) or 'loss' (lowest best validation loss).
      num_samples: samples per validation image for the GED.
      train_fn: trains a config in a workdir (``train.train_and_evaluate``'s contract).
      validation_fn: the validation summary of a trained workdir (default
        ``selection.evaluate_validation`` with ``num_samples``).
      log: where the local backend reports each trial.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; expected one of {BACKENDS}.")
    metric = metric_name(select_by)
    config_lib.check_eval_arguments("validation", num_samples, base.eval.batch_size, 1)
    trials = make_trials(base, variant, space, num_random=num_random, seed=seed)
    if validation_fn is None:
        validation_fn = functools.partial(evaluate_validation, num_samples=num_samples)
    trial_fn = scored(train_fn, validation_fn)
    if backend == "ray":
        outcomes = run_ray(trials, root, trial_fn, metric, ray_options or RayOptions())
    else:
        outcomes = run_local(trials, root, trial_fn, log=log)
    return write_report(root, outcomes, base, select_by)
