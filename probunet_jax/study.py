"""The quality study: how close each variant gets to the true annotation distribution.

On the synthetic set, whose annotation distribution is known, :func:`run` trains every variant
of a base config at a few training budgets (``<root>/<variant>/<budget>``: one run per budget,
so that a decaying learning rate schedule ends at its budget), with the validation GED logged
at every validation, evaluates each on the test split against the truth
(``evaluation.evaluate_model``: GED and its terms, the oracle's GED with as many samples,
pixel and presence calibration, mode coverage, CI score) and writes:

* ``study.md`` / ``study.csv``: one row per run: steps trained, training seconds (the sum of
  the logged intervals' steps / steps-per-second: compilation and evaluation excluded), the
  test GED, the oracle's, their ratio with its standard error, and the truth metrics;
* ``learning_curves.png``: validation GED / oracle GED against steps and training seconds.

Resumable: a run whose evaluation exists is skipped, an interrupted one resumes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import ml_collections
import pandas as pd

from probunet_jax import config as config_lib
from probunet_jax import files, pipeline, plots, reporting

TABLE_COLUMNS = (
    "truth_ece",
    "truth_brier",
    "mode_tvd",
    "posterior_choice_accuracy",
    "presence_rate",
    "presence_probability",
    "ci_score",
)


class StudyRun(NamedTuple):
    """One training run of the study."""

    variant: str
    budget: int
    workdir: str
    config: ml_collections.ConfigDict


def study_runs(
    base: ml_collections.ConfigDict,
    variants: Sequence[str],
    budgets: Sequence[int],
    root: str,
) -> list[StudyRun]:
    """The runs of the study, each config validated: ``base`` with each variant's latent
    settings and ``train.num_steps`` = each budget (``train.validation_samples`` at least 1)."""
    if base.data.name != "synthetic":
        raise ValueError(f"The study needs the synthetic set (its truth), got {base.data.name!r}.")
    if not budgets or min(budgets) < 1 or len(set(budgets)) != len(budgets):
        raise ValueError(f"budgets must be distinct step counts >= 1, got {list(budgets)}.")
    runs = []
    for variant, config in pipeline.variant_configs(base, variants).items():
        for budget in sorted(budgets):
            run_config = ml_collections.ConfigDict(config.to_dict())
            run_config.train.num_steps = int(budget)
            run_config.train.validation_samples = max(1, int(base.train.validation_samples))
            config_lib.validate(run_config)
            workdir = os.path.join(root, variant, str(budget))
            runs.append(StudyRun(variant, int(budget), workdir, run_config))
    return runs


def _metrics_lines(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def learning_curve(workdir: str) -> pd.DataFrame:
    """Validation rows of a run's ``metrics.jsonl`` with the training seconds up to them:
    columns ``step``, ``seconds``, ``ged``, ``loss``."""
    seconds, last_step, rows = 0.0, 0, []
    for line in _metrics_lines(workdir):
        if line["split"] == "train":
            seconds += (line["step"] - last_step) / line["steps_per_second"]
            last_step = line["step"]
        elif line["split"] == "validation":
            rows.append(
                dict(step=line["step"], seconds=seconds, ged=line["ged"], loss=line["loss"])
            )
    return pd.DataFrame(rows, columns=["step", "seconds", "ged", "loss"])


def _ratio(per_image: pd.DataFrame) -> tuple[float, float]:
    """Mean GED / mean oracle GED and its standard error (delta method over images)."""
    ged, oracle = per_image["ged"].to_numpy(), per_image[reporting.ORACLE_GED].to_numpy()
    ratio = ged.mean() / oracle.mean()
    residual = (ged - ratio * oracle) / oracle.mean()
    return float(ratio), float(residual.std(ddof=1) / math.sqrt(len(ged)))


def table_row(run: StudyRun) -> dict:
    """The study's row of an evaluated run."""
    per_image = reporting.load_evaluation(run.workdir).per_image
    curve = learning_curve(run.workdir)
    ratio, error = _ratio(per_image)
    row = {
        "variant": run.variant,
        "budget": run.budget,
        "steps": int(curve["step"].max()) if len(curve) else 0,
        "train_seconds": round(float(curve["seconds"].max()) if len(curve) else 0.0, 1),
        "ged": per_image["ged"].mean(),
        "oracle_ged": per_image[reporting.ORACLE_GED].mean(),
        "ged_ratio": ratio,
        "ged_ratio_se": error,
    }
    row.update({name: per_image[name].mean() for name in TABLE_COLUMNS if name in per_image})
    return row


def run(runs: Sequence[StudyRun], root: str) -> pd.DataFrame:
    """Trains and evaluates every run (skipping evaluated ones), then writes the table and the
    learning curves to ``root``; returns the table."""
    for i, study_run in enumerate(runs, start=1):
        print(f"[{i}/{len(runs)}] {study_run.variant}, {study_run.budget} steps", flush=True)
        pipeline.train_variant(study_run.config, study_run.workdir)
    table = pd.DataFrame([table_row(r) for r in runs])
    files.write_atomic(os.path.join(root, "study.csv"), table.to_csv(index=False))
    files.write_atomic(os.path.join(root, "study.md"), reporting.to_markdown(table.round(4)))
    curves = {f"{r.variant} ({r.budget})": learning_curve(r.workdir) for r in runs}
    oracle = float(table["oracle_ged"].mean())
    figure = plots.learning_curves(curves, reference=oracle)
    files.write_atomic(
        os.path.join(root, "learning_curves.png"), lambda f: figure.savefig(f, format="png")
    )
    return table
