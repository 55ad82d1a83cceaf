"""Hyperparameter sweep: search-space rules, resumable local runner, tables, best config, Ray."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from experiments.configs import test as test_config
from probunet_jax import presets, sweep

PAPER_GRID = 4 * 3  # latent dims × betas


def _base(tmp_path=None) -> ml_collections.ConfigDict:
    config = test_config.get_config()
    if tmp_path is not None:
        config.data.data_dir = str(tmp_path)
    return config


class FakeTrainer:
    """A trial function that records its calls; loss grows with β and latent dim."""

    def __init__(self):
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, config, workdir):
        self.calls.append((workdir, int(config.train.num_steps), int(config.eval.num_samples)))
        loss = float(config.model.beta) + 0.01 * config.model.latent_dim
        return {"best_validation_loss": loss, "best_step": 2, "final_step": 4, "evaluation": None}


# --------------------------------------------------------------------------- search space


@pytest.mark.parametrize(
    "variant, num_random, expected",
    [("aa", 5, PAPER_GRID), ("fc", 1, PAPER_GRID), ("mixture_fc", 3, 3 * PAPER_GRID)],
)
def test_grid_size(variant, num_random, expected):
    assert len(sweep.search_points(variant, num_random=num_random)) == expected
    grid = {(p["latent_dim"], p["beta"]) for p in sweep.search_points(variant, num_random=2)}
    assert grid == {(d, b) for d in (2, 4, 6, 8) for b in (1.0, 10.0, 100.0)}


def test_low_rank_grid_drops_duplicate_draws():
    # At latent dim 2 the only rank is 1: the draws collapse to one trial per β.
    points = sweep.search_points("lr", num_random=4)
    assert sum(p["latent_dim"] == 2 for p in points) == 3
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)


@pytest.mark.parametrize("variant", list(presets.VARIANTS))
def test_ranges_and_params_only_where_used(variant):
    points = sweep.search_points(variant, num_random=8, seed=3)
    preset = presets.VARIANTS[variant]
    expected = {"latent_dim", "beta"}
    if preset["latent_kind"] == "lr":
        expected.add("rank")
    if preset.get("num_components", 1) > 1:
        expected |= {"num_components", "temperature"}
    for p in points:
        assert set(p) == expected
        assert p["latent_dim"] in (2, 4, 6, 8) and p["beta"] in (1.0, 10.0, 100.0)
        if "rank" in p:
            assert 1 <= p["rank"] <= 5 and p["rank"] < p["latent_dim"]
            assert type(p["rank"]) is int
        if "num_components" in p:
            assert 1 <= p["num_components"] <= 10 and type(p["num_components"]) is int
            assert 0.1 <= p["temperature"] <= 0.5 and type(p["temperature"]) is float
    if "rank" in expected:  # The range is covered where latent dim allows it.
        assert {p["rank"] for p in points if p["latent_dim"] == 8} >= {1, 5}


def test_draws_are_seeded_and_stable():
    a = sweep.search_points("mixture_lr", num_random=2, seed=0)
    assert a == sweep.search_points("mixture_lr", num_random=2, seed=0)
    assert a != sweep.search_points("mixture_lr", num_random=2, seed=1)
    # More draws per grid point keep the earlier ones.
    more = sweep.search_points("mixture_lr", num_random=3, seed=0)
    assert all(p in more for p in a)


def test_bad_inputs():
    with pytest.raises(ValueError, match="Unknown model variant"):
        sweep.search_points("gaussian")
    with pytest.raises(ValueError, match="Empty search space"):
        sweep.search_points("aa", sweep.SearchSpace(latent_dims=()))
    with pytest.raises(ValueError, match="Empty search space"):
        sweep.search_points("lr", sweep.SearchSpace(latent_dims=(1,)))
    with pytest.raises(ValueError, match="num_random"):
        sweep.search_points("aa", num_random=0)
    with pytest.raises(ValueError, match="temperature"):
        sweep.search_points("mixture_aa", sweep.SearchSpace(temperature_range=(0.0, 0.5)))
    with pytest.raises(ValueError, match="Unknown backend"):
        sweep.run([], "/nonexistent", FakeTrainer(), backend="slurm")


def test_trials_keep_the_base_network_and_never_test():
    base = _base()
    trials = sweep.make_trials(base, "mixture_lr", num_random=1)
    ids = [t.trial_id for t in trials]
    assert len(set(ids)) == len(ids)
    assert ids == [t.trial_id for t in sweep.make_trials(base, "mixture_lr", num_random=1)]
    for trial in trials:
        model = trial.config.model
        assert model.variant == "mixture_lr" and model.latent_kind == "lr"
        assert tuple(model.filters) == tuple(base.model.filters)
        assert model.kl_samples == base.model.kl_samples
        assert all(model[k] == v for k, v in trial.overrides.items())
        assert trial.config.eval.split == "validation" and trial.config.eval.num_samples == 0
        assert trial.config.train.to_dict() == base.train.to_dict()
    # Another base config gives other ids (a finished trial of another sweep is not reused).
    other = _base()
    other.train.num_steps = 8
    assert sweep.make_trials(other, "mixture_lr")[0].trial_id != ids[0]


def test_ray_trials_get_absolute_data_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trial = sweep.make_trials(_base(), "aa", sweep.SearchSpace((2,), (1.0,)))[0]
    moved = sweep.with_absolute_paths(trial)
    assert moved.trial_id == trial.trial_id and trial.config.data.data_dir == "data"
    assert moved.config.data.data_dir == str(tmp_path / "data")
    assert moved.config.data.manual_dir == ""


def test_chunk_schedule():
    assert sweep.chunk_schedule(10, 4) == [4, 8, 10]
    assert sweep.chunk_schedule(8, 4) == [4, 8]
    assert sweep.chunk_schedule(3, 5) == [3]
    config = _base()  # 16 training examples, batch 4.
    assert sweep.default_chunk_steps(config) == config.train.eval_every_steps
    config.train.eval_every_steps = 0  # One epoch, counted at run time.
    assert sweep.default_chunk_steps(config) == 4


# --------------------------------------------------------------------------- runner, files


def _load_with_config_flags(path) -> ml_collections.ConfigDict:
    """Loads a config file as ``experiments/train.py --config=path`` does."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values)
    values(["prog", f"--config={path}"])
    return values.config


