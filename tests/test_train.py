"""Tests of training: every variant steps, resume is bitwise, N devices = 1 device, bad cases.

Everything is tiny (16 x 16 images, filters (4, 8)); compiled programs are shared between the
runs of this file through a persistent compilation cache in a temporary folder.
"""

import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import TEST_CONFIG

from probunet_jax import checkpointing, losses, metrics, presets, sampling, sharding, train
from probunet_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def random_batch(size: int = 16, batch: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.random((batch, size, size, 1), np.float32),
        "mask": (rng.random((batch, size, size)) > 0.5).astype(np.uint8),
    }


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(config, tmp_path):
    whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
    config.train.num_steps = 2  # Stop halfway, then run the same command to step 4.
    first = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert first["final_step"] == 2
    config.train.num_steps = 4
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert whole["final_step"] == resumed["final_step"] == 4
    assert whole["best_validation_loss"] == resumed["best_validation_loss"]
    results = []
    for name in ("whole", "resumed"):
        restored_config, model, variables = checkpointing.restore_best(str(tmp_path / name))
        assert restored_config.model.variant == "mixture_fc"
        assert model.filters == (4, 8)
        results.append(leaves(variables))
    assert all(np.array_equal(a, b) for a, b in zip(*results, strict=True))

    lines = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").open()]
    assert {(r["split"], r["step"]) for r in lines} == {
        ("train", 2),
        ("train", 4),
        ("validation", 2),
        ("validation", 4),
    }
    assert all(np.isfinite(r["loss"]) for r in lines)
    assert "steps_per_second" in lines[0] and "eta_seconds" in lines[0]
    assert os.listdir(tmp_path / "whole" / "tensorboard")

    # The latest periodic checkpoint (state and all) is the same too.
    states = []
    for name in ("whole", "resumed"):
        _, _, state = train.create_train_state(config, jax.random.key(1), (16, 16, 1))
        ckpt = checkpointing.Checkpointer(str(tmp_path / name))
        restored = ckpt.restore(state, train.variables_of(state), _iterator(config))
        ckpt.close()
        assert restored.step == 4
        states.append(leaves(restored.state))
    assert all(np.array_equal(a, b) for a, b in zip(*states, strict=True))


def _iterator(config):
    from probunet_jax import data

    return data.make_train_iterator(config.data, config.train.batch_size)


def _trained_workdir(config, tmp_path) -> str:
    """A workdir trained for 4 steps (periodic checkpoints at steps 2 and 4)."""
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    return workdir


def test_different_config_in_the_same_workdir_is_rejected(config, tmp_path):
    workdir = str(tmp_path / "run")
    checkpointing.write_config(workdir, config)
    other = ml_collections.ConfigDict(config.to_dict())
    other.model.beta = 10.0
    other.train.batch_size = 8
    with pytest.raises(ValueError, match=r"model\.beta.*train\.batch_size|different config"):
        train.train_and_evaluate(other, workdir)
    with pytest.raises(ValueError, match=r"model\.beta: 1\.0 -> 10\.0"):
        checkpointing.write_config(workdir, other)
    extended = ml_collections.ConfigDict(config.to_dict())
    extended.train.num_steps = 100
    extended.eval.num_samples = 16
    checkpointing.write_config(workdir, extended)  # Allowed: they do not change the run.
    assert checkpointing.load_config(workdir).train.num_steps == 100


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model.variant", "gaussian", "Unknown model variant"),
        ("model.variant", "aa", r"model.variant 'aa' has latent_kind 'aa'.*latent_kind 'fc'"),
        ("model.latent_dim", 3, r"'mixture_fc' has latent_dim 2.*latent_dim 3.*'custom'"),
        ("data.image_size", 17, r"are 17 x 17: both must be divisible by 2"),
        ("data.name", "mnist", "No data set .mnist. is built"),
        ("model.num_classes", 3, "has 2 classes, so model.num_classes must be 1"),
        ("eval.split", "tset", "Unknown eval split"),
        ("train.batch_size", 0, "train.batch_size must be >= 1"),
        ("train.learning_rate", -1.0, "learning_rate must be > 0"),
    ],
)
def test_bad_config_values_are_rejected(config, tmp_path, field, value, message):
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(config, tmp_path):
    config.train.checkpoint_every_steps = 1
    config.train.log_every_steps = 1
    place = sharding.shard_batch
    calls = []

    def poisoned(batch, mesh):
        if "mask" in batch:  # A training batch.
            calls.append(None)
            if len(calls) == 3:
                batch = dict(batch, image=np.full_like(batch["image"], np.nan))
        return place(batch, mesh)

    workdir = str(tmp_path / "run")
    with mock.patch.object(sharding, "shard_batch", poisoned):
        with pytest.raises(FloatingPointError, match=r"at step 3.*checkpoint is step 2"):
            train.train_and_evaluate(config, workdir)
    ckpt = checkpointing.Checkpointer(workdir)
    assert ckpt.latest_step() == 2
    _, _, state = train.create_train_state(config, jax.random.key(1), (16, 16, 1))
    restored = ckpt.restore(state, train.variables_of(state), _iterator(config))
    ckpt.close()
    assert restored.step == 2 and all(np.isfinite(x).all() for x in leaves(restored.state))


