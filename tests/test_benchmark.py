"""The benchmark command at a tiny size: every field is there and positive (no timing checks)."""

import json
import math
import subprocess
import sys

import pytest

from experiments import benchmark

TINY = dict(
    variants=("aa", "mixture_fc"),
    batch_size=2,
    image_size=16,
    filters=(4, 8),
    steps=2,
    sample_batch=2,
    sample_repeats=2,
    ged_batch=4,
    ged_repeats=2,
    ged_loop_images=2,
)


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report():
    return benchmark.run_benchmark(benchmark.Options(**TINY))


def test_train_and_sampling_fields_are_positive(report):
    assert set(report["variants"]) == {"aa", "mixture_fc"}
    for entry in report["variants"].values():
        assert entry["parameters"] > 0
        train = entry["train"]
        for key in ("compile_s", "median_step_s", "images_per_s", "step_gflop", "achieved_gflops"):
            assert _positive(train[key]), (key, train[key])
        assert len(train["step_s"]) == TINY["steps"]
        assert math.isfinite(train["final_loss"])
        if report["environment"]["backend"] == "cpu":
            assert 0 < train["fraction_of_cpu_peak"]
        sample = entry["sample"]
        for key in ("median_call_s", "images_per_s", "masks_per_s"):
            assert _positive(sample[key]), (key, sample[key])


def test_ged_matches_the_python_loop(report):
    ged = report["ged"]
    for key in ("ms_per_image", "pairs_per_s", "loop_ms_per_image", "speedup_vs_loop"):
        assert _positive(ged[key]), (key, ged[key])
    assert ged["pairs_per_image"] == 16 * 16 + 16 * 4 + 4 * 4
    assert ged["matches_loop"] and ged["max_abs_difference_vs_loop"] <= benchmark.GED_TOLERANCE


def test_environment_is_reported(report):
    env = report["environment"]
    for key in ("backend", "device_kind", "jax_version", "jaxlib_version", "xla_flags"):
        assert key in env
    assert len(env["load_average"]) == 3
    assert _positive(report["peak_host_rss_mib"])
    json.dumps(benchmark.finite_or_none(report), allow_nan=False)


def test_loop_ged_of_identical_sets_is_zero():
    import numpy as np

    masks = np.zeros((1, 3, 4, 4), np.uint8)
    masks[0, 1, :2] = 1
    assert benchmark.loop_ged(masks, masks) == pytest.approx([0.0], abs=1e-12)


@pytest.mark.parametrize(
    "changes",
    [dict(variants=("nope",)), dict(batch_size=0), dict(image_size=15), dict(filters=(0, 4))],
)
def test_bad_options_raise_value_error(changes):
    with pytest.raises(ValueError):
        benchmark.Options(**dict(TINY, **changes)).validate()


def test_command_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    args = [
        "--variants=aa",
        "--batch_size=2",
        "--image_size=16",
        "--filters=4,8",
        "--steps=1",
        "--sample_batch=2",
        "--sample_repeats=1",
        "--skip_ged",
        f"--out={out}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    written = json.loads(out.read_text())
    assert json.loads(result.stdout) == written
    assert written["variants"]["aa"]["train"]["images_per_s"] > 0
    assert "ged" not in written
