"""Drawing: data and sample grids, the latent space, the paper's Fig. 2-4, reliability diagrams.

Every function returns a ``matplotlib.figure.Figure`` (no global pyplot state, any backend; a
notebook displays a cell's last value, ``reporting.compare`` saves them) and takes plain
arrays: the model runs in :mod:`probunet_jax.latent` and :mod:`probunet_jax.sampling`, the
evaluation files are read by :mod:`probunet_jax.reporting`. Axis labels of metrics come from
:mod:`probunet_jax.metric_labels`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from probunet_jax import metric_labels

if TYPE_CHECKING:  # Types only: drawing imports neither the model nor jax.
    from probunet_jax.calibration import ReliabilityCurve
    from probunet_jax.latent import LatentGrid, LatentParts, Projection

# Reliability diagrams by curve name (``summary.json``'s "reliability"): x, y labels and title.
RELIABILITY_AXES = {
    "truth_pixel": (
        "predicted foreground probability",
        "true foreground probability",
        "Pixel reliability against the truth",
    ),
    "rater_pixel": (
        "predicted foreground probability",
        "fraction of raters marking the pixel",
        "Pixel reliability against the raters",
    ),
    "presence": (
        "samples marking the lesion",
        "true probability a grader marks it",
        "Lesion presence reliability (single-lesion images)",
    ),
}


# Mask labels 0..9: background black, foreground (binary) white, then distinct colours.
MASK_PALETTE = ListedColormap(
    ["black", "white", "tab:orange", "tab:blue", "tab:green", "tab:red", "tab:purple"]
    + ["tab:brown", "tab:pink", "tab:olive"]
)


def _frame(ax, title: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _image(ax, image: np.ndarray, title: str | None = None) -> None:
    """An image `[H, W]` or `[H, W, C]` in [0, 1]: grey, RGB (C = 3) or its first channel."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image if image.shape[-1] == 3 else image[..., 0]
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    _frame(ax, title)


def _mask(ax, mask: np.ndarray, title: str | None = None) -> None:
    """A label map `[H, W]` in the colours of MASK_PALETTE (labels above 9 share the last)."""
    top = MASK_PALETTE.N - 1
    ax.imshow(np.asarray(mask), cmap=MASK_PALETTE, vmin=0, vmax=top, interpolation="nearest")
    _frame(ax, title)


# --------------------------------------------------------------------------- grids


def show_examples(images: np.ndarray, annotations: np.ndarray) -> Figure:
    """Images `[N, H, W]` (or `[N, H, W, C]`) with their annotations `[N, A, H, W]`, a row each."""
    n, a = np.shape(annotations)[:2]
    fig = Figure(figsize=(1.4 * (a + 1), 1.4 * n), layout="constrained")
    axes = fig.subplots(n, a + 1, squeeze=False)
    for i in range(n):
        _image(axes[i, 0], images[i], "image" if i == 0 else None)
        for j in range(a):
            _mask(axes[i, j + 1], annotations[i, j], f"annotation {j + 1}" if i == 0 else None)
    return fig


def show_samples(
    images: np.ndarray, samples: np.ndarray, annotations: np.ndarray | None = None
) -> Figure:
    """Per image a row: the image, its annotations (if given) and its samples `[N, S, H, W]`."""
    samples = np.asarray(samples)
    n, s = samples.shape[:2]
    a = 0 if annotations is None else np.shape(annotations)[1]
    fig = Figure(figsize=(0.9 * (1 + a + s), 0.95 * n), layout="constrained")
    axes = fig.subplots(n, 1 + a + s, squeeze=False)
    for i in range(n):
        _image(axes[i, 0], images[i], "image" if i == 0 else None)
        for j in range(a):
            _mask(axes[i, 1 + j], annotations[i, j], f"y{j + 1}" if i == 0 else None)
        for k in range(s):
            _mask(axes[i, 1 + a + k], samples[i, k], f"s{k + 1}" if i == 0 else None)
    return fig


