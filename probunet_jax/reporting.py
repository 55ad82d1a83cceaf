"""Evaluation files and the model comparison of the paper (Table 1, Wilcoxon tests, Fig. 2-4).

Format of ``<workdir>/eval/`` (this module owns it; write it with :func:`write_evaluation`):

* ``per_image.csv``: one row per test image, columns ``index`` (int, the test-set index)
  followed by the metric columns :data:`METRICS` (float) and any extras such as
  ``oracle_ged`` on synthetic data.
* ``samples.npz``: ``images`` [K,H,W] float32, ``annotations`` [K,A,H,W] uint8, ``samples``
  [K,S,H,W] uint8, ``indices`` [K] int64 for a few test images (same indices for all models).
* ``summary.json``: ``{"model": str, "num_samples": int, "num_images": int, "metrics":
  {column: {"mean", "std", "median", "count"}}}`` over ``per_image.csv`` (NaN-aware; std with
  ddof=0; ``count`` is the number of finite values; null when there are none). Written last,
  so its presence marks a complete evaluation.

Every file is written to a temporary file in the same folder and renamed into place.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from scipy import stats

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


class Comparison(NamedTuple):
    """Tables of :func:`compare` (DataFrames) and the files it wrote."""

    ged_table: pd.DataFrame
    wilcoxon_table: pd.DataFrame | None  # None for a single model
    files: list[Path]


# --------------------------------------------------------------------------- writing


def _write_atomic(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Calls ``write`` on a temp file next to ``path``, then renames it to ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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
        (images.ndim, annotations.ndim, samples.ndim, indices.ndim) == (3, 4, 4, 1)
        and images.shape[0] == annotations.shape[0] == samples.shape[0] == indices.shape[0]
        and images.shape[1:] == annotations.shape[2:] == samples.shape[2:]
    ):
        raise ValueError(
            "expected images [K,H,W], annotations [K,A,H,W], samples [K,S,H,W], indices [K]; "
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


def summarize(
    model: str, per_image: Mapping[str, np.ndarray], *, num_samples: int
) -> dict[str, object]:
    """The content of ``summary.json``: mean ± std, median and count of every column."""
    frame = _per_image_frame(per_image)
    return {
        "model": model,
        "num_samples": int(num_samples),
        "num_images": len(frame),
        "metrics": {name: _stat_summary(frame[name].to_numpy()) for name in frame.columns},
    }


def write_evaluation(
    workdir: str | os.PathLike,
    model: str,
    per_image: Mapping[str, np.ndarray],
    examples: Examples,
    *,
    num_samples: int,
) -> Path:
    """Writes ``per_image.csv``, ``samples.npz`` and ``summary.json`` into ``workdir/eval``.

    ``per_image`` maps column names to [N] arrays: ``index`` and every name in METRICS
    (e.g. from :func:`probunet_jax.metrics.evaluate_images`), optional extras such as
    ``oracle_ged``. Returns the eval folder.
    """
    frame = _per_image_frame(per_image)
    _check_examples(examples)
    out = Path(workdir) / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    arrays = {
        "images": np.asarray(examples.images, np.float32),
        "annotations": np.asarray(examples.annotations, np.uint8),
        "samples": np.asarray(examples.samples, np.uint8),
        "indices": np.asarray(examples.indices, np.int64),
    }
    _write_atomic(out / SAMPLES_FILE, lambda f: np.savez_compressed(f, **arrays))
    _write_atomic(out / PER_IMAGE_FILE, lambda f: f.write(frame.to_csv().encode()))
    summary = summarize(model, per_image, num_samples=num_samples)
    _write_atomic(out / SUMMARY_FILE, lambda f: f.write(json.dumps(summary, indent=2).encode()))
    return out


# --------------------------------------------------------------------------- reading


def load_evaluation(workdir: str | os.PathLike) -> Evaluation:
    """Reads ``workdir/eval``; FileNotFoundError naming the missing files."""
    folder = Path(workdir) / EVAL_DIR
    files = (SUMMARY_FILE, PER_IMAGE_FILE, SAMPLES_FILE)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} has no complete evaluation (missing {', '.join(missing)}); "
            "run the evaluation step for this workdir first"
        )
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    per_image = pd.read_csv(folder / PER_IMAGE_FILE, index_col="index").sort_index()
    with np.load(folder / SAMPLES_FILE) as npz:
        examples = Examples(*(npz[name] for name in Examples._fields))
    return Evaluation(summary["model"], int(summary["num_samples"]), per_image, examples)


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


def wilcoxon_table(
    evaluations: Sequence[Evaluation], metric: str = "ged", alpha: float = 0.05
) -> pd.DataFrame:
    """Two-sided Wilcoxon signed-rank test for every model pair, images paired by ``index``.

    ``median_difference`` is the median of ``a - b``; as lower is better (GED), ``better``
    is ``a`` when it is negative, ``b`` when positive and ``"tie"`` at zero. ``significant``
    is ``p_value < alpha``. All-zero differences give statistic 0 and p-value 1.
    """
    if len(evaluations) < 2:
        raise ValueError(
            f"the Wilcoxon test needs at least 2 models, got {[e.model for e in evaluations]}"
        )
    check_same_images(evaluations)
    rows = []
    for a, b in itertools.combinations(evaluations, 2):
        x, y = a.per_image[metric].to_numpy(), b.per_image[metric].to_numpy()
        diff = x - y
        if np.all(diff == 0):
            statistic, p_value = 0.0, 1.0
        else:
            result = stats.wilcoxon(x, y)
            statistic, p_value = float(result.statistic), float(result.pvalue)
        median = float(np.median(diff))
        better = a.model if median < 0 else b.model if median > 0 else "tie"
        rows.append(
            {
                "model_a": a.model,
                "model_b": b.model,
                "num_images": len(diff),
                "statistic": statistic,
                "p_value": p_value,
                "significant": p_value < alpha,
                "median_difference": median,
                "better": better,
            }
        )
    return pd.DataFrame(rows)


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub-style Markdown of a DataFrame (floats with 4 significant digits)."""
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


