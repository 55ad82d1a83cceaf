"""The paper's hyperparameter search (Bhat et al. 2022, Appendix A, Table 2).

| hyperparameter       | range        | search         | used by                              |
|----------------------|--------------|----------------|--------------------------------------|
| latent dimension     | {2, 4, 6, 8} | grid           | every variant                        |
| β (KL weight)        | {1, 10, 100} | grid           | every variant                        |
| rank                 | [1, 5]       | random (int)   | ``lr``, ``mixture_lr``; < latent dim |
| mixture components N | [1, 10]      | random (int)   | ``mixture_*``                        |
| temperature τ        | [0.1, 0.5]   | random (float) | ``mixture_*``                        |

:func:`make_trials` crosses the grid with ``num_random`` seeded random draws of the variant's
random hyperparameters per grid point (one trial per grid point for the variants with none,
``aa`` and ``fc``). Each trial is the base config with its model rebuilt for the variant
(:func:`trial_config`) and has a deterministic id, readable plus a hash of the full config, so
that a finished trial (its ``trials/<id>/result.json`` exists) is not re-run
(:func:`run_local`). The winner is the trial with the lowest best validation loss
(:func:`select_best`); :func:`finish` writes ``trials.csv``, ``trials.json``, ``best.json`` and
``best_config.py``, a config file that ``experiments/train.py --config=`` accepts.

Backends: ``local`` (sequential, resumable) and ``ray`` (Ray Tune with an ASHA scheduler,
:func:`run_ray`; ``pip install -e '.[ray]'``). For ASHA to stop bad trials early, a Ray trial
trains in chunks of steps (``train.num_steps`` raised chunk by chunk; training resumes from the
trial's checkpoint) and reports the best validation loss after each chunk.

A mixture variant drawing N = 1 is a single Gaussian (the paper's range includes it).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import os
import pprint
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from probunet_jax import presets

TRIALS_DIR = "trials"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"
TABLE_CSV = "trials.csv"
TABLE_JSON = "trials.json"
BEST_JSON = "best.json"
BEST_CONFIG = "best_config.py"
BACKENDS = ("local", "ray")
RAY_INSTALL_HINT = "pip install -e '.[ray]'"
SELECTION_METRIC = "best_validation_loss"

# Model-config keys that a variant preset sets (its latent family); the base config's other
# model keys (network widths, head, beta, KL samples) carry over to every variant.

# A trial function trains and evaluates one config in a workdir and returns its results
# (``train.train_and_evaluate``'s contract: at least ``best_validation_loss``).
TrialFn = Callable[[ml_collections.ConfigDict, str], Mapping[str, Any]]


class SearchSpace(NamedTuple):
    """A search space; the default is the paper's (Table 2). Ranges are inclusive."""

    latent_dims: tuple[int, ...] = (2, 4, 6, 8)
    betas: tuple[float, ...] = (1.0, 10.0, 100.0)
    rank_range: tuple[int, int] = (1, 5)
    components_range: tuple[int, int] = (1, 10)
    temperature_range: tuple[float, float] = (0.1, 0.5)


PAPER_SEARCH_SPACE = SearchSpace()


class Trial(NamedTuple):
    """One point of the search.

    Attributes:
      trial_id: deterministic id (readable prefix + hash of the full trial config).
      variant: the model variant (a key of ``presets.VARIANTS``).
      overrides: the model-config values of this trial (latent_dim, beta and the variant's
        random hyperparameters), plain Python scalars.
      config: the full trial config (base config, model rebuilt for the variant, overrides).
    """

    trial_id: str
    variant: str
    overrides: dict[str, Any]
    config: ml_collections.ConfigDict


class TrialResult(NamedTuple):
    """What a sweep knows of a trial: its row in ``trials.csv``/``trials.json``."""

    trial: Trial
    status: str  # "finished" | "stopped" (Ray early stop, partial) | "pending"
    result: dict[str, Any]
    workdir: str


# --------------------------------------------------------------------------- search space


