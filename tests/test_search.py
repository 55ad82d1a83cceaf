"""Hyperparameter search: search space, trials and their store, selection by validation GED,
the report files, chunked (Ray) training, the launcher, and a tiny real search."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from experiments.configs import test as test_config
from probunet_jax import config as config_lib
from probunet_jax import presets, search
from probunet_jax.search import ray_backend, report, selection, space, trials

ROOT = Path(__file__).resolve().parents[1]
PAPER_GRID = 4 * 3  # latent dims × betas


def _base(data_dir=None) -> ml_collections.ConfigDict:
    config = test_config.get_config()
    if data_dir is not None:
        config.data.data_dir = str(data_dir)
    return config


class FakeTrainer:
    """A trial function that records its calls; its loss grows with β (as a real one does)."""

    def __init__(self):
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, config, workdir):
        self.calls.append((workdir, int(config.train.num_steps), int(config.eval.num_samples)))
        loss = float(config.model.beta) + 0.01 * config.model.latent_dim
        return {"best_validation_loss": loss, "best_step": 2, "final_step": 4, "evaluation": None}


def fake_validation(workdir: str) -> dict:
    """A validation summary whose GED is lowest at β = 10 (read from the trial's record)."""
    overrides = json.loads((Path(workdir) / trials.TRIAL_FILE).read_text())["overrides"]
    ged = abs(math.log10(overrides["beta"]) - 1) + 0.01 * overrides["latent_dim"]
    return {"metrics": {"ged": {"mean": ged}, "oracle_ged": {"mean": 0.1}}}


def _fake_run(root, select_by="ged", train_fn=None, **kwargs) -> search.SearchSummary:
    return search.run(
        _base(),
        "fc",
        root,
        space=search.SearchSpace(latent_dims=(2, 4), betas=(1.0, 10.0, 100.0)),
        select_by=select_by,
        train_fn=train_fn or FakeTrainer(),
        validation_fn=fake_validation,
        log=lambda _: None,
        **kwargs,
    )


# --------------------------------------------------------------------------- search space


@pytest.mark.parametrize(
    "variant, num_random, expected",
    [("aa", 5, PAPER_GRID), ("fc", 1, PAPER_GRID), ("mixture_fc", 3, 3 * PAPER_GRID)],
)
def test_grid_size(variant, num_random, expected):
    assert len(space.search_points(variant, num_random=num_random)) == expected
    grid = {(p["latent_dim"], p["beta"]) for p in space.search_points(variant, num_random=2)}
    assert grid == {(d, b) for d in (2, 4, 6, 8) for b in (1.0, 10.0, 100.0)}


def test_low_rank_grid_drops_duplicate_draws():
    # At latent dim 2 the only rank is 1: the draws collapse to one trial per β.
    points = space.search_points("lr", num_random=4)
    assert sum(p["latent_dim"] == 2 for p in points) == 3
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)


@pytest.mark.parametrize("variant", list(presets.VARIANTS))
def test_ranges_and_params_only_where_used(variant):
    points = space.search_points(variant, num_random=8, seed=3)
    preset = presets.VARIANTS[variant]
    expected = {"latent_dim", "beta"}
    if preset["latent_kind"] == "lr":
        expected.add("rank")
    if preset.get("num_components", 1) > 1:
        expected |= {"num_components", "temperature"}
    if preset.get("flow", "none") != "none":
        expected.add("flow_layers")
    for p in points:
        assert set(p) == expected
        assert p["latent_dim"] in (2, 4, 6, 8) and p["beta"] in (1.0, 10.0, 100.0)
        if "rank" in p:
            assert 1 <= p["rank"] <= 5 and p["rank"] < p["latent_dim"]
            assert type(p["rank"]) is int
        if "num_components" in p:
            assert 1 <= p["num_components"] <= 10 and type(p["num_components"]) is int
            assert 0.1 <= p["temperature"] <= 0.5 and type(p["temperature"]) is float
        if "flow_layers" in p:
            assert 1 <= p["flow_layers"] <= 8 and type(p["flow_layers"]) is int
    if "rank" in expected:  # The range is covered where latent dim allows it.
        assert {p["rank"] for p in points if p["latent_dim"] == 8} >= {1, 5}