def test_local_runner_resumes_and_writes_the_best_config(tmp_path):
    base = _base()
    space = sweep.SearchSpace(latent_dims=(2, 4), betas=(10.0, 1.0))
    trials = sweep.make_trials(base, "mixture_fc", space, num_random=1)
    fake = FakeTrainer()
    outcomes = sweep.run_local(trials[:2], tmp_path, fake, log=lambda _: None)
    assert len(fake.calls) == 2
    outcomes = sweep.run_local(trials, tmp_path, fake, log=lambda _: None)
    assert len(fake.calls) == 4  # The first two were not re-run.
    assert [o.status for o in outcomes] == ["finished"] * 4

    summary = sweep.finish(
        tmp_path,
        outcomes,
        base=base,
        validation_fn=lambda w: {"metrics": {"ged": {"mean": 0.5}, "oracle_ged": {"mean": 0.2}}},
    )
    best = summary.best
    assert best.trial.overrides["beta"] == 1.0 and best.trial.overrides["latent_dim"] == 2
    record = json.loads((tmp_path / "best.json").read_text())
    assert record["trial_id"] == best.trial.trial_id and record["validation_ged"] == 0.5

    with open(tmp_path / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == [t.trial_id for t in trials]
    assert (
        rows[0]["rank"] == ""
        and float(rows[0]["temperature"]) == trials[0].overrides["temperature"]
    )
    table = json.loads((tmp_path / "trials.json").read_text())
    assert table[0]["config"]["model"]["latent_dim"] == trials[0].config.model.latent_dim

    loaded = _load_with_config_flags(tmp_path / "best_config.py")
    expected = sweep.release_config(best.trial, base)
    assert loaded.to_dict() == expected.to_dict()
    assert (
        loaded.eval.to_dict() == base.eval.to_dict()
    )  # The real run evaluates on the base's split (test).
    assert loaded.model.temperature == best.trial.overrides["temperature"]


def test_select_best_skips_pending_and_nan():
    trials = sweep.make_trials(_base(), "aa", sweep.SearchSpace(latent_dims=(2,)))
    outcomes = [
        sweep.TrialResult(trials[0], "finished", {"best_validation_loss": math.nan}, "a"),
        sweep.TrialResult(trials[1], "stopped", {"best_validation_loss": 3.0}, "b"),
        sweep.TrialResult(trials[2], "pending", {}, "c"),
    ]
    assert sweep.select_best(outcomes).workdir == "b"
    with pytest.raises(ValueError, match="No trial"):
        sweep.select_best(outcomes[::2])


def test_chunked_trial_resumes_in_chunks(tmp_path):
    trial = sweep.make_trials(_base(), "fc", sweep.SearchSpace((2,), (1.0,)), evaluate_trials=True)[
        0
    ]
    fake = FakeTrainer()
    results = list(sweep.run_chunked(trial, tmp_path, fake, chunk_steps=3))
    assert [(steps, samples) for _, steps, samples in fake.calls] == [(3, 0), (4, 2)]
    assert len({w for w, _, _ in fake.calls}) == 1 and len(results) == 2
    assert sweep.load_trial(tmp_path, trial).status == "finished"
    assert list(sweep.run_chunked(trial, tmp_path, fake, chunk_steps=3)) == [results[-1]]
    assert len(fake.calls) == 2


def test_ray_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[ray\]'"):
        sweep.import_ray_tune()


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def test_tiny_local_sweep_end_to_end(tmp_path, data_dir):
    """3 trials × 4 steps of the test config with the real trainer, resumed once.

    The axis-aligned variant compiles fastest; the other variants differ only in config.
    """
    from probunet_jax import train

    base = _base(data_dir)
    calls = []

    def trainer(config, workdir):
        calls.append(workdir)
        return train.train_and_evaluate(config, workdir)

    space = sweep.SearchSpace(latent_dims=(2,), betas=(1.0, 10.0, 100.0))
    root = tmp_path / "sweep"
    summary = sweep.run_sweep(base, "aa", root, space=space, trial_fn=trainer)
    assert len(calls) == 3 and all(o.status == "finished" for o in summary.outcomes)
    losses = [o.result["best_validation_loss"] for o in summary.outcomes]
    assert summary.best.result["best_validation_loss"] == min(losses)
    ged = summary.validation["metrics"]["ged"]["mean"]
    assert math.isfinite(ged) and "oracle_ged" in summary.validation["metrics"]
    assert json.loads((root / "best.json").read_text())["validation_ged"] == pytest.approx(ged)

    again = sweep.run_sweep(base, "aa", root, space=space, trial_fn=trainer, evaluate_winner=False)
    assert len(calls) == 3 and again.best.trial.trial_id == summary.best.trial.trial_id

    loaded = _load_with_config_flags(root / "best_config.py")
    assert loaded.model.beta == summary.best.trial.overrides["beta"]
    assert loaded.eval.split == base.eval.split


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed: the Ray Tune backend is an optional extra; to check it, "
    "pip install -e '.[ray]' && pytest tests/test_sweep.py -k ray",
)
def test_ray_backend_tiny(tmp_path, data_dir):
    """2 trials of 4 steps, reported in chunks of 2 to ASHA, on a local 1-CPU Ray instance."""
    import ray

    base = _base(data_dir)
    space = sweep.SearchSpace(latent_dims=(2,), betas=(1.0, 100.0))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        summary = sweep.run_sweep(
            base,
            "mixture_fc",
            tmp_path,
            space=space,
            backend="ray",
            ray_options=sweep.RayOptions(chunk_steps=2, max_concurrent=1),
        )
    finally:
        ray.shutdown()
    assert {o.status for o in summary.outcomes} <= {"finished", "stopped"}
    assert (tmp_path / "best_config.py").exists()
    assert math.isfinite(summary.validation["metrics"]["ged"]["mean"])