def check_variant(variant: str) -> None:
    """Raises ValueError for a variant that ``presets.VARIANTS`` does not know."""
    if variant not in presets.VARIANTS:
        raise ValueError(
            f"Unknown model variant {variant!r}; expected one of {list(presets.VARIANTS)}."
        )


def random_hyperparameters(variant: str) -> tuple[str, ...]:
    """The randomly searched model keys that ``variant`` uses: rank (low-rank kinds),
    num_components and temperature (mixtures)."""
    check_variant(variant)
    preset = presets.VARIANTS[variant]
    names = ()
    if preset["latent_kind"] == "lr":
        names += ("rank",)
    if preset.get("num_components", 1) > 1:
        names += ("num_components", "temperature")
    return names


def _check_range(name: str, bounds: Sequence[float], low_limit: float) -> None:
    if len(bounds) != 2 or not low_limit <= bounds[0] <= bounds[1]:
        raise ValueError(
            f"{name} must be (low, high) with {low_limit} <= low <= high, got {bounds}."
        )


def check_space(space: SearchSpace) -> None:
    """Raises ValueError for an empty grid or an invalid range."""
    if not space.latent_dims or not space.betas:
        raise ValueError(
            f"Empty search space: latent_dims={space.latent_dims}, betas={space.betas}; "
            "both grids need at least one value."
        )
    if min(space.latent_dims) < 1:
        raise ValueError(f"latent dims must be >= 1, got {space.latent_dims}.")
    if min(space.betas) < 0:
        raise ValueError(f"betas must be >= 0, got {space.betas}.")
    _check_range("rank_range", space.rank_range, 1)
    _check_range("components_range", space.components_range, 1)
    _check_range("temperature_range", space.temperature_range, 0)
    if not space.temperature_range[0] > 0:
        raise ValueError(f"temperatures must be > 0, got {space.temperature_range}.")


def rank_bounds(space: SearchSpace, latent_dim: int) -> tuple[int, int]:
    """Inclusive rank range at ``latent_dim``: ``space.rank_range`` cut to rank < latent_dim."""
    low, high = space.rank_range[0], min(space.rank_range[1], latent_dim - 1)
    if high < low:
        raise ValueError(
            f"Empty search space: no rank in {space.rank_range} is < latent_dim={latent_dim} "
            "(the low-rank variants need latent_dim >= 2)."
        )
    return int(low), int(high)


def sample_random(
    variant: str, space: SearchSpace, latent_dim: int, rng: np.random.Generator
) -> dict[str, Any]:
    """One draw of the random hyperparameters ``variant`` uses, as plain Python scalars.

    Integers are uniform on their inclusive ranges; the temperature is uniform, rounded to 3
    decimals so that the recorded value is the trained one.
    """
    values: dict[str, Any] = {}
    names = random_hyperparameters(variant)
    if "rank" in names:
        low, high = rank_bounds(space, latent_dim)
        values["rank"] = int(rng.integers(low, high + 1))
    if "num_components" in names:
        low, high = space.components_range
        values["num_components"] = int(rng.integers(low, high + 1))
        values["temperature"] = round(float(rng.uniform(*space.temperature_range)), 3)
    return values


def grid(space: SearchSpace) -> list[tuple[int, float]]:
    """The grid points (latent_dim, beta), latent dim major."""
    return [(int(d), float(b)) for d in space.latent_dims for b in space.betas]


def search_points(
    variant: str, space: SearchSpace = PAPER_SEARCH_SPACE, *, num_random: int = 1, seed: int = 0
) -> list[dict[str, Any]]:
    """The model overrides of every trial: the grid × ``num_random`` draws per grid point.

    Draw ``r`` at grid point ``g`` uses ``numpy.random.default_rng((seed, g, r))``, so adding
    draws keeps the earlier ones. Variants without random hyperparameters get one trial per grid
    point; duplicate draws are dropped.
    """
    check_variant(variant)
    check_space(space)
    if num_random < 1:
        raise ValueError(f"num_random must be >= 1, got {num_random}.")
    draws = num_random if random_hyperparameters(variant) else 1
    points, seen = [], set()
    for g, (latent_dim, beta) in enumerate(grid(space)):
        for r in range(draws):
            rng = np.random.default_rng((seed, g, r))
            point = {"latent_dim": latent_dim, "beta": beta}
            point.update(sample_random(variant, space, latent_dim, rng))
            key = tuple(sorted(point.items()))
            if key not in seen:
                seen.add(key)
                points.append(point)
    return points