def test_draws_are_seeded_and_stable():
    a = space.search_points("mixture_lr", num_random=2, seed=0)
    assert a == space.search_points("mixture_lr", num_random=2, seed=0)
    assert a != space.search_points("mixture_lr", num_random=2, seed=1)
    # More draws per grid point keep the earlier ones.
    more = space.search_points("mixture_lr", num_random=3, seed=0)
    assert all(p in more for p in a)


def test_bad_search_space():
    with pytest.raises(ValueError, match="Unknown model variant 'gaussian'"):
        space.search_points("gaussian")
    with pytest.raises(ValueError, match="Empty search space"):
        space.search_points("aa", search.SearchSpace(latent_dims=()))
    with pytest.raises(ValueError, match="Empty search space"):
        space.search_points("lr", search.SearchSpace(latent_dims=(1,)))
    with pytest.raises(ValueError, match="num_random"):
        space.search_points("aa", num_random=0)
    with pytest.raises(ValueError, match="temperature"):
        space.search_points("mixture_aa", search.SearchSpace(temperature_range=(0.0, 0.5)))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(backend="slurm"), "Unknown backend 'slurm'"),
        (dict(select_by="nll"), "Unknown select_by 'nll'"),
        (dict(num_samples=0), "num_samples must be >= 1"),
    ],
)
def test_bad_arguments_fail_before_any_training(tmp_path, arguments, message):
    fake = FakeTrainer()
    with pytest.raises(ValueError, match=message):
        _fake_run(tmp_path, train_fn=fake, **arguments)
    assert fake.calls == [] and not (tmp_path / trials.TRIALS_DIR).exists()


def test_trials_are_valid_configs_of_the_base_that_never_see_test():
    base = _base()
    made = search.make_trials(base, "mixture_lr", num_random=1)
    ids = [t.trial_id for t in made]
    assert len(set(ids)) == len(ids)
    assert ids == [t.trial_id for t in search.make_trials(base, "mixture_lr", num_random=1)]
    for trial in made:
        config_lib.validate(trial.config)
        model = trial.config.model
        assert trial.variant == "mixture_lr" and model.latent_kind == "lr"
        assert tuple(model.filters) == tuple(base.model.filters)
        assert model.kl_samples == base.model.kl_samples
        assert all(model[k] == v for k, v in trial.overrides.items())
        assert trial.config.eval.split == "validation" and trial.config.eval.num_samples == 0
        assert trial.config.train.to_dict() == base.train.to_dict()
    # Another base config gives other ids (a finished trial of another search is not reused).
    other = _base()
    other.train.num_steps = 8
    assert search.make_trials(other, "mixture_lr")[0].trial_id != ids[0]


def test_a_trial_off_the_preset_is_custom():
    made = search.make_trials(_base(), "fc", search.SearchSpace(latent_dims=(2, 4), betas=(10.0,)))
    assert [t.config.model.variant for t in made] == ["fc", presets.CUSTOM]
    assert [t.variant for t in made] == ["fc", "fc"]
    assert made[0].config.model.beta == 10.0


def test_ray_trials_get_absolute_data_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trial = search.make_trials(_base(), "aa", search.SearchSpace((2,), (1.0,)))[0]
    moved = ray_backend.with_absolute_paths(trial)
    assert moved.trial_id == trial.trial_id and trial.config.data.data_dir == "data"
    assert moved.config.data.data_dir == str(tmp_path / "data")
    assert moved.config.data.manual_dir == ""


def test_chunk_schedule():
    assert ray_backend.chunk_schedule(10, 4) == [4, 8, 10]
    assert ray_backend.chunk_schedule(8, 4) == [4, 8]
    assert ray_backend.chunk_schedule(3, 5) == [3]
    with pytest.raises(ValueError, match="chunk_steps"):
        ray_backend.chunk_schedule(3, 0)
    config = _base()  # 16 training examples, batch 4.
    assert ray_backend.default_chunk_steps(config) == config.train.eval_every_steps
    config.train.eval_every_steps = 0  # One epoch, counted at run time.
    assert ray_backend.default_chunk_steps(config) == 4


# --------------------------------------------------------------------------- runner, selection


