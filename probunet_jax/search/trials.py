"""The trials of a search: their ids, their records on disk, and the local resumable runner.

A trial's id is readable plus a hash of its full config, so the same search run again finds
its finished trials (``root/trials/<id>/result.json``) and does not train them again, and
another base config never reuses them. Trials of a chunked (Ray) run keep their latest partial
results in ``progress.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from probunet_jax import files
from probunet_jax.search import space as space_lib

TRIALS_DIR = "trials"
TRIAL_FILE = "trial.json"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"

# Trains and scores one config in a workdir, returning its results as a flat mapping
# (``best_validation_loss``, ``validation_ged``...: see ``selection.scored``).
TrialFn = Callable[[ml_collections.ConfigDict, str], Mapping[str, Any]]


class Trial(NamedTuple):
    """One point of the search.

    Attributes:
      trial_id: deterministic id (readable prefix + hash of the full trial config).
      variant: the variant family searched (a key of ``presets.VARIANTS``); the config's
        ``model.variant`` is 'custom' where the trial's latent differs from that preset.
      overrides: the trial's model values (latent_dim, beta and the variant's random
        hyperparameters), plain Python scalars.
      config: the full trial config.
    """

    trial_id: str
    variant: str
    overrides: dict[str, Any]
    config: ml_collections.ConfigDict


class TrialResult(NamedTuple):
    """What a search knows of a trial: its row in ``trials.csv``/``trials.json``.

    Attributes:
      status: "finished", "stopped" (a Ray trial stopped early: its partial results) or
        "pending" (no results).
    """

    trial: Trial
    status: str
    result: dict[str, Any]
    workdir: str


def plain(value: Any) -> Any:
    """``value`` as plain JSON-able Python data (configs, numpy and jax values, tuples)."""
    if isinstance(value, Mapping | ml_collections.ConfigDict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if hasattr(value, "__array__"):  # numpy and jax arrays
        return plain(np.asarray(value).tolist())
    return str(value)


def scalars(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers among a trial's results (what a log line or a Ray report shows)."""
    return {
        k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def trial_id(variant: str, overrides: Mapping[str, Any], config: ml_collections.ConfigDict) -> str:
    """e.g. ``mixture_fc-d2-b10-n9-t0.280-1a2b3c4d``: the searched values and 8 hex digits of
    the SHA-1 of the config."""
    parts = [variant, f"d{overrides['latent_dim']}", f"b{overrides['beta']:g}"]
    if "rank" in overrides:
        parts.append(f"r{overrides['rank']}")
    if "num_components" in overrides:
        parts.append(f"n{overrides['num_components']}")
    if "temperature" in overrides:
        parts.append(f"t{overrides['temperature']:.3f}")
    if "latent_scales" in overrides:
        parts.append(f"s{overrides['latent_scales']}")
    digest = hashlib.sha1(json.dumps(plain(config), sort_keys=True).encode()).hexdigest()
    return "-".join([*parts, digest[:8]])


def make_trials(
    base: ml_collections.ConfigDict,
    variant: str,
    space: space_lib.SearchSpace = space_lib.PAPER_SEARCH_SPACE,
    *,
    num_random: int = 1,
    seed: int = 0,
) -> list[Trial]:
    """Every trial of the search for ``variant`` around ``base`` (`space.search_points`,
    `space.trial_config`)."""
    trials = []
    levels = len(base.model.filters)
    points = space_lib.search_points(
        variant, space, num_random=num_random, seed=seed, max_latent_scales=levels - 1
    )
    for point in points:
        config = space_lib.trial_config(base, variant, point)
        trials.append(Trial(trial_id(variant, point, config), variant, point, config))
    return trials


def trial_dir(root: str | os.PathLike, trial: Trial) -> Path:
    """``root/trials/<trial id>``: the trial's training workdir and result files."""
    return Path(root) / TRIALS_DIR / trial.trial_id


def load_trial(root: str | os.PathLike, trial: Trial) -> TrialResult:
    """The trial's state on disk: finished (result.json), stopped (progress only) or pending."""
    folder = trial_dir(root, trial)
    for status, name in (("finished", RESULT_FILE), ("stopped", PROGRESS_FILE)):
        path = folder / name
        if path.exists():
            return TrialResult(trial, status, json.loads(path.read_text()), str(folder))
    return TrialResult(trial, "pending", {}, str(folder))


def train_trial(
    trial: Trial, root: str | os.PathLike, trial_fn: TrialFn, num_steps: int | None = None
) -> TrialResult:
    """Runs ``trial_fn`` on the trial's config in its folder and records the results.

    With ``num_steps`` below the trial's ``train.num_steps`` (a chunk of a Ray trial) the
    results are partial: status "stopped", written to ``progress.json``; else to
    ``result.json``. Training resumes from the folder's latest checkpoint.
    """
    folder = trial_dir(root, trial)
    files.write_json(folder / TRIAL_FILE, plain(trial._asdict()), sort_keys=True)
    config = ml_collections.ConfigDict(trial.config.to_dict())
    full = num_steps is None or num_steps >= int(config.train.num_steps)
    if not full:
        config.train.num_steps = num_steps
    start = time.perf_counter()
    result = plain(trial_fn(config, str(folder)))
    result["seconds"] = round(time.perf_counter() - start, 3)
    status, name = ("finished", RESULT_FILE) if full else ("stopped", PROGRESS_FILE)
    files.write_json(folder / name, result, sort_keys=True)
    return TrialResult(trial, status, result, str(folder))


def run_local(
    trials: Sequence[Trial],
    root: str | os.PathLike,
    trial_fn: TrialFn,
    *,
    log: Callable[[str], None] = print,
) -> list[TrialResult]:
    """Runs the trials one after the other; finished ones (result file present) are skipped."""
    outcomes = []
    for i, trial in enumerate(trials):
        outcome = load_trial(root, trial)
        verb = "done before"
        if outcome.status != "finished":
            outcome, verb = train_trial(trial, root, trial_fn), "finished"
        numbers = ", ".join(f"{k}={v:.4g}" for k, v in scalars(outcome.result).items())
        log(f"trial {i + 1}/{len(trials)} {trial.trial_id}: {verb}, {numbers}")
        outcomes.append(outcome)
    return outcomes
