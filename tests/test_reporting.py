"""Evaluation file format and the model comparison on synthetic evaluations of 3 fake models."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from probunet_jax import calibration, evaluation, reporting

NUM_IMAGES, NUM_SAMPLES, NUM_ANNOTATIONS, SIZE = 30, 4, 3, 8
EXAMPLE_INDICES = np.array([3, 11])
# Mean GED offsets: "good" is clearly better than "base"; "close" differs from "base" by noise.
MODELS = {"good": -0.15, "base": 0.0, "close": 0.0}


def _per_image(rng, offset, indices, synthetic=True):
    """Fake per-image columns; ``offset`` < 0 is better in every metric with a direction."""
    n = len(indices)
    base = np.linspace(0.2, 0.6, n)
    cross = base + offset + 0.3 + rng.normal(0, 0.02, n)
    sample_div = 0.3 + rng.normal(0, 0.02, n)
    annotation_div = np.full(n, 0.25)
    ncc = rng.random(n)
    ncc[0] = np.nan  # NCC is undefined for constant maps
    columns = {
        "index": indices,
        "ged": 2 * cross - sample_div - annotation_div,
        "sample_annotation_distance": cross,
        "sample_diversity": sample_div,
        "annotation_diversity": annotation_div,
        "hungarian_iou": rng.random(n),
        "ncc": ncc,
        "dice": rng.random(n),
        "rater_ece": rng.random(n) * 0.1,
        "rater_brier": rng.random(n) * 0.05,
        "ci_score": base - offset + rng.normal(0, 0.02, n),
        "combined_sensitivity": rng.random(n),
        "max_dice": rng.random(n),
        "diversity_agreement": rng.random(n),
    }
    if not synthetic:
        return columns
    scenario = np.arange(n) % 3
    single, pair = scenario == 1, scenario == 2
    return columns | {
        "scenario": scenario.astype(float),
        "truth_ece": rng.random(n) * 0.1,
        "truth_brier": rng.random(n) * 0.05,
        "presence_rate": np.where(single, rng.random(n), np.nan),
        "presence_probability": np.where(single, rng.random(n), np.nan),
        "mode_tvd": np.where(pair, rng.random(n) + offset, np.nan),
        "posterior_choice_accuracy": np.where(scenario != 0, rng.random(n), np.nan),
        "oracle_ged": np.full(n, 0.05),
        "oracle_truth_ece": np.full(n, 0.01),
        "oracle_truth_brier": np.full(n, 0.002),
        "oracle_presence_rate": np.where(single, rng.random(n), np.nan),
        "oracle_mode_tvd": np.where(pair, 0.1, np.nan),
    }


def _reliability(rng, columns):
    """Curves as the evaluation makes them: pixel bins of random maps, presence columns."""
    n = len(columns["index"])

    def bins():
        return calibration.reliability_bins(rng.random((n, 16)), rng.random((n, 16)))

    names = ["rater_pixel"] + (
        ["truth_pixel", "oracle_truth_pixel"] if "scenario" in columns else []
    )
    return evaluation.reliability(columns, {name: bins() for name in names})


def _examples(rng, indices=EXAMPLE_INDICES):
    k = len(indices)
    return reporting.Examples(
        images=rng.random((k, SIZE, SIZE)).astype(np.float32),
        annotations=(rng.random((k, NUM_ANNOTATIONS, SIZE, SIZE)) < 0.3).astype(np.uint8),
        samples=(rng.random((k, NUM_SAMPLES, SIZE, SIZE)) < 0.3).astype(np.uint8),
        indices=indices,
    )


def _write(workdir, name, offset, seed, indices=None, synthetic=True):
    rng = np.random.default_rng(seed)
    indices = np.arange(100, 100 + NUM_IMAGES)[::-1] if indices is None else indices
    columns = _per_image(rng, offset, indices, synthetic)
    reporting.write_evaluation(
        workdir,
        name,
        columns,
        _examples(rng),
        num_samples=NUM_SAMPLES,
        reliability=_reliability(rng, columns),
    )
    return columns


@pytest.fixture
def models(tmp_path):
    """Workdirs and per-image columns of the 3 fake models."""
    out = {}
    for seed, (name, offset) in enumerate(MODELS.items()):
        workdir = tmp_path / name
        out[name] = (workdir, _write(workdir, name, offset, seed))
    return out


def test_write_evaluation_round_trip(models):
    workdir, columns = models["good"]
    folder = workdir / reporting.EVAL_DIR
    assert sorted(p.name for p in folder.iterdir()) == [
        "per_image.csv",
        "samples.npz",
        "summary.json",
    ]  # and no temp files left behind
    summary = json.loads((folder / "summary.json").read_text())
    assert (summary["model"], summary["num_samples"], summary["num_images"]) == (
        "good",
        NUM_SAMPLES,
        NUM_IMAGES,
    )
    assert set(summary["metrics"]) == set(columns) - {"index"}
    assert summary["metrics"]["ncc"]["count"] == NUM_IMAGES - 1
    for name, stat in summary["metrics"].items():
        values = columns[name][np.isfinite(columns[name])]
        assert stat["count"] == len(values)
        np.testing.assert_allclose(
            [stat["mean"], stat["std"], stat["median"]],
            [values.mean(), values.std(), np.median(values)],
        )
    loaded = reporting.load_evaluation(workdir)
    assert loaded.model == "good" and loaded.num_samples == NUM_SAMPLES
    assert list(loaded.per_image.index) == sorted(columns["index"])
    order = np.argsort(columns["index"])
    np.testing.assert_allclose(loaded.per_image["ged"], columns["ged"][order])
    np.testing.assert_array_equal(loaded.examples.indices, EXAMPLE_INDICES)
    assert loaded.examples.samples.dtype == np.uint8 and loaded.examples.images.dtype == np.float32
    assert loaded.summary == summary


def test_summary_by_scenario_and_reliability(models):
    workdir, columns = models["good"]
    summary = json.loads((workdir / reporting.EVAL_DIR / "summary.json").read_text())
    by_scenario = summary["by_scenario"]
    assert list(by_scenario) == ["empty", "single", "pair"]
    for code, name in enumerate(by_scenario):
        rows = columns["scenario"] == code
        assert by_scenario[name]["num_images"] == rows.sum() == NUM_IMAGES // 3
        assert set(by_scenario[name]["metrics"]) == set(reporting.SCENARIO_COLUMNS)
        ged = by_scenario[name]["metrics"]["ged"]
        np.testing.assert_allclose(ged["mean"], columns["ged"][rows].mean())
        mode_tvd = by_scenario[name]["metrics"]["mode_tvd"]
        assert (mode_tvd["count"] > 0) == (name == "pair")  # Null stats elsewhere.
    curves = reporting.reliability_curves(summary)
    names = {"rater_pixel", "truth_pixel", "oracle_truth_pixel", "presence", "oracle_presence"}
    assert set(curves) == names
    presence = curves["presence"]
    assert presence.count.sum() == NUM_IMAGES // 3  # The single-lesion images.
    empty = presence.count == 0
    assert empty.any() and all(
        v is None for v in np.array(summary["reliability"]["presence"]["observed"], object)[empty]
    )
    assert np.isnan(presence.observed[empty]).all() and np.isfinite(presence.ece)


def test_summary_without_scenarios_or_curves():
    rng = np.random.default_rng(0)
    columns = _per_image(rng, 0.0, np.arange(5), synthetic=False)
    summary = reporting.summarize("m", columns, num_samples=4)
    assert summary["by_scenario"] == {} and summary["reliability"] == {}


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda c: c.pop("dice"), r"lacks columns \['dice'\]"),
        (lambda c: c.update(ged=c["ged"][:-1]), r"one length, got shapes"),
        (lambda c: c.update(index=np.zeros(NUM_IMAGES, int)), r"unique integers"),
    ],
)
def test_write_evaluation_rejects_bad_columns(tmp_path, corrupt, message):
    rng = np.random.default_rng(0)
    columns = _per_image(rng, 0.0, np.arange(NUM_IMAGES))
    corrupt(columns)
    with pytest.raises(ValueError, match=message):
        reporting.write_evaluation(tmp_path, "m", columns, _examples(rng), num_samples=4)
    assert not (tmp_path / reporting.EVAL_DIR).exists()


def test_write_evaluation_rejects_bad_examples(tmp_path):
    rng = np.random.default_rng(0)
    examples = _examples(rng)._replace(samples=np.zeros((2, 4, SIZE, SIZE + 1), np.uint8))
    with pytest.raises(ValueError, match=r"\(2, 4, 8, 9\)"):
        reporting.write_evaluation(
            tmp_path, "m", _per_image(rng, 0, np.arange(5)), examples, num_samples=4
        )


def test_compare_tables_and_figures(models, tmp_path):
    out = tmp_path / "cmp"
    result = reporting.compare([models[name][0] for name in MODELS], out)
    expected_files = {
        "table1_ged.csv",
        "table1_ged.md",
        "wilcoxon_ged.csv",
        "wilcoxon_ged.md",
        "fig2_ged_letter_values.png",
        "fig3_ged_breakup.png",
        "fig4_samples_3.png",
        "fig4_samples_11.png",
        "truth_metrics.csv",
        "truth_metrics.md",
        "reliability_truth_pixel.png",
        "reliability_rater_pixel.png",
        "reliability_presence.png",
    }
    assert {p.name for p in result.files} == expected_files
    assert {p.name for p in out.iterdir()} == expected_files
    assert all(p.stat().st_size > 0 for p in result.files)

    table = pd.read_csv(out / "table1_ged.csv")
    assert list(table["model"]) == list(MODELS)
    for _, row in table.iterrows():
        ged = models[row["model"]][1]["ged"]
        np.testing.assert_allclose([row["mean"], row["std"]], [ged.mean(), ged.std()])
    assert "| good | " in (out / "table1_ged.md").read_text()

    tests = pd.read_csv(out / "wilcoxon_ged.csv")
    assert list(zip(tests["model_a"], tests["model_b"], strict=True)) == [
        ("good", "base"),
        ("good", "close"),
        ("base", "close"),
    ]
    for _, row in tests.iterrows():
        a, b = models[row["model_a"]][1], models[row["model_b"]][1]
        direct = stats.wilcoxon(a["ged"], b["ged"])  # same index order in every model
        np.testing.assert_allclose([row["statistic"], row["p_value"]], direct, rtol=1e-12)
        assert row["significant"] == (direct.pvalue < 0.05)
        assert row["num_images"] == NUM_IMAGES
    good_vs_base = tests.iloc[0]
    assert good_vs_base["significant"] and good_vs_base["better"] == "good"
    assert good_vs_base["median_difference"] < 0
    assert not tests.iloc[2]["significant"]  # "base" vs "close" only differ by noise


def test_truth_metrics_table(models, tmp_path):
    result = reporting.compare([models[name][0] for name in MODELS], tmp_path / "cmp")
    table = pd.read_csv(tmp_path / "cmp" / "truth_metrics.csv").set_index("model")
    pd.testing.assert_frame_equal(table, result.truth_table.set_index("model"), check_dtype=False)
    assert list(table.index) == [*MODELS, "oracle"]
    scenario_columns = ["ged_empty", "ged_single", "ged_pair"]
    assert list(table.columns) == [*reporting.TRUTH_COLUMNS, *scenario_columns]
    for name in MODELS:
        columns, row = models[name][1], table.loc[name]
        for column in ("truth_ece", "rater_brier", "ci_score", "mode_tvd"):
            np.testing.assert_allclose(row[column], np.nanmean(columns[column]), err_msg=column)
        np.testing.assert_allclose(row["ged_pair"], columns["ged"][columns["scenario"] == 2].mean())
        summary = reporting.load_evaluation(models[name][0]).summary
        presence = reporting.reliability_curves(summary)["presence"].ece
        np.testing.assert_allclose(row["presence_ece"], presence)
    oracle, columns = table.loc["oracle"], models["good"][1]
    np.testing.assert_allclose(oracle[["truth_ece", "mode_tvd", "ged_pair"]], [0.01, 0.1, 0.05])
    assert np.isfinite(oracle["presence_ece"]) and np.isnan(oracle["rater_ece"])
    markdown = (tmp_path / "cmp" / "truth_metrics.md").read_text()
    header = "| model | ECE vs truth | Brier vs truth | mode TVD | posterior choice accuracy |"
    assert header + " presence ECE |" in markdown
    assert "| GED (pair) |" in markdown and "| oracle | 0.01 |" in markdown
    assert "| n/a |" in markdown and "nan" not in markdown  # The oracle has no rater columns.


def test_compare_without_truth_columns(tmp_path):
    workdirs = [tmp_path / name for name in ("a", "b")]
    for seed, workdir in enumerate(workdirs):
        _write(workdir, workdir.name, 0.0, seed, synthetic=False)
    result = reporting.compare(workdirs, tmp_path / "cmp")
    assert list(result.truth_table.columns) == ["model", *reporting.TRUTH_COLUMNS[5:]]
    assert list(result.truth_table["model"]) == ["a", "b"]  # No oracle row.
    figures = {p.name for p in result.files if p.name.startswith("reliability")}
    assert figures == {"reliability_rater_pixel.png"}


def test_wilcoxon_follows_the_metric_direction(models):
    good, base = (reporting.load_evaluation(models[n][0]) for n in ("good", "base"))
    for metric in ("ged", "ci_score", "mode_tvd"):  # "good" is better in each.
        table = reporting.wilcoxon_table([good, base], metric)
        assert table["better"][0] == "good" and table["significant"][0], metric
        assert (table["median_difference"][0] > 0) == (metric == "ci_score"), metric
        assert reporting.wilcoxon_table([base, good], metric)["better"][0] == "good", metric
    pair_images = int((good.per_image["scenario"] == 2).sum())
    assert reporting.wilcoxon_table([good, base], "mode_tvd")["num_images"][0] == pair_images
    with pytest.raises(ValueError, match="'sample_diversity' has no better direction"):
        reporting.wilcoxon_table([good, base], "sample_diversity")
    with pytest.raises(ValueError, match=r"unknown metric 'iou'"):
        reporting.wilcoxon_table([good, base], "iou")


def test_wilcoxon_pairs_images_by_index(models):
    good, base = (reporting.load_evaluation(models[n][0]) for n in ("good", "base"))
    shuffled = good._replace(per_image=good.per_image.sample(frac=1.0, random_state=0))
    with pytest.raises(ValueError, match="different image sets"):
        reporting.wilcoxon_table([shuffled, base])
    table = reporting.wilcoxon_table([good, base])
    same = reporting.wilcoxon_table([good, good._replace(model="copy")])
    assert table["p_value"][0] < 0.05
    assert (same["statistic"][0], same["p_value"][0], same["better"][0]) == (0.0, 1.0, "tie")


def test_single_model_table_but_no_test(models, tmp_path):
    result = reporting.compare([models["good"][0]], tmp_path / "one")
    assert result.wilcoxon_table is None and len(result.ged_table) == 1
    assert not (tmp_path / "one" / "wilcoxon_ged.csv").exists()
    with pytest.raises(ValueError, match=r"at least 2 models, got \['good'\]"):
        reporting.wilcoxon_table([reporting.load_evaluation(models["good"][0])])


def test_mismatched_image_sets(models, tmp_path):
    _write(tmp_path / "other", "other", 0.0, seed=9, indices=np.arange(NUM_IMAGES))
    with pytest.raises(ValueError, match=r"'good' \(30 images\) and 'other' \(30 images\)"):
        reporting.compare([models["good"][0], tmp_path / "other"], tmp_path / "x")


def test_missing_eval_files_and_duplicate_names(models, tmp_path):
    (models["base"][0] / reporting.EVAL_DIR / "samples.npz").unlink()
    with pytest.raises(FileNotFoundError, match="missing samples.npz"):
        reporting.compare([models["good"][0], models["base"][0]], tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="missing summary.json, per_image.csv"):
        reporting.load_evaluation(tmp_path / "nothing")
    with pytest.raises(ValueError, match="unique"):
        reporting.load_evaluations([models["good"][0], models["good"][0]])


def _compare_cli(workdirs, out):
    """Runs ``experiments.compare`` in a subprocess (launchers define absl flags at import)."""
    return subprocess.run(
        [sys.executable, "-m", "experiments.compare", f"--workdirs={workdirs}", f"--out={out}"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
        timeout=300,
    )


def test_cli_prints_tables_and_writes_figures(models, tmp_path):
    run = _compare_cli(",".join(str(models[name][0]) for name in MODELS), tmp_path / "cli")
    assert run.returncode == 0, run.stderr
    assert "| Model | GED (mean ± std-dev) | N |" in run.stdout
    assert "| good | base | 30 |" in run.stdout
    assert (tmp_path / "cli" / "wilcoxon_ged.md").is_file()
    assert (tmp_path / "cli" / "fig2_ged_letter_values.png").is_file()


def test_cli_errors_and_single_model(models, tmp_path):
    run = _compare_cli(f"{models['good'][0]},{tmp_path / 'missing'}", tmp_path / "cli")
    assert run.returncode != 0 and "no complete evaluation" in run.stderr
    run = _compare_cli(str(models["good"][0]), tmp_path / "one")  # one model: Table 1 only
    assert run.returncode == 0, run.stderr
    assert "| good |" in run.stdout
