"""Evaluation files, their summaries and the model comparison (Table 1, Wilcoxon tests, figures).

Format of ``<workdir>/eval/`` (this module owns it; write it with :func:`write_evaluation`):

* ``per_image.csv``: one row per test image, columns ``index`` (int, the test-set index)
  followed by the metric columns :data:`METRICS` (float) and any extras: the calibration and
  CI-score columns of ``calibration.calibration_metrics``, on synthetic data the truth columns
  of ``truth.truth_metrics`` (with ``scenario``) and the oracle's ``oracle_*`` columns.
* ``samples.npz``: ``images`` [K,H,W] float32, ``annotations`` [K,A,H,W] uint8, ``samples``
  [K,S,H,W] uint8, ``indices`` [K] int64 for a few test images (same indices for all models).
* ``summary.json``: ``{"model": str, "num_samples": int, "num_images": int, "metrics":
  {column: {"mean", "std", "median", "count"}}, "by_scenario": {scenario: {"num_images",
  "metrics": {column: stats}}}, "reliability": {curve: {"predicted", "observed", "count",
  "ece"}}}``. Stats are over ``per_image.csv`` (NaN-aware; std with ddof=0; ``count`` is the
  number of finite values; null when there are none). ``by_scenario`` (synthetic data: empty,
  single, pair) holds :data:`SCENARIO_COLUMNS`, ``{}`` elsewhere. ``reliability`` holds the
  reliability curves the evaluation gives (``calibration.ReliabilityCurve`` as lists of
  :data:`calibration.NUM_BINS` bins, NaN as null): ``rater_pixel``, and on synthetic data
  ``truth_pixel``, ``presence``, ``oracle_truth_pixel``, ``oracle_presence``. Written last,
  so its presence marks a complete evaluation.

Every file is written with :func:`probunet_jax.files.write_atomic`. Metric labels and the
direction of the Wilcoxon tests come from :mod:`probunet_jax.metric_labels`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from probunet_jax import files, metric_labels, plots, truth
from probunet_jax.calibration import ReliabilityCurve
from probunet_jax.metric_labels import ORACLE_PREFIX

EVAL_DIR = "eval"
PER_IMAGE_FILE = "per_image.csv"
SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "samples.npz"
METRICS = (
    "ged",
    "sample_annotation_distance",
    "sample_diversity",
    "annotation_diversity",
    "hungarian_iou",
    "ncc",
    "dice",
)
ORACLE_GED = "oracle_ged"
SCENARIO_COLUMNS = (
    "ged",
    "sample_annotation_distance",
    "sample_diversity",
    "annotation_diversity",
    ORACLE_GED,
    "mode_tvd",
    "posterior_choice_accuracy",
)
# The truth-metrics table of the comparison (means, ``presence_ece`` from the presence curve).
TRUTH_COLUMNS = (
    "truth_ece",
    "truth_brier",
    "mode_tvd",
    "posterior_choice_accuracy",
    "presence_ece",
    "rater_ece",
    "rater_brier",
    "ci_score",
    "combined_sensitivity",
    "max_dice",
    "diversity_agreement",
)
DPI = 110


class Examples(NamedTuple):
    """Sample grids of a few test images (Fig. 4)."""

    images: np.ndarray  # [K, H, W] float32
    annotations: np.ndarray  # [K, A, H, W] uint8
    samples: np.ndarray  # [K, S, H, W] uint8
    indices: np.ndarray  # [K] int64


class Evaluation(NamedTuple):
    """One model's evaluation as read back from ``<workdir>/eval``."""

    model: str
    num_samples: int
    per_image: pd.DataFrame  # indexed and sorted by test-set ``index``
    examples: Examples
    summary: dict  # the content of summary.json


class Comparison(NamedTuple):
    """Tables of :func:`compare` (DataFrames) and the files it wrote."""

    ged_table: pd.DataFrame
    wilcoxon_table: pd.DataFrame | None  # None for a single model
    truth_table: pd.DataFrame | None  # None when no evaluation has those columns
    files: list[Path]


# --------------------------------------------------------------------------- summaries