def _corrupt(step_dir: str) -> None:
    """Overwrites every array data file of the step's train state with garbage."""
    for folder, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"garbage")


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(config, tmp_path):
    workdir = _trained_workdir(config, tmp_path)
    latest = os.path.join(workdir, "checkpoints", "latest")
    assert sorted(os.listdir(latest)) == ["2", "4"]
    _corrupt(os.path.join(latest, "4"))
    _, _, state = train.create_train_state(config, jax.random.key(1), (16, 16, 1))
    ckpt = checkpointing.Checkpointer(workdir)
    with mock.patch.object(checkpointing.logging, "warning") as warning:
        restored = ckpt.restore(state, train.variables_of(state), _iterator(config))
    message = warning.call_args[0][0] % warning.call_args[0][1:]
    assert "checkpoint at step 4 is corrupt" in message and "falling back to step 2" in message
    assert restored.step == 2 and int(restored.state.step) == 2
    assert ckpt.latest_step() == 2  # Moved aside, so that step 4 can be saved again.
    assert os.listdir(os.path.join(workdir, "checkpoints", "corrupt"))

    _corrupt(os.path.join(latest, "2"))
    with pytest.raises(RuntimeError, match="Every checkpoint .* is corrupt"):
        ckpt.restore(state, train.variables_of(state), _iterator(config))
    ckpt.close()


def test_restore_best_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a training workdir"):
        checkpointing.restore_best(str(tmp_path))


MULTI_DEVICE = textwrap.dedent(
    """
    import jax, numpy as np
    from probunet_jax import config, sharding, train

    assert jax.device_count() == 4, jax.devices()
    config = config.load_config_file(%r)
    config.train.batch_size = 8
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random((8, 16, 16, 1), np.float32),
        "mask": (rng.random((8, 16, 16)) > 0.5).astype(np.uint8),
    }
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = sharding.make_mesh(devices)
        model, optimizer, state = train.create_train_state(
            config, jax.random.key(0), (16, 16, 1), mesh
        )
        step = train.make_train_step(model, optimizer, config, mesh)
        placed = sharding.shard_batch(batch, mesh)
        assert len(placed["image"].sharding.device_set) == len(devices)
        state, metrics = step(state, placed)
        results.append(jax.device_get((metrics, state.params, state.batch_stats)))
    (m1, p1, s1), (m4, p4, s4) = results
    for name in m1:
        np.testing.assert_allclose(m1[name], m4[name], rtol=1e-4, atol=1e-4, err_msg=name)
    for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p4, s4))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    print("OK", float(m1["loss"]), float(m4["loss"]))
    """
)


