"""Model selection: every trial's validation GED, and the winner by that GED (or by the loss).

The paper keeps the best performing of its trials. Its measure of performance is the GED, the
generalized energy distance between the masks a model samples from its prior and the image's
annotations, the same measure for any two models. The validation loss cannot stand in for it:
it is the negative β-ELBO, reconstruction + β·KL, so a trial with β = 10 counts its KL ten
times as much as a trial with β = 1, and a trial with β = 100 a hundred times. The losses of
different β are different objectives on different scales; with the KL ≥ 0, the lowest loss is
(all but) always a β = 1 trial, whatever its samples are like, and the β axis of Table 2 is
dead. The loss is also computed with latents drawn from the posterior (which sees the
annotation), not from the prior that draws the masks at test time. So each trial's best
checkpoint (the lowest validation loss within the trial: for one β the loss does order the
checkpoints) is evaluated on the validation split, ``evaluation.evaluate_model(config,
variables, split='validation', num_samples=N)``, and the winner is the trial with the lowest
validation GED (``select_by='ged'``, the default; ``'loss'`` keeps the loss). Ray's ASHA
scheduler compares trials by the same metric after every chunk of training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from probunet_jax import checkpointing, evaluation
from probunet_jax.search import trials as trials_lib

# --select_by -> the result key of the metric; the lower, the better.
METRICS = {"ged": "validation_ged", "loss": "best_validation_loss"}
DEFAULT_NUM_SAMPLES = 16  # The paper's samples per image for the GED.

# Evaluates a trained trial on the validation split: (trial workdir) -> evaluation summary
# (``summary['metrics']['ged']['mean']``, and ``'oracle_ged'`` where the data set has one).
ValidationFn = Callable[[str], Mapping[str, Any]]


def metric_name(select_by: str) -> str:
    """The result key that ``select_by`` ('ged' or 'loss') selects by."""
    if select_by not in METRICS:
        raise ValueError(f"Unknown select_by {select_by!r}; expected one of {list(METRICS)}.")
    return METRICS[select_by]


def evaluate_validation(workdir: str, num_samples: int = DEFAULT_NUM_SAMPLES) -> dict:
    """The validation summary of the best checkpoint in ``workdir`` (``evaluate_model``)."""
    config, _, variables = checkpointing.restore_best(workdir)
    return evaluation.evaluate_model(config, variables, split="validation", num_samples=num_samples)


def validation_columns(summary: Mapping[str, Any]) -> dict[str, Any]:
    """``validation_ged``, ``validation_oracle_ged`` (None without an oracle) and the summary
    (``validation``) of a validation evaluation."""
    metrics = summary["metrics"]
    oracle = metrics.get("oracle_ged")
    return {
        "validation_ged": metrics["ged"]["mean"],
        "validation_oracle_ged": None if oracle is None else oracle["mean"],
        "validation": dict(summary),
    }


def scored(train_fn: trials_lib.TrialFn, validation_fn: ValidationFn) -> trials_lib.TrialFn:
    """A trial function that trains with ``train_fn`` (``train.train_and_evaluate``'s contract:
    it returns at least ``best_validation_loss``), then adds :func:`validation_columns` of
    ``validation_fn(workdir)``."""

    def trial_fn(config, workdir: str) -> dict[str, Any]:
        result = dict(train_fn(config, workdir))
        if METRICS["loss"] not in result:
            raise ValueError(
                f"The trial function returned no {METRICS['loss']!r} (keys: {sorted(result)})."
            )
        return {**result, **validation_columns(validation_fn(workdir))}

    return trial_fn


def _value(outcome: trials_lib.TrialResult, metric: str) -> float:
    value = outcome.result.get(metric)
    return math.inf if value is None or not math.isfinite(float(value)) else float(value)


def select_best(outcomes: Sequence[trials_lib.TrialResult], metric: str) -> trials_lib.TrialResult:
    """The trial with the lowest finite ``metric`` (a value of :data:`METRICS`); ties: the
    earlier trial. Stopped (partial) trials compete with what they reached."""
    candidates = [o for o in outcomes if math.isfinite(_value(o, metric))]
    if not candidates:
        raise ValueError(
            f"No trial has a finite {metric}; {len(outcomes)} trials, statuses "
            f"{sorted({o.status for o in outcomes})}."
        )
    return min(candidates, key=lambda o: _value(o, metric))
