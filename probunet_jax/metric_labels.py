"""The one table of metric names: display label and direction.

Keys are the per-image columns of ``per_image.csv`` (``probunet_jax.metrics``,
``probunet_jax.calibration``, ``probunet_jax.truth``) and ``presence_ece``, the ECE of the
presence reliability curve. The oracle's columns on the synthetic set are ``oracle_<name>``:
labelled ``"oracle <label>"``, with the same direction. Reporting tables, figures and
``experiments/evaluate.py`` take their labels from here; the Wilcoxon tests their direction.
"""

from __future__ import annotations

from typing import NamedTuple

ORACLE_PREFIX = "oracle_"


class MetricLabel(NamedTuple):
    """How a metric is shown and compared."""

    label: str
    lower_is_better: bool | None  # None: neither (a GED term, the raters' own spread, a rate)


LABELS: dict[str, MetricLabel] = {
    "ged": MetricLabel("GED", True),
    "sample_annotation_distance": MetricLabel("E[d(S, Y)]", None),
    "sample_diversity": MetricLabel("E[d(S, S')]", None),
    "annotation_diversity": MetricLabel("E[d(Y, Y')]", None),
    "hungarian_iou": MetricLabel("Hungarian IoU", False),
    "ncc": MetricLabel("NCC", False),
    "dice": MetricLabel("Dice (mean masks)", False),
    "rater_ece": MetricLabel("ECE vs raters", True),
    "rater_brier": MetricLabel("Brier vs raters", True),
    "ci_score": MetricLabel("CI score", False),
    "combined_sensitivity": MetricLabel("combined sensitivity", False),
    "max_dice": MetricLabel("max Dice", False),
    "diversity_agreement": MetricLabel("diversity agreement", False),
    "truth_ece": MetricLabel("ECE vs truth", True),
    "truth_brier": MetricLabel("Brier vs truth", True),
    "presence_rate": MetricLabel("presence rate", None),
    "presence_probability": MetricLabel("true presence probability", None),
    "presence_ece": MetricLabel("presence ECE", True),
    "mode_tvd": MetricLabel("mode TVD", True),
    "posterior_choice_accuracy": MetricLabel("posterior choice accuracy", False),
}


def _entry(name: str) -> tuple[str, MetricLabel]:
    """(prefix, entry) of a metric name; ValueError naming an unknown one."""
    base = name.removeprefix(ORACLE_PREFIX)
    if base not in LABELS:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(LABELS)} (or oracle_<name>)")
    return ("oracle " if base != name else ""), LABELS[base]


def label(name: str) -> str:
    """The display label of a metric, e.g. ``'ged'`` -> ``'GED'``, ``'oracle_ged'`` ->
    ``'oracle GED'``."""
    prefix, entry = _entry(name)
    return prefix + entry.label


def lower_is_better(name: str) -> bool | None:
    """True if lower values are better, False if higher are, None if neither."""
    return _entry(name)[1].lower_is_better


def known(name: str) -> bool:
    """Whether ``name`` (or the name without ``oracle_``) is in the table."""
    return name.removeprefix(ORACLE_PREFIX) in LABELS