def show_mask_grid(
    masks: np.ndarray, title: str = "", labels: Sequence[str] | None = None
) -> Figure:
    """Masks `[R, C, H, W]` (or `[C, H, W]`, one row) as a grid, with optional row labels."""
    masks = np.asarray(masks)
    if masks.ndim == 3:
        masks = masks[None]
    rows, cols = masks.shape[:2]
    fig = Figure(figsize=(0.9 * cols + 0.6, 0.9 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            _mask(axes[r, c], masks[r, c])
        if labels is not None:
            axes[r, 0].set_ylabel(labels[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def sample_grid(
    image: np.ndarray, annotations: np.ndarray, samples: Mapping[str, np.ndarray], title: str
) -> Figure:
    """Fig. 4 for one image `[H, W]` (or `[H, W, C]`): it and its annotations `[A, H, W]` in
    row 0, below a row of samples `[S, H, W]` per model (``samples``: model name -> samples)."""
    columns = max(1 + len(annotations), *(len(s) for s in samples.values()))
    rows = 1 + len(samples)
    fig = Figure(figsize=(0.9 * columns, 0.95 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    _image(axes[0, 0], image, title)
    for j, mask in enumerate(annotations, start=1):
        _mask(axes[0, j], mask, f"label {j}")
    for i, (model, masks) in enumerate(samples.items(), start=1):
        for j, mask in enumerate(masks):
            _mask(axes[i, j], mask)
            axes[i, j].set_axis_on()
        axes[i, 0].set_ylabel(model, fontsize=7)
    return fig


# --------------------------------------------------------------------------- latent space


def _ellipse(ax, mean: np.ndarray, cov: np.ndarray, color, alpha: float = 0.0, **kwargs) -> None:
    """The 2σ ellipse of a 2-D Gaussian `cov` `[2, 2]` at `mean` `[2]`: outline, and a fill of
    opacity ``alpha`` if > 0."""
    values, vectors = np.linalg.eigh(cov)
    width, height = 2 * 2 * np.sqrt(np.maximum(values[::-1], 1e-12))
    angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
    if alpha > 0:
        ax.add_patch(Ellipse(mean, width, height, angle=angle, facecolor=color, alpha=alpha))
    ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, edgecolor=color, **kwargs))


def _draw_posteriors(ax, posteriors: LatentParts, proj: Projection, image_index: int) -> None:
    """Dashed 2σ ellipses of the posterior components (weight >= 0.05) of each annotation."""
    weights, means, covs = (x[image_index] for x in posteriors[:3])  # [A, N, ...]
    for a in range(means.shape[0]):
        for k in range(means.shape[1]):
            if weights[a, k] < 0.05:
                continue
            mean2 = proj(means[a, k])
            _ellipse(ax, mean2, proj.basis.T @ covs[a, k] @ proj.basis, "k", linestyle="--")
            ax.plot(*mean2, "x", color="k")
            ax.annotate(f"y{a + 1}", mean2, fontsize=7, xytext=(3, 3), textcoords="offset points")


def plot_latent_space(
    prior: LatentParts,
    posteriors: LatentParts,
    proj: Projection,
    *,
    image_index: int = 0,
    ax=None,
) -> Figure | None:
    """Prior components of one image (filled 2σ ellipses, colour = component, opacity and
    label = weight) and the posterior of each of its annotations (dashed, black); a new
    Figure, or None when drawn into ``ax``."""
    fig = None
    if ax is None:
        fig = Figure(figsize=(4.5, 4.5), layout="constrained")
        ax = fig.subplots()
    weights, means, covs = (x[image_index] for x in prior[:3])
    for k in np.argsort(-weights):
        mean2, cov2 = proj(means[k]), proj.basis.T @ covs[k] @ proj.basis
        _ellipse(ax, mean2, cov2, f"C{k % 10}", alpha=0.15 + 0.6 * weights[k])
        ax.plot(*mean2, "o", color=f"C{k % 10}", label=f"prior {k}: w={weights[k]:.2f}")
    _draw_posteriors(ax, posteriors, proj, image_index)
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    axis = "z" if proj.basis.shape[0] == 2 else "PC"
    ax.set(xlabel=f"{axis}1", ylabel=f"{axis}2")
    ax.legend(fontsize=6, loc="best")
    ax.set_title(f"image {image_index}: prior (filled) and posteriors (dashed)", fontsize=8)
    return fig


def show_decoded_grid(masks: np.ndarray, grid: LatentGrid) -> Figure:
    """Masks `[R, C, H, W]` decoded on ``grid.z`` (``latent.latent_grid``), axes labelled with
    the grid's plane coordinates."""
    rows, cols = np.shape(masks)[:2]
    if (rows, cols) != (len(grid.y), len(grid.x)):
        raise ValueError(
            f"masks {np.shape(masks)} do not fit a grid of {len(grid.y)} x {len(grid.x)}"
        )
    fig = show_mask_grid(masks, title="decoded grid over the projection plane")
    for c, x in enumerate(grid.x):
        fig.axes[(rows - 1) * cols + c].set_xlabel(f"{x:.1f}", fontsize=7)
    for r, y in enumerate(grid.y):
        fig.axes[r * cols].set_ylabel(f"{y:.1f}", fontsize=7)
    return fig


# --------------------------------------------------------------------------- model comparison


def ged_letter_values(values: Mapping[str, np.ndarray]) -> Figure:
    """Fig. 2: letter-value (boxen) plot of the per-image GED `[N]` of each model."""
    long = pd.concat(
        [pd.DataFrame({"model": name, "ged": np.asarray(v)}) for name, v in values.items()],
        ignore_index=True,
    )
    fig = Figure(figsize=(1.6 * len(values) + 2, 4), layout="constrained")
    ax = fig.subplots()
    sns.boxenplot(data=long, x="model", y="ged", hue="model", ax=ax)
    ax.set(xlabel="", ylabel=f"{metric_labels.label('ged')} (per image)")
    ax.set_title("Generalized energy distance")
    return fig


def ged_breakup(per_image: Mapping[str, pd.DataFrame]) -> Figure:
    """Fig. 3: mean E[d(S,Y)] and E[d(S,S')] per model (± s.e.m.) against E[d(Y,Y')] (left),
    the mean GED per model with the oracle's as a reference line if ``oracle_ged`` is a
    column (right). ``per_image``: model name -> its per-image table."""
    terms = ("sample_annotation_distance", "sample_diversity")
    frames = list(per_image.values())
    x = np.arange(len(frames))
    width = 0.8 / len(terms)
    fig = Figure(figsize=(2.2 * len(frames) + 4, 4), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(3, 2))
    for i, column in enumerate(terms):
        means = [f[column].mean() for f in frames]
        sems = [f[column].sem(ddof=0) for f in frames]
        bars = x + (i - 0.5) * width
        left.bar(bars, means, width, yerr=sems, capsize=3, label=metric_labels.label(column))
    annotators = frames[0]["annotation_diversity"].mean()
    reference = f"{metric_labels.label('annotation_diversity')} (annotators)"
    left.axhline(annotators, color="k", linestyle="--", label=reference)
    left.set(xticks=x, xticklabels=list(per_image), ylabel="mean distance (1 - IoU)")
    left.set_title("GED break-up")
    left.legend(fontsize="small")
    right.bar(x, [f["ged"].mean() for f in frames], color="tab:gray")
    if "oracle_ged" in frames[0]:
        oracle = frames[0]["oracle_ged"].mean()
        right.axhline(
            oracle, color="tab:red", linestyle=":", label=metric_labels.label("oracle_ged")
        )
        right.legend(fontsize="small")
    right.set(xticks=x, xticklabels=list(per_image), ylabel=f"mean {metric_labels.label('ged')}")
    right.set_title("GED")
    return fig


def reliability_diagram(curves: Mapping[str, ReliabilityCurve], kind: str) -> Figure:
    """Reliability diagram of one curve per model (legend with its ECE) above the share of
    pixels (or images) per bin on a log scale; ``kind`` one of ``RELIABILITY_AXES``."""
    if kind not in RELIABILITY_AXES:
        raise ValueError(f"unknown reliability kind {kind!r}; known: {sorted(RELIABILITY_AXES)}")
    xlabel, ylabel, title = RELIABILITY_AXES[kind]
    fig = Figure(figsize=(4.5, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="k", linestyle="--", linewidth=1, label="perfect")
    for name, curve in curves.items():
        shown = curve.count > 0
        label = f"{name} (ECE {curve.ece:.3g})"
        top.plot(curve.predicted[shown], curve.observed[shown], marker="o", ms=3, label=label)
        edges = np.linspace(0, 1, len(curve.count) + 1)
        share = curve.count / max(curve.count.sum(), 1)
        bottom.stairs(np.where(shown, share, np.nan), edges, label=name)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel=ylabel, title=title, aspect="equal")
    top.legend(fontsize="small")
    bottom.set(xlabel=xlabel, ylabel="share", yscale="log")
    return fig


# --------------------------------------------------------------------------- training


def learning_curves(curves: Mapping[str, pd.DataFrame], reference: float | None = None) -> Figure:
    """Validation GED against steps and training seconds, a line per run (``curves``: name ->
    frame with ``step``, ``seconds``, ``ged``), with the oracle's GED as a dashed reference."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for name, curve in curves.items():
        for ax, x in zip(axes, ("step", "seconds"), strict=True):
            ax.plot(curve[x], curve["ged"], marker=".", label=name)
    for ax, label in zip(axes, ("training steps", "training seconds"), strict=True):
        if reference is not None:
            ax.axhline(reference, color="black", linestyle="--", label="oracle (test split)")
        ax.set(xlabel=label, ylabel="validation GED")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    return fig