def _per_image_frame(per_image: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Validated per-image table: ``index`` + METRICS (+ extras), one row per image."""
    missing = [c for c in ("index", *METRICS) if c not in per_image]
    if missing:
        raise ValueError(f"per_image lacks columns {missing}; got {sorted(per_image)}")
    columns = {name: np.asarray(values) for name, values in per_image.items()}
    shapes = {name: v.shape for name, v in columns.items()}
    if len(set(shapes.values())) != 1 or columns["index"].ndim != 1:
        raise ValueError(f"per_image columns must be 1-D of one length, got shapes {shapes}")
    index = columns.pop("index")
    if not np.issubdtype(index.dtype, np.integer) or len(np.unique(index)) != len(index):
        raise ValueError(f"per_image['index'] must be unique integers, got {index}")
    frame = pd.DataFrame(columns, index=pd.Index(index.astype(np.int64), name="index"))
    ordered = list(METRICS) + [c for c in frame.columns if c not in METRICS]
    return frame[ordered].astype(np.float64).sort_index()


def _check_examples(examples: Examples) -> None:
    images, annotations, samples, indices = (np.asarray(a) for a in examples)
    if not (
        (annotations.ndim, samples.ndim, indices.ndim) == (4, 4, 1)
        and images.ndim in (3, 4)
        and images.shape[0] == annotations.shape[0] == samples.shape[0] == indices.shape[0]
        and images.shape[1:3] == annotations.shape[2:] == samples.shape[2:]
    ):
        raise ValueError(
            "expected images [K,H,W(,C)], annotations [K,A,H,W], samples [K,S,H,W], indices [K]; "
            f"got {images.shape}, {annotations.shape}, {samples.shape}, {indices.shape}"
        )


def _stat_summary(values: np.ndarray) -> dict[str, float | int | None]:
    """NaN-aware mean, std (ddof=0) and median plus the count of finite values."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "std": None, "median": None, "count": 0}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "median": float(np.median(finite)),
        "count": int(finite.size),
    }


def _by_scenario(frame: pd.DataFrame) -> dict[str, dict]:
    """Stats of SCENARIO_COLUMNS per scenario of a per-image table ({} without ``scenario``)."""
    if "scenario" not in frame:
        return {}
    names = ["scenario", *(c for c in SCENARIO_COLUMNS if c in frame)]
    groups = truth.split_by_scenario({c: frame[c].to_numpy() for c in names})
    return {
        scenario: {
            "num_images": len(rows["scenario"]),
            "metrics": {c: _stat_summary(rows[c]) for c in names[1:]},
        }
        for scenario, rows in groups.items()
    }


def _null_nan(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64)]


def _curve_json(curve: ReliabilityCurve) -> dict[str, object]:
    """A reliability curve as JSON (lists; NaN as null)."""
    predicted, observed, count, ece = (_null_nan(np.ravel(v)) for v in curve)
    return {"predicted": predicted, "observed": observed, "count": count, "ece": ece[0]}


def reliability_curves(summary: Mapping) -> dict[str, ReliabilityCurve]:
    """The reliability curves of a summary (null as NaN); {} for a summary without them."""
    nan = lambda values: np.array(values, np.float64)  # noqa: E731 (None -> nan)
    return {
        name: ReliabilityCurve(
            nan(c["predicted"]), nan(c["observed"]), nan(c["count"]), float(nan(c["ece"]))
        )
        for name, c in summary.get("reliability", {}).items()
    }


def summarize(
    model: str,
    per_image: Mapping[str, np.ndarray],
    *,
    num_samples: int,
    reliability: Mapping[str, ReliabilityCurve] | None = None,
) -> dict[str, object]:
    """The content of ``summary.json`` (module docstring) from the per-image columns `[N]` and
    the reliability curves by name."""
    frame = _per_image_frame(per_image)
    return {
        "model": model,
        "num_samples": int(num_samples),
        "num_images": len(frame),
        "metrics": {name: _stat_summary(frame[name].to_numpy()) for name in frame.columns},
        "by_scenario": _by_scenario(frame),
        "reliability": {name: _curve_json(c) for name, c in (reliability or {}).items()},
    }


def write_evaluation(
    workdir: str | os.PathLike,
    model: str,
    per_image: Mapping[str, np.ndarray],
    examples: Examples,
    *,
    num_samples: int,
    reliability: Mapping[str, ReliabilityCurve] | None = None,
) -> Path:
    """Writes ``per_image.csv``, ``samples.npz`` and ``summary.json`` into ``workdir/eval``.

    ``per_image`` maps column names to [N] arrays: ``index`` and every name in METRICS
    (e.g. from :func:`probunet_jax.metrics.evaluate_images`), optional extras such as
    ``oracle_ged``; ``reliability`` the curves of the summary. Returns the eval folder.
    """
    frame = _per_image_frame(per_image)
    _check_examples(examples)
    summary = summarize(model, per_image, num_samples=num_samples, reliability=reliability)
    out = Path(workdir) / EVAL_DIR
    arrays = {
        "images": np.asarray(examples.images, np.float32),
        "annotations": np.asarray(examples.annotations, np.uint8),
        "samples": np.asarray(examples.samples, np.uint8),
        "indices": np.asarray(examples.indices, np.int64),
    }
    files.write_atomic(out / SAMPLES_FILE, lambda f: np.savez_compressed(f, **arrays))
    files.write_atomic(out / PER_IMAGE_FILE, frame.to_csv())
    files.write_json(out / SUMMARY_FILE, summary, allow_nan=False)
    return out


