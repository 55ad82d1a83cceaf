"""The training objective's options: KL warm-up, GECO, the learning rate schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probunet_jax import checkpointing, losses, sharding, train


def test_kl_weight_ramps_linearly_then_stays():
    weights = [float(losses.kl_weight(2.0, jnp.asarray(t), 4)) for t in (0, 1, 2, 4, 10)]
    assert weights == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert float(losses.kl_weight(2.0, jnp.asarray(0), 0)) == 2.0


def test_geco_loss_is_kl_plus_multiplier_times_constraint_with_a_constant_multiplier():
    state = losses.GecoState(jnp.asarray(3.0), jnp.asarray(0.0))

    def loss(reconstruction, kl, multiplier):
        metrics = {"reconstruction": reconstruction, "kl": kl}
        return losses.geco_loss(metrics, state._replace(multiplier=multiplier), 0.1, 100)[0]

    value = loss(20.0, 5.0, 3.0)
    np.testing.assert_allclose(value, 5.0 + 3.0 * (20.0 / (100 * 0.1) - 1), rtol=1e-6)
    grads = jax.grad(loss, argnums=(0, 1, 2))(20.0, 5.0, 3.0)
    np.testing.assert_allclose(grads, (3.0 / (100 * 0.1), 1.0, 0.0), rtol=1e-6)


def test_geco_starts_as_the_beta_one_elbo():
    state = losses.GecoState.initial(0.02, 64 * 64)

    def geco(reconstruction, kl):
        metrics = {"reconstruction": reconstruction, "kl": kl}
        return losses.geco_loss(metrics, state, 0.02, 64 * 64)[0]

    grads = jax.grad(geco, argnums=(0, 1))(90.0, 2.0)
    np.testing.assert_allclose(grads, (1.0, 1.0), rtol=1e-6)


def test_geco_multiplier_grows_while_the_constraint_is_violated_and_shrinks_after():
    state = losses.GecoState.initial()
    for _ in range(5):
        state = losses.geco_update(state, jnp.asarray(0.5), rate=0.1, decay=0.5)
    assert float(state.multiplier) > 1.0
    high = float(state.multiplier)
    for _ in range(20):
        state = losses.geco_update(state, jnp.asarray(-0.5), rate=0.1, decay=0.5)
    assert float(state.multiplier) < high and float(state.constraint_average) < 0


def test_cosine_schedule_warms_up_and_decays_to_zero(make_config):
    config = make_config(train=dict(schedule="cosine", warmup_steps=10, num_steps=110))
    schedule = train.learning_rate_schedule(config.train)
    rate = config.train.learning_rate
    np.testing.assert_allclose([schedule(0), schedule(10), schedule(110)], [0, rate, 0], atol=1e-9)
    np.testing.assert_allclose(schedule(60), rate / 2, rtol=1e-5)


def test_training_with_every_option_is_finite_and_logs_them(config, tmp_path):
    config.train.update(
        schedule="cosine", warmup_steps=2, kl_warmup_steps=2, geco_target=0.3, geco_rate=0.1
    )
    train.train_and_evaluate(config, str(tmp_path / "run"))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    first = [eval(line.replace("null", "None")) for line in lines if '"train"' in line][0]  # noqa: S307
    assert np.isfinite(first["loss"]) and 0 < first["learning_rate"] <= config.train.learning_rate
    assert first["kl_weight"] > 0
    # The schedule ends at train.num_steps: extending such a run would change it.
    config.train.num_steps = 8
    with pytest.raises(ValueError, match="only with a constant learning rate schedule"):
        checkpointing.write_config(str(tmp_path / "run"), config)


def test_l2_norm_penalty_is_in_the_training_loss(make_config):
    losses_by_penalty = []
    for penalty in (0.0, 0.5):
        config = make_config(train=dict(l2_norm_penalty=penalty))
        mesh = sharding.make_mesh()
        model, optimizer, state = train.create_train_state(config, jax.random.key(0), (16, 16, 1))
        norm = float(losses.latent_nets_norm(state.params))
        step = train.make_train_step(model, optimizer, config, mesh)
        batch = {
            "image": np.full((4, 16, 16, 1), 0.5, np.float32),
            "mask": np.zeros((4, 16, 16), np.uint8),
        }
        _, metrics = step(state, sharding.shard_batch(batch, mesh))
        losses_by_penalty.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses_by_penalty[1] - losses_by_penalty[0], 0.5 * norm, rtol=1e-4)