# --------------------------------------------------------------------------- trials


def trial_config(
    base: ml_collections.ConfigDict, variant: str, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of ``base`` whose ``model`` is ``variant`` with ``overrides``."""
    config = ml_collections.ConfigDict(base.to_dict())
    with config.unlocked():
        config.model = presets.with_variant(base.model, variant, **overrides)
    return config


def _canonical(value: Any) -> Any:
    """Plain JSON-able Python data (numpy scalars and arrays, tuples, paths converted)."""
    if isinstance(value, Mapping | ml_collections.ConfigDict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, np.ndarray):
        return _canonical(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    if hasattr(value, "__array__"):  # jax.Array
        return _canonical(np.asarray(value))
    return str(value)


def config_hash(config: ml_collections.ConfigDict) -> str:
    """8 hex digits of the SHA-1 of the config's canonical JSON."""
    text = json.dumps(_canonical(config), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def trial_id(variant: str, overrides: Mapping[str, Any], config: ml_collections.ConfigDict) -> str:
    """e.g. ``mixture_fc-d2-b10-n9-t0.280-1a2b3c4d``: the searched values and a config hash."""
    parts = [variant, f"d{overrides['latent_dim']}", f"b{overrides['beta']:g}"]
    if "rank" in overrides:
        parts.append(f"r{overrides['rank']}")
    if "num_components" in overrides:
        parts.append(f"n{overrides['num_components']}")
    if "temperature" in overrides:
        parts.append(f"t{overrides['temperature']:.3f}")
    return "-".join([*parts, config_hash(config)])


def make_trials(
    base: ml_collections.ConfigDict,
    variant: str,
    space: SearchSpace = PAPER_SEARCH_SPACE,
    *,
    num_random: int = 1,
    seed: int = 0,
    evaluate_trials: bool = False,
) -> list[Trial]:
    """Every trial of the search for ``variant`` around the base config (see `search_points`).

    A search never looks at the test split: trials evaluate on ``validation``, and only if
    ``evaluate_trials`` (else ``eval.num_samples`` = 0; the winner is evaluated afterwards).
    """
    trials = []
    for overrides in search_points(variant, space, num_random=num_random, seed=seed):
        config = trial_config(base, variant, overrides)
        config.eval.split = "validation"
        if not evaluate_trials:
            config.eval.num_samples = 0
        trials.append(Trial(trial_id(variant, overrides, config), variant, overrides, config))
    return trials


def release_config(
    trial: Trial, base: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
    """The config to train a trial's settings for real: its config with ``base``'s eval section
    (the final evaluation on the base's split, normally test)."""
    config = ml_collections.ConfigDict(trial.config.to_dict())
    if base is not None:
        config.eval = ml_collections.ConfigDict(base.eval.to_dict())
    return config


# --------------------------------------------------------------------------- files


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, value: Any) -> None:
    _write_text_atomic(path, json.dumps(_canonical(value), indent=2, sort_keys=True) + "\n")


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


def run_trial(
    trial: Trial, root: str | os.PathLike, trial_fn: TrialFn, *, rerun: bool = False
) -> TrialResult:
    """Runs ``trial_fn(config, workdir)`` unless the trial finished before; saves its result."""
    loaded = load_trial(root, trial)
    if loaded.status == "finished" and not rerun:
        return loaded
    folder = trial_dir(root, trial)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(
        folder / "trial.json",
        {
            "trial_id": trial.trial_id,
            "variant": trial.variant,
            "overrides": trial.overrides,
            "config": trial.config,
        },
    )
    start = time.perf_counter()
    result = dict(_canonical(trial_fn(trial.config, str(folder))))
    result["seconds"] = round(time.perf_counter() - start, 3)
    if SELECTION_METRIC not in result:
        raise ValueError(
            f"The trial function returned no {SELECTION_METRIC!r} (keys: {sorted(result)})."
        )
    _write_json(folder / RESULT_FILE, result)
    return TrialResult(trial, "finished", result, str(folder))


def run_local(
    trials: Sequence[Trial],
    root: str | os.PathLike,
    trial_fn: TrialFn,
    *,
    log: Callable[[str], None] = print,
) -> list[TrialResult]:
    """Runs the trials one after the other; finished ones (result file present) are skipped."""
    results = []
    for i, trial in enumerate(trials):
        before = load_trial(root, trial).status
        outcome = run_trial(trial, root, trial_fn)
        verb = "done before" if before == "finished" else "finished"
        loss = outcome.result.get(SELECTION_METRIC)
        log(f"trial {i + 1}/{len(trials)} {trial.trial_id}: {verb}, {SELECTION_METRIC}={loss}")
        results.append(outcome)
    return results


# --------------------------------------------------------------------------- selection, tables


def _metric_mean(result: Mapping[str, Any], column: str) -> float | None:
    """``summary['metrics'][column]['mean']`` of an evaluation summary anywhere in ``result``."""
    for value in result.values():
        if isinstance(value, Mapping):
            metrics = value.get("metrics")
            if isinstance(metrics, Mapping) and isinstance(metrics.get(column), Mapping):
                return metrics[column].get("mean")
            found = _metric_mean(value, column)
            if found is not None:
                return found
    return None


def _loss(outcome: TrialResult) -> float:
    value = outcome.result.get(SELECTION_METRIC)
    if value is None or not math.isfinite(float(value)):
        return math.inf
    return float(value)


def select_best(outcomes: Sequence[TrialResult]) -> TrialResult:
    """The trial with the lowest finite best validation loss (ties: the earlier trial)."""
    candidates = [o for o in outcomes if o.status != "pending" and math.isfinite(_loss(o))]
    if not candidates:
        raise ValueError(
            f"No trial has a finite {SELECTION_METRIC}; {len(outcomes)} trials, statuses "
            f"{sorted({o.status for o in outcomes})}."
        )
    return min(candidates, key=_loss)


TABLE_COLUMNS = (
    "trial_id",
    "status",
    "variant",
    "latent_dim",
    "beta",
    "rank",
    "num_components",
    "temperature",
    "best_validation_loss",
    "best_step",
    "final_step",
    "ged",
    "oracle_ged",
    "seconds",
    "workdir",
)


def table_row(outcome: TrialResult) -> dict[str, Any]:
    """One row of ``trials.csv``: searched values (blank where unused) and results."""
    trial, result = outcome.trial, outcome.result
    row = {column: "" for column in TABLE_COLUMNS}
    row.update(trial_id=trial.trial_id, status=outcome.status, variant=trial.variant)
    row.update(trial.overrides)
    for key in ("best_validation_loss", "best_step", "final_step", "seconds"):
        if result.get(key) is not None:
            row[key] = result[key]
    for column in ("ged", "oracle_ged"):
        value = _metric_mean(result, column)
        row[column] = "" if value is None else value
    row["workdir"] = outcome.workdir
    return row


def write_tables(root: str | os.PathLike, outcomes: Sequence[TrialResult]) -> tuple[Path, Path]:
    """``root/trials.csv`` (one row per trial) and ``root/trials.json`` (configs and results)."""
    root = Path(root)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS)
    writer.writeheader()
    writer.writerows(table_row(o) for o in outcomes)
    _write_text_atomic(root / TABLE_CSV, buffer.getvalue())
    records = [
        {
            "trial_id": o.trial.trial_id,
            "status": o.status,
            "variant": o.trial.variant,
            "overrides": o.trial.overrides,
            "workdir": o.workdir,
            "result": o.result,
            "config": o.trial.config,
        }
        for o in outcomes
    ]
    _write_json(root / TABLE_JSON, records)
    return root / TABLE_CSV, root / TABLE_JSON


def best_config_source(config: ml_collections.ConfigDict, comment: str = "") -> str:
    """Python source of a config file whose ``get_config()`` returns ``config``.

    The config is written as a Python literal (tuples stay tuples); raises ValueError if a value
    is not a plain literal.
    """
    literal = config.to_dict()
    text = pprint.pformat(literal, indent=1, width=96, sort_dicts=True)
    try:
        import ast

        if ast.literal_eval(text) != literal:
            raise ValueError("the literal does not round-trip")
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"The best config is not a plain Python literal: {e}") from e
    header = "\n".join(f"# {line}".rstrip() for line in comment.splitlines())
    return (
        f'"""The best config of a hyperparameter sweep (written by probunet_jax.sweep).\n\n'
        f"  python -m experiments.train --config=<this file> --workdir=...\n"
        f'"""\n\n{header}\n\nimport ml_collections\n\nCONFIG = {text}\n\n\n'
        "def get_config() -> ml_collections.ConfigDict:\n"
        "    return ml_collections.ConfigDict(CONFIG)\n"
    )


