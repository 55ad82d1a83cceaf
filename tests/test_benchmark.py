"""The benchmark at tiny sizes: every field is there and positive (no timing checks), each job
runs in a process of its own, the loop GED agrees with the library's, the peer's ratios."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from probunet_jax import benchmark_report, benchmarking, metrics

TEST_CONFIG = "experiments/configs/test.py"  # 16 x 16 images, filters (4, 8), batch 4
TINY = benchmarking.Options(
    configs=(TEST_CONFIG,),
    variants=("aa",),
    batch_sizes=(2,),
    steps=2,
    warmup_steps=0,
    sample_repeats=2,
    ged_image_size=16,
    ged_batch=4,
    ged_repeats=2,
    ged_loop_images=2,
)
PAPER_FILTERS = [32, 64, 128, 512]


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _task(options: benchmarking.Options, job: benchmarking.Job | None) -> dict:
    """A task as run_isolated hands it to the child process (through JSON)."""
    task = dict(options=dataclasses.asdict(options), job=None if job is None else job._asdict())
    return json.loads(json.dumps(task))


@pytest.fixture(scope="module")
def job_report():
    return benchmarking.measure(_task(TINY, benchmarking.Job(TEST_CONFIG, "aa", 2)))


def test_train_and_sampling_fields_are_positive(job_report):
    assert (job_report["variant"], job_report["batch_size"]) == ("aa", 2)
    assert job_report["filters"] == [4, 8] and job_report["image_size"] == 16
    assert job_report["parameters"] > 0
    train = job_report["train"]
    for key in ("compile_s", "median_step_s", "images_per_s", "step_gflop", "achieved_gflops"):
        assert _positive(train[key]), (key, train[key])
    assert len(train["step_s"]) == TINY.steps and math.isfinite(train["final_loss"])
    assert train["fraction_of_cpu_peak"] is None or 0 < train["fraction_of_cpu_peak"]
    sample = job_report["sample"]
    for key in ("median_call_s", "images_per_s", "masks_per_s"):
        assert _positive(sample[key]), (key, sample[key])
    assert len(sample["call_s"]) == TINY.sample_repeats


def test_job_reports_its_process_memory(job_report):
    assert 0 < job_report["baseline_host_rss_mib"] <= job_report["peak_host_rss_mib"]
    assert job_report["process_id"] == os.getpid()
    env = job_report["environment"]
    for key in ("backend", "device_kind", "jax_version", "jaxlib_version", "xla_flags"):
        assert key in env
    assert len(env["load_average"]) == 3


def test_ged_matches_the_python_loop():
    ged = benchmarking.benchmark_ged(TINY)
    for key in ("ms_per_image", "pairs_per_s", "loop_ms_per_image", "speedup_vs_loop"):
        assert _positive(ged[key]), (key, ged[key])
    assert ged["pairs_per_image"] == 16 * 16 + 16 * 4 + 4 * 4
    assert ged["matches_loop"] and ged["max_abs_difference_vs_loop"] <= benchmarking.GED_TOLERANCE


@pytest.mark.parametrize("unbiased", [False, True])
def test_loop_ged_agrees_with_the_library(unbiased):
    rng = np.random.default_rng(3)
    samples = (rng.random((3, 5, 6, 7)) < 0.3).astype(np.uint8)
    annotations = (rng.random((3, 3, 6, 7)) < 0.3).astype(np.uint8)
    samples[0, :2] = 0  # empty masks: against each other at distance 0
    annotations[1] = 0
    want = metrics.generalized_energy_distance(samples, annotations, unbiased=unbiased)
    got = benchmarking.loop_ged(samples, annotations, unbiased=unbiased)
    for name, value in got._asdict().items():
        np.testing.assert_allclose(value, np.asarray(getattr(want, name)), atol=1e-6, err_msg=name)


def test_loop_ged_of_identical_sets_is_zero():
    masks = np.zeros((1, 3, 4, 4), np.uint8)
    masks[0, 1, :2] = 1
    assert benchmarking.loop_ged(masks, masks).ged == pytest.approx([0.0], abs=1e-12)


def test_jobs_cover_configs_variants_and_batch_sizes():
    both = ("experiments/configs/default.py", TEST_CONFIG)
    own = benchmarking.jobs(dataclasses.replace(TINY, configs=both, batch_sizes=()))
    assert [(os.path.basename(j.config), j.batch_size) for j in own] == [
        ("default.py", 16),
        ("test.py", 4),
    ]
    options = dataclasses.replace(TINY, configs=both, variants=("aa", "fc"), batch_sizes=(8, 32))
    todo = benchmarking.jobs(options)
    assert len(todo) == len(set(todo)) == 2 * 2 * 2
    assert {j.batch_size for j in todo} == {8, 32} and {j.variant for j in todo} == {"aa", "fc"}


@pytest.mark.parametrize(
    "changes",
    [
        dict(variants=("nope",)),
        dict(batch_sizes=(8, 0)),
        dict(steps=0),
        dict(ged_loop_images=5),
        dict(warmup_steps=-1),
        dict(configs=()),
    ],
)
def test_bad_options_raise_value_error(changes):
    with pytest.raises(ValueError):
        dataclasses.replace(TINY, **changes).validate()


def test_a_bad_config_fails_before_any_measurement():
    with pytest.raises(FileNotFoundError):
        benchmarking.run_benchmark(dataclasses.replace(TINY, configs=("nope.py",)))


def test_a_failed_job_is_reported_and_this_process_starts_no_backend(monkeypatch):
    def no_backend(*args, **kwargs):
        raise AssertionError("the parent process must not start a JAX backend")

    monkeypatch.setattr(jax, "devices", no_backend)
    monkeypatch.setattr(jax, "default_backend", no_backend)
    monkeypatch.setenv("JAX_PLATFORMS", "no_such_platform")  # the job's process fails
    report = benchmarking.run_benchmark(dataclasses.replace(TINY, skip_ged=True))
    (run,) = report["runs"]
    assert run["variant"] == "aa" and run["error"].startswith("exit code 1: ")
    assert "no_such_platform" in run["stderr_tail"]
    assert "| test.py | aa | 2 | failed: exit code 1" in benchmark_report.markdown(report)


def test_finite_or_none_makes_strict_json():
    value = {"a": [1.0, float("nan")], "b": (float("inf"),), "c": "x"}
    assert json.loads(json.dumps(benchmarking.finite_or_none(value), allow_nan=False)) == {
        "a": [1.0, None],
        "b": [None],
        "c": "x",
    }


# ----------------------------------------------------------------------------- the peer


def _run(variant: str, batch: int, filters=PAPER_FILTERS, train=1.0, sample=8.0) -> dict:
    return dict(
        config="experiments/configs/paper.py",
        variant=variant,
        batch_size=batch,
        filters=filters,
        image_size=128,
        train=dict(images_per_s=train),
        sample=dict(images_per_s=sample),
        peak_host_rss_mib=2000.0,
        baseline_host_rss_mib=300.0,
    )


def _report(runs: list[dict], ged: dict | None = None) -> dict:
    report = dict(
        date="today",
        options=dataclasses.asdict(benchmarking.Options()),
        load_average_start=[1.0, 1.0, 1.0],
        runs=runs,
        load_average_end=[2.0, 2.0, 2.0],
    )
    return report if ged is None else dict(report, ged=ged)


def _peer(batch: int, aa_train: float, aa_infer: float) -> dict:
    return dict(
        config=dict(num_filters=PAPER_FILTERS, batch_size=batch, input=[1, 128, 128]),
        summary=dict(gpunet_AA=dict(train_images_per_s=aa_train, infer_images_per_s=aa_infer)),
        ged=dict(
            n_samples=16, n_annotations=4, hw=[128, 128], ged_loop_reference={"ms_per_image": 60.0}
        ),
    )


def test_peer_ratios_per_variant_and_batch_size():
    runs = [_run("aa", 8), _run("aa", 32), _run("fc", 8), _run("aa", 8, filters=[4, 8])]
    ged = dict(num_samples=16, num_annotations=4, image_size=128, ms_per_image=0.3)
    ged.update(pairs_per_s=3e6, loop_ms_per_image=7.0, speedup_vs_loop=23.0)
    peers = {"p8.json": _peer(8, 0.5, 4.0), "p32.json": _peer(32, 2.0, 16.0)}
    report = benchmark_report.with_peers(_report(runs, ged), peers)
    aa8, aa32, fc8, other = (run["peer"] for run in report["runs"])
    assert (aa8["file"], aa8["train_ratio"], aa8["sample_ratio"]) == ("p8.json", 2.0, 2.0)
    assert (aa32["file"], aa32["train_ratio"], aa32["sample_ratio"]) == ("p32.json", 0.5, 0.5)
    assert fc8 is None and other is None  # the peer has no FC; another network
    assert report["ged"]["peer"]["speed_ratio"] == pytest.approx(200.0)
    table = benchmark_report.markdown(report)
    assert "| paper.py | aa | 8 | 1 | 2.00× |" in table
    assert "| paper.py | aa | 32 | 1 | 0.50× |" in table and "| 200× |" in table


def test_a_file_that_is_not_the_peers_json_is_an_error(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"runs": []}))
    with pytest.raises(ValueError, match="other.json"):
        benchmark_report.load_peer(str(path))


# ----------------------------------------------------------------------------- the command


def _command(*args: str) -> tuple[int, subprocess.CompletedProcess]:
    """The launcher's process id and its result."""
    command = [sys.executable, "-m", "experiments.benchmark", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        stdout, stderr = p.communicate()
    return p.pid, subprocess.CompletedProcess(command, p.returncode, stdout, stderr)


def test_command_runs_each_job_in_a_process_of_its_own(tmp_path):
    out, peer = tmp_path / "bench.json", tmp_path / "peer.json"
    peer.write_text(json.dumps(_peer(2, 1.0, 1.0)))
    flags = ["--variants=aa", "--batch_sizes=2", "--skip_train", "--skip_sample"]
    flags += ["--ged_image_size=16", "--ged_batch=4", "--ged_repeats=2", "--ged_loop_images=2"]
    pid, result = _command(f"--configs={TEST_CONFIG}", *flags, f"--peer={peer}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert (run["variant"], run["batch_size"], run["peer"]) == ("aa", 2, None)  # peer: paper net
    assert "train" not in run and "sample" not in run and run["parameters"] > 0
    assert len({pid, run["process_id"], report["ged"]["process_id"]}) == 3
    for measured in (run, report["ged"]):
        assert 0 < measured["baseline_host_rss_mib"] <= measured["peak_host_rss_mib"]
    assert report["ged"]["matches_loop"]
    assert benchmarking.Options.from_json(report["options"]) == dataclasses.replace(
        TINY, steps=10, warmup_steps=1, sample_repeats=5, skip_train=True, skip_sample=True
    )  # every flag sets its field; the defaults are Options'
    assert result.stdout == benchmark_report.markdown(report)
    assert "| test.py | aa | 2 |" in result.stdout
    assert run["environment"]["device_kind"] in result.stdout.splitlines()[0]


def test_command_names_a_bad_flag_value_in_one_line():
    _, result = _command("--batch_sizes=8,x")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("FATAL: --batch_sizes must be")
