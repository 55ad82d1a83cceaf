"""Reliability diagrams of several models: pixel calibration and lesion presence.

Each figure takes ``{model name: calibration.ReliabilityCurve}`` and draws the mean target
against the mean prediction of each non-empty bin, the diagonal of perfect calibration, and
below it the share of pixels (or images) per bin on a log scale. Figures are
``matplotlib.figure.Figure`` objects (no pyplot state, any backend; ``savefig`` them).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from probunet_jax.calibration import ReliabilityCurve


def reliability_figure(
    curves: Mapping[str, ReliabilityCurve], *, xlabel: str, ylabel: str, title: str
) -> Figure:
    """Reliability diagram of each model's curve (legend with its ECE) over a bin histogram."""
    fig = Figure(figsize=(4.5, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="k", linestyle="--", linewidth=1, label="perfect")
    for name, curve in curves.items():
        shown = curve.count > 0
        top.plot(
            curve.predicted[shown],
            curve.observed[shown],
            marker="o",
            markersize=3,
            label=f"{name} (ECE {curve.ece:.3g})",
        )
        edges = np.linspace(0, 1, len(curve.count) + 1)
        share = curve.count / max(curve.count.sum(), 1)
        bottom.stairs(np.where(shown, share, np.nan), edges, label=name)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel=ylabel, title=title, aspect="equal")
    top.legend(fontsize="small")
    bottom.set(xlabel=xlabel, ylabel="share", yscale="log")
    return fig


def pixel_reliability_figure(curves: Mapping[str, ReliabilityCurve]) -> Figure:
    """Pixel reliability: the models' foreground probability against the target probability
    (the true marginal on synthetic data, else the raters' mean)."""
    return reliability_figure(
        curves,
        xlabel="predicted foreground probability",
        ylabel="target foreground probability",
        title="Pixel reliability",
    )


def presence_reliability_figure(curves: Mapping[str, ReliabilityCurve]) -> Figure:
    """Presence reliability (single-lesion images): the share of samples marking the lesion
    against the true share of graders."""
    return reliability_figure(
        curves,
        xlabel="samples marking the lesion",
        ylabel="true probability a grader marks it",
        title="Lesion presence reliability",
    )