def write_best_config(
    path: str | os.PathLike, config: ml_collections.ConfigDict, comment: str = ""
) -> Path:
    """Writes :func:`best_config_source` to ``path``."""
    path = Path(path)
    _write_text_atomic(path, best_config_source(config, comment))
    return path


class SweepSummary(NamedTuple):
    """The outcome of a sweep.

    Attributes:
      outcomes: every trial's state.
      best: the winner (lowest best validation loss).
      validation: the winner's validation evaluation summary (None if not evaluated).
      files: the written files (tables, best.json, best_config.py).
    """

    outcomes: list[TrialResult]
    best: TrialResult
    validation: dict | None
    files: list[Path]


# Evaluates the winner on the validation split: (trial workdir) -> evaluation summary.
ValidationFn = Callable[[str], Mapping[str, Any]]
DEFAULT_NUM_SAMPLES = 16  # The paper's samples per image for the GED.


def evaluate_best_on_validation(workdir: str, num_samples: int = DEFAULT_NUM_SAMPLES) -> dict:
    """The validation summary of the best checkpoint in ``workdir`` (``evaluate_model``)."""
    from probunet_jax import checkpointing, evaluation

    config, _, variables = checkpointing.restore_best(workdir)
    return evaluation.evaluate_model(config, variables, split="validation", num_samples=num_samples)