# --------------------------------------------------------------------------- reading


def load_evaluation(workdir: str | os.PathLike) -> Evaluation:
    """Reads ``workdir/eval``; FileNotFoundError naming the missing files."""
    folder = Path(workdir) / EVAL_DIR
    names = (SUMMARY_FILE, PER_IMAGE_FILE, SAMPLES_FILE)
    missing = [f for f in names if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} has no complete evaluation (missing {', '.join(missing)}); "
            "run the evaluation step for this workdir first"
        )
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    per_image = pd.read_csv(folder / PER_IMAGE_FILE, index_col="index").sort_index()
    with np.load(folder / SAMPLES_FILE) as npz:
        examples = Examples(*(npz[name] for name in Examples._fields))
    return Evaluation(summary["model"], int(summary["num_samples"]), per_image, examples, summary)


def check_same_images(evaluations: Sequence[Evaluation]) -> None:
    """ValueError unless all models were evaluated on the same test images and examples."""
    first = evaluations[0]
    for other in evaluations[1:]:
        a, b = first.per_image.index, other.per_image.index
        if not a.equals(b):
            only_a, only_b = a.difference(b), b.difference(a)
            raise ValueError(
                f"models {first.model!r} ({len(a)} images) and {other.model!r} ({len(b)} images) "
                f"were evaluated on different image sets: {len(only_a)} indices only in the "
                f"first (e.g. {list(only_a[:5])}), {len(only_b)} only in the second "
                f"(e.g. {list(only_b[:5])})"
            )
        if not np.array_equal(first.examples.indices, other.examples.indices):
            raise ValueError(
                f"sample grids of {first.model!r} and {other.model!r} show different images: "
                f"{first.examples.indices.tolist()} vs {other.examples.indices.tolist()}"
            )


def load_evaluations(workdirs: Sequence[str | os.PathLike]) -> list[Evaluation]:
    """Loads several workdirs; ValueError on duplicate model names or differing image sets."""
    if not workdirs:
        raise ValueError("no workdirs given")
    evaluations = [load_evaluation(w) for w in workdirs]
    names = [e.model for e in evaluations]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique across workdirs, got {names}")
    check_same_images(evaluations)
    return evaluations


# --------------------------------------------------------------------------- tables


def ged_table(evaluations: Sequence[Evaluation], metric: str = "ged") -> pd.DataFrame:
    """Table 1: per model ``num_images``, ``mean``, ``std`` (ddof=0) and ``median`` of a metric."""
    rows = []
    for e in evaluations:
        summary = _stat_summary(e.per_image[metric].to_numpy())
        rows.append({"model": e.model, "num_images": summary.pop("count"), **summary})
    return pd.DataFrame(rows)


def _wilcoxon_row(a: Evaluation, b: Evaluation, metric: str, sign: float, alpha: float) -> dict:
    """One pair of :func:`wilcoxon_table`; ``sign`` 1 if lower is better, -1 if higher is."""
    x, y = a.per_image[metric].to_numpy(), b.per_image[metric].to_numpy()
    both = np.isfinite(x) & np.isfinite(y)
    if not both.any():
        raise ValueError(f"no image has a finite {metric!r} for both {a.model!r} and {b.model!r}")
    x, y = x[both], y[both]
    diff = x - y
    if np.all(diff == 0):
        statistic, p_value = 0.0, 1.0
    else:
        result = stats.wilcoxon(x, y)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    median = float(np.median(diff))
    better = a.model if sign * median < 0 else b.model if sign * median > 0 else "tie"
    return {
        "model_a": a.model,
        "model_b": b.model,
        "num_images": len(diff),
        "statistic": statistic,
        "p_value": p_value,
        "significant": p_value < alpha,
        "median_difference": median,
        "better": better,
    }


