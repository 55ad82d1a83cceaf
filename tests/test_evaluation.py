"""evaluate_model on a tiny untrained model: files, metrics and oracle against direct
recomputations, determinism, independence of the batch size, bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from probunet_jax import calibration, data, evaluation, metrics, presets, reporting, sampling, truth
from probunet_jax.data import synthetic
from probunet_jax.model import init_variables, model_from_config

SIZE, NUM_TEST, NUM_SAMPLES, BATCH = 16, 6, 4, 4


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    config = ml_collections.ConfigDict()
    config.model = presets.model_config(
        "mixture_fc", filters=(4, 8), convs_per_block=1, head_depth=2
    )
    config.data = data.default_data_config()
    config.data.update(
        data_dir=str(tmp_path_factory.mktemp("data")),
        image_size=SIZE,
        num_annotations=3,
        num_train=2,
        num_validation=2,
        num_test=NUM_TEST,
    )
    config.eval = ml_collections.ConfigDict(
        dict(num_samples=NUM_SAMPLES, batch_size=BATCH, split="test")
    )
    config.seed = 3
    return config


@pytest.fixture(scope="module")
def variables(config):
    model = model_from_config(config.model)
    return init_variables(model, jax.random.key(0), (SIZE, SIZE, 1))


@pytest.fixture(scope="module")
def evaluated(config, variables, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    summary = evaluation.evaluate_model(config, variables, workdir=workdir)
    return workdir, summary, reporting.load_evaluation(workdir)


def test_writes_the_three_files_with_one_row_per_test_image(evaluated):
    workdir, summary, loaded = evaluated
    folder = workdir / reporting.EVAL_DIR
    for name in (reporting.PER_IMAGE_FILE, reporting.SAMPLES_FILE, reporting.SUMMARY_FILE):
        assert (folder / name).is_file()
    assert json.loads((folder / reporting.SUMMARY_FILE).read_text()) == summary
    assert summary["model"] == "mixture_fc" and summary["num_samples"] == NUM_SAMPLES
    assert summary["num_images"] == NUM_TEST  # The padding of the last batch is dropped.
    assert list(loaded.per_image.index) == list(range(NUM_TEST))
    calibration_columns = {"rater_ece", "rater_brier", "ci_score", "max_dice"}
    truth_columns = {"scenario", "truth_ece", "truth_brier", "presence_rate", "mode_tvd"}
    truth_columns.add("posterior_choice_accuracy")
    oracle_columns = {f"oracle_{c}" for c in evaluation.ORACLE_TRUTH_COLUMNS}
    expected = {*reporting.METRICS, reporting.ORACLE_GED, *calibration_columns, *truth_columns}
    assert expected | oracle_columns <= set(loaded.per_image.columns)
    assert np.isfinite(summary["metrics"]["ged"]["mean"])
    assert np.isfinite(summary["metrics"][reporting.ORACLE_GED]["mean"])
    examples = loaded.examples
    assert examples.samples.shape == (NUM_TEST, NUM_SAMPLES, SIZE, SIZE)  # NUM_TEST < 8.
    assert examples.annotations.shape == (NUM_TEST, 3, SIZE, SIZE)
    np.testing.assert_array_equal(examples.indices, np.arange(NUM_TEST))


def test_metrics_match_a_direct_recomputation(config, variables, evaluated):
    _, _, loaded = evaluated
    model = model_from_config(config.model)
    source = data.get_data_source(config.data, "test")
    sample_key, _ = jax.random.split(jax.random.key(config.seed))
    for i in range(NUM_TEST):
        example = source[i]
        key = jax.random.fold_in(sample_key, i)
        samples = sampling.sample_masks(model, variables, example["image"][None], key, NUM_SAMPLES)
        annotations = example["masks"][None]
        direct = metrics.generalized_energy_distance(samples, annotations)
        row = loaded.per_image.loc[i]
        np.testing.assert_allclose(row["ged"], direct.ged[0], atol=1e-6)
        np.testing.assert_allclose(row["sample_diversity"], direct.sample_diversity[0], atol=1e-6)
        np.testing.assert_allclose(row["annotation_diversity"], direct.annotation_diversity[0])
        if i < len(loaded.examples.indices):
            np.testing.assert_array_equal(loaded.examples.samples[i], samples[0])
            np.testing.assert_array_equal(loaded.examples.annotations[i], example["masks"])


def _direct_samples(config, variables, image, key):
    """Masks and foreground probabilities `[1, S, H, W]` of one image, sampled directly."""
    model = model_from_config(config.model)
    logits = sampling.sample_logits(model, variables, image[None], key, NUM_SAMPLES)
    return np.asarray(sampling.logits_to_masks(logits)), np.asarray(
        evaluation.foreground_probs(logits)
    )


def test_calibration_and_truth_columns_match_a_direct_recomputation(config, variables, evaluated):
    _, summary, loaded = evaluated
    source = data.get_data_source(config.data, "test")
    sample_key, _ = jax.random.split(jax.random.key(config.seed))
    rater_bins = []
    for i in range(NUM_TEST):
        example = source[i]
        masks, probs = _direct_samples(
            config, variables, example["image"], jax.random.fold_in(sample_key, i)
        )
        cal = calibration.calibration_metrics(masks, example["masks"][None], probs)
        rater_bins.append(cal.pixel_bins)
        batched = {name: np.asarray(v)[None] for name, v in example["truth"].items()}
        direct = cal.columns | truth.truth_metrics(masks, probs, batched).columns
        row = loaded.per_image.loc[i]
        for name, values in direct.items():
            np.testing.assert_allclose(row[name], values[0], rtol=1e-5, atol=1e-6, err_msg=name)
    curve = calibration.reliability_curve(
        calibration.ReliabilityBins(*(np.concatenate(b) for b in zip(*rater_bins, strict=True)))
    )
    written = reporting.reliability_curves(summary)["rater_pixel"]
    np.testing.assert_allclose(written.count, curve.count)
    assert written.count.sum() == NUM_TEST * SIZE * SIZE
    np.testing.assert_allclose(written.ece, curve.ece, rtol=1e-5)


def test_summary_reliability_and_scenarios(evaluated):
    _, summary, loaded = evaluated
    curves = reporting.reliability_curves(summary)
    names = {"rater_pixel", "truth_pixel", "oracle_truth_pixel", "presence", "oracle_presence"}
    assert set(curves) == names
    for name in ("truth_pixel", "oracle_truth_pixel"):
        assert curves[name].count.sum() == NUM_TEST * SIZE * SIZE and np.isfinite(curves[name].ece)
    single = loaded.per_image["scenario"] == 1
    assert curves["presence"].count.sum() == curves["oracle_presence"].count.sum() == single.sum()
    assert all(len(c["predicted"]) == calibration.NUM_BINS for c in summary["reliability"].values())
    by_scenario = summary["by_scenario"]
    assert list(by_scenario) == list(truth.SCENARIOS)
    assert sum(group["num_images"] for group in by_scenario.values()) == NUM_TEST
    for name, group in by_scenario.items():
        rows = loaded.per_image["scenario"] == truth.SCENARIOS[name]
        assert set(group["metrics"]) == set(reporting.SCENARIO_COLUMNS)
        assert group["metrics"]["ged"]["count"] == rows.sum()
        assert group["metrics"]["mode_tvd"]["count"] == (rows.sum() if name == "pair" else 0)
    # The oracle's own truth columns: its samples come from the truth itself.
    oracle = loaded.per_image["oracle_truth_brier"].mean()
    assert oracle < loaded.per_image["truth_brier"].mean()


def test_oracle_matches_a_direct_oracle_computation(config, evaluated):
    _, _, loaded = evaluated
    source = data.get_data_source(config.data, "test")
    _, oracle_key = jax.random.split(jax.random.key(config.seed))
    seed = tuple(int(w) for w in np.asarray(jax.random.key_data(oracle_key)).ravel())
    for i in range(NUM_TEST):
        example = source[i]
        rng = np.random.default_rng((*seed, evaluation.ORACLE_STREAM, i))
        oracle = synthetic.sample_annotations(example, NUM_SAMPLES, rng)
        direct = metrics.generalized_energy_distance(oracle[None], example["masks"][None])
        row = loaded.per_image.loc[i]
        np.testing.assert_allclose(row[reporting.ORACLE_GED], direct.ged[0], atol=1e-6)
        np.testing.assert_allclose(
            row["oracle_sample_diversity"], direct.sample_diversity[0], atol=1e-6
        )
        batched = {name: np.asarray(v)[None] for name, v in example["truth"].items()}
        own = truth.truth_metrics(oracle[None], None, batched).columns
        for name in evaluation.ORACLE_TRUTH_COLUMNS:
            np.testing.assert_allclose(row[f"oracle_{name}"], own[name][0], err_msg=name)


def _same_stats(a: dict, b: dict) -> bool:
    """Stats equal up to float rounding; null (no finite value) only where the other is null."""
    nan = lambda stats: {k: np.nan if v is None else v for k, v in stats.items()}  # noqa: E731
    return nan(a) == pytest.approx(nan(b), rel=1e-5, abs=1e-6, nan_ok=True)


def _assert_same_summary(a, b):
    """Equal up to float rounding (the NCC's reductions may differ across batch shapes)."""
    assert a.keys() == b.keys() and a["metrics"].keys() == b["metrics"].keys()
    for column, stats in a["metrics"].items():
        assert _same_stats(stats, b["metrics"][column]), column
    assert a["by_scenario"].keys() == b["by_scenario"].keys()
    for name, group in a["by_scenario"].items():
        for column, stats in group["metrics"].items():
            assert _same_stats(stats, b["by_scenario"][name]["metrics"][column]), (name, column)
    curves_a, curves_b = (reporting.reliability_curves(s) for s in (a, b))
    assert curves_a.keys() == curves_b.keys()
    for name, curve in curves_a.items():
        for x, y in zip(curve, curves_b[name], strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=name)


def test_deterministic_and_independent_of_the_batch_size(config, variables, evaluated):
    _, summary, _ = evaluated
    assert evaluation.evaluate_model(config, variables) == summary
    _assert_same_summary(evaluation.evaluate_model(config, variables, batch_size=5), summary)
    other = evaluation.evaluate_model(config, variables, key=jax.random.key(config.seed + 1))
    assert other["metrics"]["ged"] != summary["metrics"]["ged"]


def test_split_and_num_samples_overrides(config, variables):
    summary = evaluation.evaluate_model(config, variables, split="validation", num_samples=2)
    assert summary["num_images"] == 2 and summary["num_samples"] == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(split="tset"), "Unknown eval split"),
        (dict(num_samples=0), "num_samples"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_input(config, variables, kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluation.evaluate_model(config, variables, **kwargs)


# --------------------------------------------------------------------------- the CLIs

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(REPO / "experiments" / "configs" / "test.py")


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_variant_configs_swap_only_the_latent_settings():
    from probunet_jax import config as config_lib
    from probunet_jax import pipeline

    base = config_lib.load_config_file(TINY_CONFIG)
    configs = pipeline.variant_configs(base, ["lr", "aa"])
    lr = configs["lr"].model
    assert (lr.variant, lr.latent_kind, lr.rank) == ("lr", "lr", 2)
    assert tuple(lr.filters) == (4, 8) and configs["aa"].train == base.train
    with pytest.raises(ValueError, match="Unknown model variant"):
        pipeline.variant_configs(base, ["gaussian"])
    with pytest.raises(ValueError, match="distinct"):
        pipeline.variant_configs(base, ["aa", "aa"])
    base.eval.num_samples = 0
    with pytest.raises(ValueError, match="eval.num_samples"):
        pipeline.variant_configs(base, ["aa"])


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory):
    """The tiny paper pipeline for two variants (~1 min on 2 CPU cores)."""
    root = tmp_path_factory.mktemp("paper")
    args = ["--root", str(root), f"--config={TINY_CONFIG}", "--variants=aa,fc"]
    args.append(f"--config.data.data_dir={tmp_path_factory.mktemp('paper_data')}")
    result = _run("experiments.paper", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, args, result


@pytest.mark.slow
def test_paper_pipeline_trains_evaluates_and_compares(paper_root):
    root, args, result = paper_root
    comparison = root / "comparison"
    for name in ("table1_ged.md", "table1_ged.csv", "wilcoxon_ged.csv", "wilcoxon_ged.md"):
        assert (comparison / name).is_file(), name
    assert (comparison / "fig2_ged_letter_values.png").is_file()
    assert (comparison / "fig3_ged_breakup.png").is_file()
    assert list(comparison.glob("fig4_samples_*.png"))
    assert "Table 1" in result.stdout and "Oracle GED" in result.stdout
    for variant in ("aa", "fc"):
        summary = json.loads((root / variant / "eval" / "summary.json").read_text())
        assert summary["model"] == variant
        assert np.isfinite(summary["metrics"]["oracle_ged"]["mean"])
    # A second run skips the evaluated variants and only rebuilds the comparison.
    summary_file = root / "aa" / "eval" / "summary.json"
    before = summary_file.stat().st_mtime_ns
    again = _run("experiments.paper", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "evaluated already: skipping" in again.stderr
    assert summary_file.stat().st_mtime_ns == before


@pytest.mark.slow
def test_evaluate_cli_restores_the_best_checkpoint(paper_root, tmp_path):
    root, _, _ = paper_root
    workdir = tmp_path / "aa"
    shutil.copytree(root / "aa", workdir)
    result = _run(
        "experiments.evaluate", f"--workdir={workdir}", "--num_samples=3", "--split=validation"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((workdir / "eval" / "summary.json").read_text())
    assert summary["num_samples"] == 3 and summary["model"] == "aa"
    assert "| GED |" in result.stdout and "| oracle GED |" in result.stdout
    assert "Means per scenario" in result.stdout and "| truth_pixel |" in result.stdout


def test_evaluate_cli_errors(tmp_path):
    missing = _run("experiments.evaluate", f"--workdir={tmp_path / 'nothing'}")
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    empty = _run("experiments.evaluate", f"--workdir={tmp_path}")
    assert empty.returncode != 0 and "not a training workdir" in empty.stderr