def _validation_summary(result: Mapping[str, Any]) -> dict | None:
    """A trial's own evaluation summary if it evaluated on the validation split."""
    summary = result.get("evaluation")
    if isinstance(summary, Mapping) and "metrics" in summary:
        return dict(summary)
    return None


def finish(
    root: str | os.PathLike,
    outcomes: Sequence[TrialResult],
    *,
    base: ml_collections.ConfigDict | None = None,
    evaluate_winner: bool = True,
    validation_fn: ValidationFn | None = None,
) -> SweepSummary:
    """Writes the tables, selects the winner, gets its validation GED, writes the best files.

    The winner's validation summary is its own evaluation when trials evaluated (always on
    validation, see :func:`make_trials`), else ``validation_fn(workdir)`` (default
    :func:`evaluate_best_on_validation` with ``base.eval.num_samples`` samples).
    ``best_config.py`` is the winner's config with ``base``'s eval section.
    """
    root = Path(root)
    files = list(write_tables(root, outcomes))
    best = select_best(outcomes)
    validation = _validation_summary(best.result)
    if validation is None and evaluate_winner:
        if validation_fn is None:
            samples = int(base.eval.num_samples) if base is not None else 0
            samples = samples or DEFAULT_NUM_SAMPLES
            validation_fn = functools.partial(evaluate_best_on_validation, num_samples=samples)
        validation = dict(_canonical(validation_fn(best.workdir)))
    ged = None if validation is None else _metric_mean({"v": validation}, "ged")
    oracle = None if validation is None else _metric_mean({"v": validation}, "oracle_ged")
    _write_json(
        root / BEST_JSON,
        {
            "trial_id": best.trial.trial_id,
            "variant": best.trial.variant,
            "overrides": best.trial.overrides,
            SELECTION_METRIC: best.result.get(SELECTION_METRIC),
            "validation_ged": ged,
            "validation_oracle_ged": oracle,
            "validation": validation,
            "workdir": best.workdir,
        },
    )
    comment = (
        f"Winner of {len(outcomes)} trials in {root}: {best.trial.trial_id}\n"
        f"{SELECTION_METRIC} = {best.result.get(SELECTION_METRIC)}, validation GED = {ged}"
        f" (oracle {oracle})\nsearched values: {json.dumps(best.trial.overrides, sort_keys=True)}"
    )
    config = release_config(best.trial, base)
    files += [root / BEST_JSON, write_best_config(root / BEST_CONFIG, config, comment)]
    return SweepSummary(list(outcomes), best, validation, files)