def wilcoxon_table(
    evaluations: Sequence[Evaluation], metric: str = "ged", alpha: float = 0.05
) -> pd.DataFrame:
    """Two-sided Wilcoxon signed-rank test for every model pair, images paired by ``index``.

    Images where a model's value is NaN are left out (``num_images`` counts the others).
    ``median_difference`` is the median of ``a - b``. ``better`` follows the metric's
    direction (``metric_labels.lower_is_better``): where lower is better (GED) it is ``a``
    when the median is negative and ``b`` when positive, where higher is better (CI score)
    the reverse; ``"tie"`` at zero. ``significant`` is ``p_value < alpha``. All-zero
    differences give statistic 0 and p-value 1.
    """
    lower = metric_labels.lower_is_better(metric)
    if lower is None:
        raise ValueError(f"{metric!r} has no better direction: the Wilcoxon table needs one")
    if len(evaluations) < 2:
        raise ValueError(
            f"the Wilcoxon test needs at least 2 models, got {[e.model for e in evaluations]}"
        )
    lacking = [e.model for e in evaluations if metric not in e.per_image]
    if lacking:
        raise ValueError(f"models {lacking} have no per-image column {metric!r}")
    check_same_images(evaluations)
    sign = 1.0 if lower else -1.0
    pairs = itertools.combinations(evaluations, 2)
    return pd.DataFrame([_wilcoxon_row(a, b, metric, sign, alpha) for a, b in pairs])


def _mean(summary: Mapping, column: str) -> float:
    """``summary['metrics'][column]['mean']``, NaN when absent or null."""
    value = summary["metrics"].get(column)
    return np.nan if value is None or value["mean"] is None else value["mean"]


def ged_breakup_table(summary: Mapping) -> pd.DataFrame:
    """The GED and its terms (rows, labelled), model vs oracle (columns), from a summary.

    The oracle's columns (synthetic data; no oracle column elsewhere) are ``oracle_<term>``;
    E[d(Y, Y')] is shared.
    """
    with_oracle = ORACLE_PREFIX + "ged" in summary.get("metrics", {})
    rows = {}
    for column in SCENARIO_COLUMNS[:4]:
        oracle = column if column == "annotation_diversity" else ORACLE_PREFIX + column
        rows[metric_labels.label(column)] = {"model": _mean(summary, column)}
        if with_oracle:
            rows[metric_labels.label(column)]["oracle"] = _mean(summary, oracle)
    return pd.DataFrame.from_dict(rows, orient="index")


def _truth_row(name: str, summary: Mapping, prefix: str = "") -> dict[str, object]:
    """A row of :func:`truth_table` from a summary: the model's (``prefix=''``) or the
    oracle's (``prefix='oracle_'``) columns."""
    curves = summary.get("reliability", {})
    row: dict[str, object] = {"model": name}
    for column in TRUTH_COLUMNS:
        if column == "presence_ece":
            presence = curves.get(prefix + "presence", {"ece": None})["ece"]
            row[column] = np.nan if presence is None else presence
        else:
            row[column] = _mean(summary, prefix + column)
    for scenario, group in summary.get("by_scenario", {}).items():
        row[f"ged_{scenario}"] = _mean(group, prefix + "ged")
    return row


def truth_table(evaluations: Sequence[Evaluation]) -> pd.DataFrame | None:
    """The truth metrics per model (means of TRUTH_COLUMNS, the presence curve's ECE, the GED
    per scenario ``ged_<scenario>``), and an ``oracle`` reference row from the first model's
    ``oracle_*`` columns where present. Columns without any value are dropped; None if none
    is left."""
    rows = [_truth_row(e.model, e.summary) for e in evaluations]
    first = evaluations[0].summary
    if ORACLE_GED in first["metrics"]:
        rows.append(_truth_row("oracle", first, ORACLE_PREFIX))
    table = pd.DataFrame(rows).dropna(axis=1, how="all")
    return None if table.shape[1] == 1 else table


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.4g}" if np.isfinite(value) else "n/a"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub-style Markdown of a DataFrame (floats with 4 significant digits, NaN as n/a)."""
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join([header, rule, *rows]) + "\n"


def ged_markdown(table: pd.DataFrame) -> str:
    """Table 1 as in the paper: ``Model | GED (mean ± std-dev) | N``."""
    ged = [f"{m:.3f} ± {s:.3f}" for m, s in zip(table["mean"], table["std"], strict=True)]
    shown = pd.DataFrame(
        {"Model": table["model"], "GED (mean ± std-dev)": ged, "N": table["num_images"]}
    )
    return to_markdown(shown)


def _column_label(column: str) -> str:
    """Display label of a table column: metrics, ``ged_<scenario>``, others as they are."""
    if column.startswith("ged_") and column[4:] in truth.SCENARIOS:
        return f"{metric_labels.label('ged')} ({column[4:]})"
    return metric_labels.label(column) if metric_labels.known(column) else column


