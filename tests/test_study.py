"""The quality study on a tiny size: runs, the table against the truth, learning curves, resume."""

import numpy as np
import pandas as pd
import pytest

from probunet_jax import study


def test_tiny_study_writes_table_and_curves_and_resumes(make_config, tmp_path):
    base = make_config(eval=dict(num_samples=2))
    runs = study.study_runs(base, ["mixture_fc"], [4, 2], str(tmp_path))
    assert [(r.variant, r.budget) for r in runs] == [("mixture_fc", 2), ("mixture_fc", 4)]
    assert all(r.config.train.validation_samples >= 1 for r in runs)
    table = study.run(runs, str(tmp_path))
    assert len(table) == 2 and (table["steps"] == [2, 4]).all()
    assert np.allclose(table["ged_ratio"], table["ged"] / table["oracle_ged"])
    assert (table["ged_ratio_se"] > 0).all() and (table["train_seconds"] > 0).all()
    for name in ("truth_ece", "mode_tvd", "ci_score"):
        assert name in table
    assert pd.read_csv(tmp_path / "study.csv").shape == table.shape
    assert (tmp_path / "learning_curves.png").stat().st_size > 0
    curve = study.learning_curve(runs[1].workdir)
    assert list(curve["step"]) == [2, 4] and curve["seconds"].is_monotonic_increasing
    # A second run trains nothing: every run is evaluated.
    summary = tmp_path / "mixture_fc" / "4" / "eval" / "summary.json"
    before = summary.stat().st_mtime_ns
    again = study.run(runs, str(tmp_path))
    assert summary.stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(again, table)


def test_study_needs_the_synthetic_set_and_valid_budgets(make_config, tmp_path):
    base = make_config()
    with pytest.raises(ValueError, match="budgets"):
        study.study_runs(base, ["aa"], [0], str(tmp_path))
    base.data.name = "lidc"
    with pytest.raises(ValueError, match="synthetic"):
        study.study_runs(base, ["aa"], [2], str(tmp_path))