# --------------------------------------------------------------------------- chunked training


def chunk_schedule(num_steps: int, chunk_steps: int) -> list[int]:
    """Step targets of a trial trained in chunks: chunk_steps, 2·chunk_steps, …, num_steps."""
    if num_steps < 1 or chunk_steps < 1:
        raise ValueError(f"num_steps and chunk_steps must be >= 1, got {num_steps}, {chunk_steps}.")
    return [*range(chunk_steps, num_steps, chunk_steps), num_steps]


def run_chunked(
    trial: Trial, root: str | os.PathLike, trial_fn: TrialFn, chunk_steps: int
) -> Iterator[dict[str, Any]]:
    """Trains a trial chunk by chunk, yielding its results after each chunk.

    Chunk ``k`` calls ``trial_fn`` with ``train.num_steps`` = the k-th target of
    :func:`chunk_schedule` in the same workdir, so training resumes from the trial's latest
    checkpoint (``train.num_steps`` may change between runs of a workdir). Partial results go to
    ``progress.json``, the last to ``result.json``; a finished trial yields its result once.
    """
    loaded = load_trial(root, trial)
    if loaded.status == "finished":
        yield loaded.result
        return
    folder = trial_dir(root, trial)
    targets = chunk_schedule(int(trial.config.train.num_steps), chunk_steps)
    start = time.perf_counter()
    for target in targets:
        config = ml_collections.ConfigDict(trial.config.to_dict())
        config.train.num_steps = target
        config.eval.num_samples = 0  # Only the last chunk runs the trial's evaluation.
        if target == targets[-1]:
            yield run_trial(trial, root, trial_fn).result  # The full config: its own result.
            return
        result = dict(_canonical(trial_fn(config, str(folder))))
        result["seconds"] = round(time.perf_counter() - start, 3)
        _write_json(folder / PROGRESS_FILE, result)
        yield result


# --------------------------------------------------------------------------- Ray Tune


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