def test_four_devices_match_one_device(cache_dir):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=cache_dir,
        PYTHONPATH=ROOT,
    )
    result = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE % (TEST_CONFIG,)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_launcher_trains_and_evaluates(data_dir, cache_dir, tmp_path):
    workdir = str(tmp_path / "run")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir, PYTHONPATH=ROOT)
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config=experiments/configs/test.py",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test GED" in result.stdout and "oracle" in result.stdout
    for name in ("config.json", "metrics.jsonl", "eval/summary.json", "eval/per_image.csv"):
        assert os.path.exists(os.path.join(workdir, name)), name
    summary = json.loads(open(os.path.join(workdir, "eval", "summary.json")).read())
    assert np.isfinite(summary["metrics"]["ged"]["mean"])

    bad = subprocess.run(
        command + ["--config.train.no_such_key=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "no_such_key" in bad.stderr


def test_eval_step_weights_valid_images_only(make_config):
    config = make_config("fc", train=dict(validation_samples=3))
    mesh = sharding.make_mesh()
    model, _, state = train.create_train_state(config, jax.random.key(0), (16, 16, 1), mesh)
    eval_step = train.make_eval_step(model, config, mesh)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random((4, 16, 16, 1), np.float32),
        "masks": (rng.random((4, 2, 16, 16)) > 0.5).astype(np.uint8),
        "rater_valid": np.ones((4, 2), bool),
        "index": np.arange(4, dtype=np.int32),
        "valid": np.array([True, True, True, False]),
    }
    key = jax.random.key(0)
    variables = train.variables_of(state)
    sums = jax.device_get(eval_step(variables, sharding.shard_batch(batch, mesh), key))
    assert sums["count"] == 3
    padded = dict(batch, image=batch["image"].copy())
    padded["image"][3] = 1e3  # A padding row's content must not matter.
    again = jax.device_get(eval_step(variables, sharding.shard_batch(padded, mesh), key))
    np.testing.assert_allclose(sums["loss"], again["loss"], rtol=1e-6)
    assert jnp.isfinite(sums["loss"])
    # The validation GED is that of the sampler's masks (key: the third of the step's keys).
    sample_key = jax.random.split(key, 3)[2]
    masks = sampling.sample_masks(model, variables, batch["image"], sample_key, num_samples=3)
    ged = metrics.generalized_energy_distance(masks, batch["masks"]).ged
    np.testing.assert_allclose(sums["ged"], np.sum(np.asarray(ged)[:3]), rtol=1e-5)
    # A padded rater slot (a junk mask, rater_valid False) changes nothing.
    junk = dict(
        batch,
        masks=np.concatenate([batch["masks"], np.ones((4, 1, 16, 16), np.uint8)], axis=1),
        rater_valid=np.concatenate([batch["rater_valid"], np.zeros((4, 1), bool)], axis=1),
    )
    with_junk = jax.device_get(eval_step(variables, sharding.shard_batch(junk, mesh), key))
    for name in ("loss", "reconstruction", "kl", "ged"):
        np.testing.assert_allclose(with_junk[name], sums[name], rtol=1e-5)


def test_selection_by_validation_ged(config, tmp_path):
    config.train.update(validation_samples=2, select_by="ged")
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    validation = [r for r in lines if r["split"] == "validation"]
    assert [r["step"] for r in validation] == [2, 4]
    best = min(validation, key=lambda r: (r["ged"], r["step"]))
    assert (result["best_step"], result["best_validation_ged"]) == (best["step"], best["ged"])
    step, _, info = checkpointing.restore_best_variables(str(tmp_path / "run"))
    assert step == best["step"] and info["validation_ged"] == best["ged"]
    assert info["validation_loss"] == best["loss"]


def test_geco_at_its_multiplier_cap_warns_and_logs_the_multiplier(config, tmp_path):
    # A target 1e-6 nats per pixel: the first step's constraint is ~1e6, λ jumps to its cap.
    config.train.update(geco_target=1e-6, geco_rate=1.0, geco_decay=0.0)
    with mock.patch.object(train.logging, "log_first_n") as warn:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert any("reached its cap" in call.args[1] for call in warn.call_args_list)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    multipliers = [r["geco_multiplier"] for r in lines if r["split"] == "train"]
    assert multipliers and multipliers[-1] == pytest.approx(losses.GECO_MULTIPLIER_RANGE[1])


# Mixture-FC (the test config's model) compiles to the program the training loop already
# compiled (cache hit); each other variant costs a compilation of its own (~30 s on 2 cores).
@pytest.mark.parametrize(
    "variant",
    [v if v == "mixture_fc" else pytest.param(v, marks=pytest.mark.slow) for v in presets.VARIANTS],
)
def test_every_variant_takes_finite_steps(variant, make_config):
    config = make_config(variant)
    mesh = sharding.make_mesh()
    model, optimizer, state = train.create_train_state(config, jax.random.key(0), (16, 16, 1), mesh)
    before = leaves(state.params)
    step = train.make_train_step(model, optimizer, config, mesh)
    for i in range(2):
        state, metrics = step(state, sharding.shard_batch(random_batch(seed=i), mesh))
        learned = {"sparsity", "components_active"} if variant == "mixture_fc_auto" else set()
        assert set(metrics) == {
            "loss",
            "reconstruction",
            "kl",
            "grad_norm",
            "learning_rate",
            "kl_weight",
            *learned,
        }
        assert all(np.isfinite(float(v)) for v in metrics.values())
    assert int(state.step) == 2
    assert any(not np.array_equal(a, b) for a, b in zip(before, leaves(state.params), strict=True))


def test_early_stopping_counts_evaluations_without_improvement():
    early = train.EarlyStopping()
    history = []
    for step, loss in enumerate([5.0, 4.0, 4.5, 4.0, 3.0, 3.5, 3.9], start=1):
        early, improved = early.update(loss, step, patience=2)
        history.append((improved, early.stopped))
    assert history == [
        (True, False),
        (True, False),
        (False, False),
        (False, True),  # 2 evaluations without a new best (ties do not count as better).
        (True, False),
        (False, False),
        (False, True),
    ]
    assert early.best_value == 3.0 and early.best_step == 5
    assert train.EarlyStopping.from_json(json.loads(json.dumps(early.to_json()))) == early
    assert train.EarlyStopping().to_json()["best_value"] is None


def test_epoch_intervals():
    assert train.steps_per_epoch(1024, 16) == 64
    assert train.steps_per_epoch(1030, 16, process_count=2) == 64  # 515 records per process.
    assert train.steps_per_epoch(3, 16) == 1
    assert train.resolve_interval(config_lib.ONE_EPOCH, 64) == 64
    assert train.resolve_interval(10, 64) == 10


def test_a_config_of_an_older_version_gets_the_missing_fields_defaults(config, tmp_path):
    workdir = tmp_path / "old"
    checkpointing.write_config(str(workdir), config)
    stored = json.loads((workdir / "config.json").read_text())
    del stored["train"]["schedule"], stored["model"]["norm"]
    (workdir / "config.json").write_text(json.dumps(stored))
    loaded = checkpointing.load_config(str(workdir))
    assert (loaded.train.schedule, loaded.model.norm) == ("constant", "paper")
    assert checkpointing.config_differences(loaded, config) == []