def labelled_markdown(table: pd.DataFrame) -> str:
    """Markdown of a table whose columns are metric names, headed by their labels."""
    return to_markdown(table.rename(columns=_column_label))


def _number(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4f}"


def summary_markdown(summary: Mapping) -> str:
    """Markdown tables of a summary: every labelled metric (mean ± std, median, n); on
    synthetic data the means per scenario; the ECE of each reliability curve."""
    metrics = summary["metrics"]
    names = [*metric_labels.LABELS, *(ORACLE_PREFIX + n for n in metric_labels.LABELS)]
    rows = [
        {
            "metric": metric_labels.label(n),
            "mean ± std": f"{_number(metrics[n]['mean'])} ± {_number(metrics[n]['std'])}",
            "median": _number(metrics[n]["median"]),
            "n": metrics[n]["count"],
        }
        for n in names
        if n in metrics
    ]
    text = to_markdown(pd.DataFrame(rows))
    scenarios = summary.get("by_scenario", {})
    if scenarios:
        means = [
            {"scenario": s, "num_images": g["num_images"]} | {c: _mean(g, c) for c in g["metrics"]}
            for s, g in scenarios.items()
        ]
        text += "\nMeans per scenario\n\n" + labelled_markdown(pd.DataFrame(means))
    curves = reliability_curves(summary)
    if curves:
        ece = [{"curve": n, "ECE": c.ece, "binned": c.count.sum()} for n, c in curves.items()]
        text += "\nReliability (ECE over all pixels or images)\n\n" + to_markdown(pd.DataFrame(ece))
    return text


# --------------------------------------------------------------------------- comparison


def _write_table(table: pd.DataFrame, markdown: str, stem: Path) -> list[Path]:
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    files.write_atomic(csv_path, table.to_csv(index=False))
    files.write_atomic(md_path, markdown)
    return [csv_path, md_path]


def _save(figure: Figure, path: Path) -> Path:
    files.write_atomic(path, lambda f: figure.savefig(f, format="png", dpi=DPI))
    return path


def _reliability(evaluations: Sequence[Evaluation], kind: str) -> dict[str, ReliabilityCurve]:
    """Each model's curve of a kind, and the oracle's (``oracle_<kind>``) of the first model."""
    curves = {e.model: reliability_curves(e.summary).get(kind) for e in evaluations}
    curves["oracle"] = reliability_curves(evaluations[0].summary).get(ORACLE_PREFIX + kind)
    return {name: curve for name, curve in curves.items() if curve is not None}


def _figures(evaluations: Sequence[Evaluation], out: Path) -> list[Path]:
    """Fig. 2-4 and the reliability diagrams (where the summaries have curves) as PNG."""
    per_image = {e.model: e.per_image for e in evaluations}
    figures = {
        "fig2_ged_letter_values": plots.ged_letter_values(
            {model: frame["ged"] for model, frame in per_image.items()}
        ),
        "fig3_ged_breakup": plots.ged_breakup(per_image),
    }
    shown = evaluations[0].examples
    for k, index in enumerate(shown.indices):
        samples = {e.model: e.examples.samples[k] for e in evaluations}
        figures[f"fig4_samples_{index}"] = plots.sample_grid(
            shown.images[k], shown.annotations[k], samples, f"image {index}"
        )
    for kind in plots.RELIABILITY_AXES:
        curves = _reliability(evaluations, kind)
        if curves:
            figures[f"reliability_{kind}"] = plots.reliability_diagram(curves, kind)
    return [_save(figure, out / f"{name}.png") for name, figure in figures.items()]


def compare(workdirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Comparison:
    """Writes into ``out``: Table 1 (``table1_ged``), the Wilcoxon tests on GED
    (``wilcoxon_ged``, >= 2 models), the truth metrics (``truth_metrics``, where the
    evaluations have them), each as CSV and Markdown; Fig. 2-4 and the reliability diagrams
    ``reliability_<curve>.png`` (one curve per model, the oracle's where present)."""
    evaluations = load_evaluations(workdirs)
    out = Path(out)
    table = ged_table(evaluations)
    written = _write_table(table, ged_markdown(table), out / "table1_ged")
    tests = None
    if len(evaluations) > 1:
        tests = wilcoxon_table(evaluations)
        written += _write_table(tests, to_markdown(tests), out / "wilcoxon_ged")
    metrics = truth_table(evaluations)
    if metrics is not None:
        written += _write_table(metrics, labelled_markdown(metrics), out / "truth_metrics")
    written += _figures(evaluations, out)
    return Comparison(table, tests, metrics, written)