def _load_with_config_flags(path) -> ml_collections.ConfigDict:
    """Loads a config file as ``experiments/train.py --config=path`` does."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values)
    values(["prog", f"--config={path}"])
    return values.config


def test_local_runner_resumes(tmp_path):
    made = search.make_trials(_base(), "mixture_fc", search.SearchSpace((2, 4), (10.0, 1.0)))
    fake = FakeTrainer()
    trial_fn = selection.scored(fake, fake_validation)
    trials.run_local(made[:2], tmp_path, trial_fn, log=lambda _: None)
    assert len(fake.calls) == 2
    lines = []
    outcomes = trials.run_local(made, tmp_path, trial_fn, log=lines.append)
    assert len(fake.calls) == 4  # The first two were not re-run.
    assert [o.status for o in outcomes] == ["finished"] * 4
    assert "done before" in lines[0] and "validation_ged=" in lines[0]
    assert outcomes[0].result["validation_oracle_ged"] == 0.1


def test_a_large_beta_wins_by_ged_and_loses_by_loss(tmp_path):
    by_ged = _fake_run(tmp_path / "ged")
    assert by_ged.best.trial.overrides == {"latent_dim": 2, "beta": 10.0}
    assert by_ged.best.result["best_validation_loss"] > min(
        o.result["best_validation_loss"] for o in by_ged.outcomes
    )
    by_loss = _fake_run(tmp_path / "loss", select_by="loss")
    assert by_loss.best.trial.overrides == {"latent_dim": 2, "beta": 1.0}
    for summary, root in ((by_ged, tmp_path / "ged"), (by_loss, tmp_path / "loss")):
        best = json.loads((root / report.BEST_JSON).read_text())
        assert best["trial_id"] == summary.best.trial.trial_id
        assert best["select_by"] == summary.select_by
        assert best["validation_ged"] == summary.best.result["validation_ged"]
        assert best["best_validation_loss"] == summary.best.result["best_validation_loss"]
        assert best["validation_oracle_ged"] == 0.1


def test_tables_and_best_config(tmp_path):
    summary = _fake_run(tmp_path)
    with open(tmp_path / report.TABLE_CSV) as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == [o.trial.trial_id for o in summary.outcomes]
    assert {r["variant"] for r in rows} == {"fc"} and rows[0]["rank"] == ""
    for row, outcome in zip(rows, summary.outcomes, strict=True):
        assert float(row["beta"]) == outcome.trial.overrides["beta"]
        assert float(row["validation_ged"]) == outcome.result["validation_ged"]
        assert float(row["best_validation_loss"]) == outcome.result["best_validation_loss"]
        assert float(row["validation_oracle_ged"]) == 0.1
    table = json.loads((tmp_path / report.TABLE_JSON).read_text())
    assert table[3]["config"]["model"]["variant"] == presets.CUSTOM  # latent dim 4
    assert table[3]["variant"] == "fc" and table[3]["result"]["validation_ged"] > 0

    loaded = _load_with_config_flags(tmp_path / report.BEST_CONFIG)
    expected = report.release_config(summary.best.trial, _base())
    assert loaded.to_dict() == expected.to_dict()
    assert loaded.eval.to_dict() == _base().eval.to_dict()  # The real run evaluates on test.
    config_lib.validate(loaded)
    assert summary.best.trial.trial_id in search.describe(summary)


def test_best_config_must_give_back_the_config():
    config = _base()
    config.notes = "a field the schema does not know"
    with pytest.raises(ValueError, match="not a plain get_config"):
        report.best_config_source(config)


def test_select_best_skips_pending_and_nan():
    made = search.make_trials(_base(), "aa", search.SearchSpace(latent_dims=(2,)))
    metric = selection.METRICS["ged"]
    outcomes = [
        trials.TrialResult(made[0], "finished", {metric: math.nan}, "a"),
        trials.TrialResult(made[1], "stopped", {metric: 3.0}, "b"),
        trials.TrialResult(made[2], "pending", {}, "c"),
    ]
    assert selection.select_best(outcomes, metric).workdir == "b"
    with pytest.raises(ValueError, match="No trial has a finite validation_ged"):
        selection.select_best(outcomes[::2], metric)


def test_scored_needs_the_training_loss(tmp_path):
    trial_fn = selection.scored(lambda config, workdir: {"final_step": 4}, fake_validation)
    with pytest.raises(ValueError, match="no 'best_validation_loss'"):
        trial_fn(_base(), str(tmp_path))


def test_chunked_trial_reports_the_ged_after_each_chunk(tmp_path):
    trial = search.make_trials(_base(), "fc", search.SearchSpace((2,), (1.0,)))[0]
    fake = FakeTrainer()
    trial_fn = selection.scored(fake, fake_validation)
    results = list(ray_backend.run_chunked(trial, tmp_path, trial_fn, chunk_steps=3))
    assert [steps for _, steps, _ in fake.calls] == [3, 4]
    assert len({w for w, _, _ in fake.calls}) == 1 and len(results) == 2
    assert all(r["validation_ged"] == results[0]["validation_ged"] for r in results)
    assert trials.load_trial(tmp_path, trial).status == "finished"
    assert list(ray_backend.run_chunked(trial, tmp_path, trial_fn, chunk_steps=3)) == [results[-1]]
    assert len(fake.calls) == 2


def test_ray_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[ray\]'"):
        ray_backend.import_ray_tune()


def test_launcher_dry_run_lists_the_trials(tmp_path):
    command = [
        *(sys.executable, "-m", "experiments.sweep", f"--root={tmp_path}", "--dry_run"),
        *("--base_config=experiments/configs/test.py", "--variant=fc"),
        *("--latent_dims=2,4", "--betas=1,10", "--base_config.train.num_steps=8"),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    base = _base()
    base.train.num_steps = 8
    made = search.make_trials(base, "fc", search.SearchSpace((2, 4), (1.0, 10.0)))
    assert [line.split()[0] for line in result.stdout.splitlines()[:-1]] == [
        t.trial_id for t in made
    ]
    assert result.stdout.splitlines()[-1] == "4 trials" and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def test_tiny_local_search_end_to_end(tmp_path, data_dir):
    """2 trials × 4 steps of the test config with the real trainer and validation GED, resumed
    once. The axis-aligned variant compiles fastest; the other variants differ only in config.
    """
    from probunet_jax import train

    base = _base(data_dir)
    calls = []

    def trainer(config, workdir):
        calls.append(workdir)
        return train.train_and_evaluate(config, workdir)

    arguments = dict(
        space=search.SearchSpace(latent_dims=(2,), betas=(1.0, 10.0)),
        num_samples=2,
        train_fn=trainer,
    )
    root = tmp_path / "search"
    summary = search.run(base, "aa", root, **arguments)
    assert len(calls) == 2 and all(o.status == "finished" for o in summary.outcomes)
    geds = [o.result["validation_ged"] for o in summary.outcomes]
    assert all(math.isfinite(g) for g in geds)
    assert summary.best.result["validation_ged"] == min(geds)
    assert summary.best.result["validation"]["num_samples"] == 2
    assert all(math.isfinite(o.result["validation_oracle_ged"]) for o in summary.outcomes)
    best = json.loads((root / report.BEST_JSON).read_text())
    assert best["validation_ged"] == pytest.approx(min(geds))

    again = search.run(base, "aa", root, **arguments, select_by="loss")
    assert len(calls) == 2  # Nothing trained again.
    losses = [o.result["best_validation_loss"] for o in again.outcomes]
    assert again.best.result["best_validation_loss"] == min(losses)

    loaded = _load_with_config_flags(root / report.BEST_CONFIG)
    assert loaded.model.beta == again.best.trial.overrides["beta"]
    assert loaded.eval.split == base.eval.split


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed: the Ray Tune backend is an optional extra; to check it, "
    "pip install -e '.[ray]' && pytest tests/test_search.py -k ray",
)
def test_ray_backend_tiny(tmp_path, data_dir):
    """2 trials of 4 steps, reported in chunks of 2 to ASHA, on a local 1-CPU Ray instance."""
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        summary = search.run(
            _base(data_dir),
            "mixture_fc",
            tmp_path,
            space=search.SearchSpace(latent_dims=(2,), betas=(1.0, 100.0)),
            num_samples=2,
            backend="ray",
            ray_options=search.RayOptions(chunk_steps=2, max_concurrent=1),
        )
    finally:
        ray.shutdown()
    assert {o.status for o in summary.outcomes} <= {"finished", "stopped"}
    assert (tmp_path / report.BEST_CONFIG).exists()
    assert math.isfinite(summary.best.result["validation_ged"])