def default_chunk_steps(config: ml_collections.ConfigDict) -> int:
    """Steps between Ray reports: ``train.eval_every_steps``, or one epoch when that is 0
    (one pass over ``data.num_train`` examples; a tenth of the run for LIDC)."""
    every = int(config.train.eval_every_steps)
    if every > 0:
        return every
    if config.data.name == "synthetic":
        return max(1, int(config.data.num_train) // int(config.train.batch_size))
    return max(1, int(config.train.num_steps) // 10)


def with_absolute_paths(trial: Trial) -> Trial:
    """The trial with ``data.data_dir`` and ``data.manual_dir`` made absolute (from this
    process's working directory): Ray runs trials in other working directories. The id stays."""
    config = ml_collections.ConfigDict(trial.config.to_dict())
    for field in ("data_dir", "manual_dir"):
        if config.data.get(field):
            config.data[field] = os.path.abspath(os.path.expanduser(config.data[field]))
    return trial._replace(config=config)


def _ray_trainable(trials: dict[str, Trial], root: str, trial_fn: TrialFn, chunk_steps: int):
    def trainable(params: dict) -> None:
        tune = import_ray_tune()
        trial = trials[params["trial_id"]]
        for result in run_chunked(trial, root, trial_fn, chunk_steps):
            tune.report({k: v for k, v in result.items() if isinstance(v, int | float)})

    return trainable


def run_ray(
    trials: Sequence[Trial],
    root: str | os.PathLike,
    trial_fn: TrialFn,
    options: RayOptions | None = None,
) -> list[TrialResult]:
    """Runs the trials with Ray Tune and an ASHA scheduler on the best validation loss.

    Every trial reports after each chunk of ``options.chunk_steps`` steps (a Tune iteration);
    ASHA stops the worse trials at its rungs (those keep ``progress.json``, status "stopped").
    Trials write to ``root/trials/<id>``, so on a multi-node cluster ``root`` must be shared
    storage. Finished trials are not re-run. Returns every trial's state read from disk.
    Checked with Ray 2.60 (``tests/test_sweep.py::test_ray_backend_tiny``, skipped without Ray).
    """
    options = RayOptions() if options is None else options
    tune = import_ray_tune()
    import ray
    from ray.tune.schedulers import ASHAScheduler

    if not trials:
        raise ValueError("Empty search space: no trials to run.")
    root = os.path.abspath(root)
    steps = int(trials[0].config.train.num_steps)
    chunk = options.chunk_steps or default_chunk_steps(trials[0].config)
    num_chunks = len(chunk_schedule(steps, chunk))
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    trainable = tune.with_resources(
        _ray_trainable({t.trial_id: with_absolute_paths(t) for t in trials}, root, trial_fn, chunk),
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
        param_space={"trial_id": tune.grid_search([t.trial_id for t in trials])},
        tune_config=tune.TuneConfig(
            metric=SELECTION_METRIC,
            mode="min",
            scheduler=scheduler,
            max_concurrent_trials=options.max_concurrent or None,
        ),
        run_config=tune.RunConfig(name="ray", storage_path=root, verbose=1),
    )
    grid = tuner.fit()
    for error in grid.errors:
        print(f"A Ray trial failed: {error}")
    return [load_trial(root, t) for t in trials]


def run(
    trials: Sequence[Trial],
    root: str | os.PathLike,
    trial_fn: TrialFn,
    *,
    backend: str = "local",
    ray_options: RayOptions | None = None,
) -> list[TrialResult]:
    """Runs the trials with ``backend`` ('local' or 'ray')."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; expected one of {BACKENDS}.")
    if not trials:
        raise ValueError("Empty search space: no trials to run.")
    if backend == "ray":
        return run_ray(trials, root, trial_fn, ray_options)
    return run_local(trials, root, trial_fn)


def run_sweep(
    base: ml_collections.ConfigDict,
    variant: str,
    root: str | os.PathLike,
    *,
    space: SearchSpace = PAPER_SEARCH_SPACE,
    num_random: int = 1,
    seed: int = 0,
    backend: str = "local",
    trial_fn: TrialFn | None = None,
    ray_options: RayOptions | None = None,
    evaluate_trials: bool = False,
    evaluate_winner: bool = True,
    validation_fn: ValidationFn | None = None,
) -> SweepSummary:
    """The whole search: make the trials, run them with ``backend``, write tables and winner.

    ``trial_fn`` defaults to ``probunet_jax.train.train_and_evaluate`` (what
    ``experiments/train.py`` runs). Re-running with the same arguments resumes.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; expected one of {BACKENDS}.")
    if trial_fn is None:
        from probunet_jax import train

        trial_fn = train.train_and_evaluate
    trials = make_trials(
        base, variant, space, num_random=num_random, seed=seed, evaluate_trials=evaluate_trials
    )
    outcomes = run(trials, root, trial_fn, backend=backend, ray_options=ray_options)
    return finish(
        root, outcomes, base=base, evaluate_winner=evaluate_winner, validation_fn=validation_fn
    )
