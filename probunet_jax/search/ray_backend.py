"""Runs the trials of a search with Ray Tune and its ASHA early-stopping scheduler.

For ASHA to stop bad trials early, a Ray trial trains in chunks of steps (``train.num_steps``
raised chunk by chunk, training resuming from the trial's checkpoint) and reports its results,
the selection metric among them (the validation GED of its best checkpoint so far, or its best
validation loss), after each chunk. Ray is an optional extra: ``pip install -e '.[ray]'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import ml_collections

from probunet_jax.search import trials as trials_lib

RAY_INSTALL_HINT = "pip install -e '.[ray]'"


class RayOptions(NamedTuple):
    """How the Ray backend runs.

    Attributes:
      address: Ray cluster address (``None``: start a local instance, ``'auto'``: join one).
      chunk_steps: steps between reports (ASHA rungs); 0 = :func:`default_chunk_steps`.
      max_concurrent: trials running at once (0 = as many as resources allow).
      cpus_per_trial, gpus_per_trial: resources of one trial.
      grace_period: reports before ASHA may stop a trial.
      reduction_factor: ASHA's η (keeps the best 1/η at each rung).
    """

    address: str | None = None
    chunk_steps: int = 0
    max_concurrent: int = 0
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    grace_period: int = 1
    reduction_factor: int = 3


def import_ray_tune():
    """``ray.tune``, or ImportError naming the extra to install."""
    try:
        from ray import tune
    except ImportError as e:
        raise ImportError(
            f"The Ray backend needs Ray Tune, an optional extra: {RAY_INSTALL_HINT} "
            f"(or pip install 'ray[tune]'). ({e})"
        ) from e
    return tune


def chunk_schedule(num_steps: int, chunk_steps: int) -> list[int]:
    """Step targets of a trial trained in chunks: chunk_steps, 2·chunk_steps, …, num_steps."""
    if num_steps < 1 or chunk_steps < 1:
        raise ValueError(f"num_steps and chunk_steps must be >= 1, got {num_steps}, {chunk_steps}.")
    return [*range(chunk_steps, num_steps, chunk_steps), num_steps]


def default_chunk_steps(config: ml_collections.ConfigDict) -> int:
    """Steps between Ray reports: ``train.eval_every_steps``, or one epoch when that is 0
    (one pass over ``data.num_train`` examples; a tenth of the run for LIDC)."""
    every = int(config.train.eval_every_steps)
    if every > 0:
        return every
    if config.data.name == "synthetic":
        return max(1, int(config.data.num_train) // int(config.train.batch_size))
    return max(1, int(config.train.num_steps) // 10)


def run_chunked(
    trial: trials_lib.Trial,
    root: str | os.PathLike,
    trial_fn: trials_lib.TrialFn,
    chunk_steps: int,
) -> Iterator[dict[str, Any]]:
    """Trains a trial chunk by chunk (`trials.train_trial` with the targets of
    :func:`chunk_schedule`), yielding its results after each chunk; a finished trial yields its
    result once."""
    loaded = trials_lib.load_trial(root, trial)
    if loaded.status == "finished":
        yield loaded.result
        return
    for target in chunk_schedule(int(trial.config.train.num_steps), chunk_steps):
        yield trials_lib.train_trial(trial, root, trial_fn, num_steps=target).result


def with_absolute_paths(trial: trials_lib.Trial) -> trials_lib.Trial:
    """The trial with ``data.data_dir`` and ``data.manual_dir`` made absolute (from this
    process's working directory): Ray runs trials in other working directories. The id stays."""
    config = ml_collections.ConfigDict(trial.config.to_dict())
    for field in ("data_dir", "manual_dir"):
        if config.data.get(field):
            config.data[field] = os.path.abspath(os.path.expanduser(config.data[field]))
    return trial._replace(config=config)


def _trainable(
    trials: dict[str, trials_lib.Trial], root: str, trial_fn: trials_lib.TrialFn, chunk: int
):
    def trainable(params: dict) -> None:
        tune = import_ray_tune()
        for result in run_chunked(trials[params["trial_id"]], root, trial_fn, chunk):
            tune.report(trials_lib.scalars(result))

    return trainable


def run_ray(
    trials: Sequence[trials_lib.Trial],
    root: str | os.PathLike,
    trial_fn: trials_lib.TrialFn,
    metric: str,
    options: RayOptions,
) -> list[trials_lib.TrialResult]:
    """Runs the trials with Ray Tune and an ASHA scheduler minimizing ``metric``.

    Every trial reports after each chunk of ``options.chunk_steps`` steps (a Tune iteration);
    ASHA stops the worse trials at its rungs (those keep ``progress.json``, status "stopped").
    Trials write to ``root/trials/<id>``, so on a multi-node cluster ``root`` must be shared
    storage. Finished trials are not re-run. Returns every trial's state read from disk.
    """
    tune = import_ray_tune()
    import ray
    from ray.tune.schedulers import ASHAScheduler

    root = os.path.abspath(root)
    chunk = options.chunk_steps or default_chunk_steps(trials[0].config)
    num_chunks = len(chunk_schedule(int(trials[0].config.train.num_steps), chunk))
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    by_id = {t.trial_id: with_absolute_paths(t) for t in trials}
    trainable = tune.with_resources(
        _trainable(by_id, root, trial_fn, chunk),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=num_chunks,
        grace_period=min(options.grace_period, num_chunks),
        reduction_factor=options.reduction_factor,
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search(list(by_id))},
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="min",
            scheduler=scheduler,
            max_concurrent_trials=options.max_concurrent or None,
        ),
        run_config=tune.RunConfig(name="ray", storage_path=root, verbose=1),
    )
    for error in tuner.fit().errors:
        print(f"A Ray trial failed: {error}")
    return [trials_lib.load_trial(root, t) for t in trials]
