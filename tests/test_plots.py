"""Figures: what each draws, from plain arrays."""

import numpy as np
import pandas as pd
import pytest

from probunet_jax import calibration, plots
from probunet_jax.latent import LatentGrid


def _curve(predicted, observed):
    return calibration.reliability_curve(calibration.reliability_bins([predicted], [observed], 5))


def test_reliability_diagram_one_curve_per_model():
    curve = _curve([0.1, 0.5, 0.9], [0.0, 0.6, 1.0])
    figure = plots.reliability_diagram({"a": curve, "b": curve}, "truth_pixel")
    top = figure.axes[0]
    assert len(top.get_lines()) == 3  # The diagonal and two models.
    labels = top.get_legend_handles_labels()[1]
    assert labels == ["perfect", f"a (ECE {curve.ece:.3g})", f"b (ECE {curve.ece:.3g})"]
    line = top.get_lines()[1]
    np.testing.assert_allclose(line.get_xdata(), [0.1, 0.5, 0.9])  # Empty bins left out.
    assert top.get_xlabel() == "" and "true" in top.get_ylabel()
    presence = plots.reliability_diagram({"a": curve}, "presence")
    assert presence.axes[1].get_xlabel() == "samples marking the lesion"
    with pytest.raises(ValueError, match="unknown reliability kind 'pixel'"):
        plots.reliability_diagram({"a": curve}, "pixel")


def test_decoded_grid_labels_the_plane_coordinates():
    grid = LatentGrid(np.zeros((2, 2, 3)), np.array([-1.0, 1.0]), np.array([2.0, -2.0]))
    figure = plots.show_decoded_grid(np.zeros((2, 2, 4, 4)), grid)
    assert [ax.get_xlabel() for ax in figure.axes[2:]] == ["-1.0", "1.0"]
    assert [figure.axes[i].get_ylabel() for i in (0, 2)] == ["2.0", "-2.0"]
    with pytest.raises(ValueError, match=r"\(3, 2, 4, 4\) do not fit a grid of 2 x 2"):
        plots.show_decoded_grid(np.zeros((3, 2, 4, 4)), grid)


def test_sample_grid_rows_per_model():
    samples = {"a": np.zeros((4, 6, 6)), "b": np.ones((2, 6, 6))}
    figure = plots.sample_grid(np.zeros((6, 6)), np.zeros((3, 6, 6)), samples, "image 7")
    assert len(figure.axes) == 3 * 4  # 1 + 2 rows, max(1 + 3, 4) columns.
    assert figure.axes[0].get_title() == "image 7" and figure.axes[4].get_ylabel() == "a"
    assert sum(ax.axison for ax in figure.axes[4:8]) == 4
    assert sum(ax.axison for ax in figure.axes[8:]) == 2  # Only b's two samples shown.


def test_ged_breakup_draws_the_oracle_line_when_present():
    frame = pd.DataFrame(
        {
            "ged": [0.4, 0.6],
            "sample_annotation_distance": [0.5, 0.5],
            "sample_diversity": [0.3, 0.3],
            "annotation_diversity": [0.2, 0.2],
        }
    )
    left, right = plots.ged_breakup({"a": frame, "b": frame}).axes
    legend = {t.get_text() for t in left.get_legend().get_texts()}
    assert legend == {"E[d(S, Y)]", "E[d(S, S')]", "E[d(Y, Y')] (annotators)"}
    assert right.get_legend() is None
    oracle = plots.ged_breakup({"a": frame.assign(oracle_ged=0.1)}).axes[1]
    assert oracle.get_lines()[0].get_ydata()[0] == pytest.approx(0.1)