# --------------------------------------------------------------------------- figures


def _long_frame(evaluations: Sequence[Evaluation], metric: str) -> pd.DataFrame:
    return pd.concat(
        [pd.DataFrame({"model": e.model, metric: e.per_image[metric]}) for e in evaluations],
        ignore_index=True,
    )


def plot_ged_letter_values(evaluations: Sequence[Evaluation], path: Path) -> Path:
    """Fig. 2: letter-value (boxen) plot of the per-image GED of each model."""
    fig = Figure(figsize=(1.6 * len(evaluations) + 2, 4), layout="constrained")
    ax = fig.subplots()
    sns.boxenplot(data=_long_frame(evaluations, "ged"), x="model", y="ged", hue="model", ax=ax)
    ax.set(xlabel="", ylabel="GED (per image)", title="Generalized energy distance")
    fig.savefig(path, dpi=120)
    return path


def plot_ged_breakup(evaluations: Sequence[Evaluation], path: Path) -> Path:
    """Fig. 3: mean E[d(S,Y)] and E[d(S,S')] per model (± s.e.m.) against E[d(Y,Y')].

    The right panel shows the mean GED per model with the oracle's GED as reference line when
    ``oracle_ged`` is in the per-image table.
    """
    terms = {"sample_annotation_distance": "E[d(S,Y)]", "sample_diversity": "E[d(S,S')]"}
    names = [e.model for e in evaluations]
    x = np.arange(len(evaluations))
    width = 0.8 / len(terms)
    fig = Figure(figsize=(2.2 * len(evaluations) + 4, 4), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    for i, (column, label) in enumerate(terms.items()):
        means = [e.per_image[column].mean() for e in evaluations]
        sems = [e.per_image[column].sem(ddof=0) for e in evaluations]
        left.bar(x + (i - 0.5) * width, means, width, yerr=sems, capsize=3, label=label)
    annotator = evaluations[0].per_image["annotation_diversity"].mean()
    left.axhline(annotator, color="k", linestyle="--", label="E[d(Y,Y')] (annotators)")
    left.set(xticks=x, xticklabels=names, ylabel="mean distance (1 - IoU)", title="GED break-up")
    left.legend(fontsize="small")
    right.bar(x, [e.per_image["ged"].mean() for e in evaluations], color="tab:gray")
    if ORACLE_GED in evaluations[0].per_image:
        oracle = evaluations[0].per_image[ORACLE_GED].mean()
        right.axhline(oracle, color="tab:red", linestyle=":", label="oracle GED")
        right.legend(fontsize="small")
    right.set(xticks=x, xticklabels=names, ylabel="mean GED", title="GED")
    fig.savefig(path, dpi=120)
    return path


def plot_sample_grid(evaluations: Sequence[Evaluation], example: int, path: Path) -> Path:
    """Fig. 4 for one example: image and annotations in row 0, each model's samples below."""
    reference = evaluations[0].examples
    annotations = reference.annotations[example]
    columns = max(1 + len(annotations), *(e.examples.samples.shape[1] for e in evaluations))
    rows = 1 + len(evaluations)
    fig = Figure(figsize=(0.9 * columns, 0.95 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    axes[0, 0].imshow(reference.images[example], cmap="gray")
    axes[0, 0].set_title(f"image {reference.indices[example]}", fontsize=7)
    for j, mask in enumerate(annotations, start=1):
        axes[0, j].imshow(mask, cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(f"label {j}", fontsize=7)
    for i, e in enumerate(evaluations, start=1):
        for j, mask in enumerate(e.examples.samples[example]):
            axes[i, j].imshow(mask, cmap="gray", vmin=0, vmax=1)
        axes[i, 0].text(-0.1, 0.5, e.model, transform=axes[i, 0].transAxes, ha="right",
                        va="center", fontsize=7)  # fmt: skip
    fig.savefig(path, dpi=100)
    return path


# --------------------------------------------------------------------------- comparison


def _write_table(table: pd.DataFrame, markdown: str, stem: Path) -> list[Path]:
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    _write_atomic(csv_path, lambda f: f.write(table.to_csv(index=False).encode()))
    _write_atomic(md_path, lambda f: f.write(markdown.encode()))
    return [csv_path, md_path]


def compare(workdirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Comparison:
    """Writes Table 1, the Wilcoxon table (>= 2 models) and Fig. 2-4 into ``out``."""
    evaluations = load_evaluations(workdirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = ged_table(evaluations)
    files = _write_table(table, ged_markdown(table), out / "table1_ged")
    tests = None
    if len(evaluations) > 1:
        tests = wilcoxon_table(evaluations)
        files += _write_table(tests, to_markdown(tests), out / "wilcoxon_ged")
    files.append(plot_ged_letter_values(evaluations, out / "fig2_ged_letter_values.png"))
    files.append(plot_ged_breakup(evaluations, out / "fig3_ged_breakup.png"))
    for k, index in enumerate(evaluations[0].examples.indices):
        files.append(plot_sample_grid(evaluations, k, out / f"fig4_samples_{index}.png"))
    return Comparison(table, tests, files)
