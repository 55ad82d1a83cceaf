"""The model: shapes for every variant, the sampler against a naive loop, overfitting, errors."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from probunet_jax import flows, losses, networks, presets, sampling
from probunet_jax.model import ProbabilisticUNet, init_variables, model_from_config

FILTERS = (4, 8)
IMAGE_SHAPE = (16, 16, 1)


def _tiny(variant, **overrides):
    config = presets.model_config(variant, filters=FILTERS, convs_per_block=1, **overrides)
    return config, model_from_config(config)


def _batch(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(size=(batch, *IMAGE_SHAPE)).astype(np.float32)
    mask = (image[..., 0] > 0.6).astype(np.uint8)
    return jnp.asarray(image), jnp.asarray(mask)


def _forward_and_loss(model, beta, variables, image, mask, key, train):
    """Logits, prior and posterior means, loss and metrics of the training forward pass."""
    output, _ = model.apply(
        variables, image, mask, train=train, rngs={"latent": key}, mutable=["batch_stats"]
    )
    loss, metrics = losses.elbo_loss(output, mask, beta=beta, key=key)
    # The representative z (a flow has no closed-form mean; a mixture's is its mean here).
    prior_mean, posterior_mean = (
        sampling.latent_mean(d) if flows.is_flow(d) else d.mean()
        for d in (output.prior, output.posterior)
    )
    return output.logits, prior_mean, posterior_mean, loss, metrics


@pytest.mark.parametrize("variant", sorted(presets.VARIANTS))
def test_every_variant_gives_finite_outputs_of_the_right_shapes(variant):
    config, model = _tiny(variant)
    variables = init_variables(model, jax.random.key(0), IMAGE_SHAPE)
    image, mask = _batch()
    key = jax.random.key(1)
    forward = jax.jit(functools.partial(_forward_and_loss, model, config.beta), static_argnums=4)
    for train in (True, False):
        logits, prior_mean, posterior_mean, loss, metrics = forward(
            variables, image, mask, key, train
        )
        assert logits.shape == (2, 16, 16, 1)
        assert prior_mean.shape == posterior_mean.shape == (2, config.latent_dim)
        values = [logits, prior_mean, posterior_mean, loss, *metrics.values()]
        assert all(np.all(np.isfinite(v)) for v in values)
        assert set(metrics) == {"loss", "reconstruction", "kl"}
        if not variant.startswith("mixture") and config.flow == "none":
            assert float(metrics["kl"]) >= 0  # closed-form KL is non-negative
    masks = sampling.sample_masks(model, variables, image, key, 3)
    assert masks.shape == (2, 3, 16, 16) and masks.dtype == jnp.uint8
    assert set(np.unique(masks)) <= {0, 1}


def test_training_mode_updates_batch_stats_and_eval_mode_does_not():
    _, model = _tiny("aa")
    variables = init_variables(model, jax.random.key(0), IMAGE_SHAPE)
    image, mask = _batch()
    rngs = {"latent": jax.random.key(1)}
    _, train_updates = model.apply(variables, image, mask, train=True, rngs=rngs, mutable=True)
    _, eval_updates = model.apply(variables, image, mask, train=False, rngs=rngs, mutable=True)
    changed = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], train_updates["batch_stats"]
    )
    assert all(jax.tree.leaves(changed))
    assert jax.tree.all(
        jax.tree.map(np.array_equal, variables["batch_stats"], eval_updates["batch_stats"])
    )


@pytest.mark.parametrize("variant", ["fc", "mixture_lr"])
def test_sampler_equals_naive_loop_that_reruns_the_unet(variant):
    _, model = _tiny(variant)
    variables = init_variables(model, jax.random.key(0), IMAGE_SHAPE)
    image, _ = _batch(batch=3)
    key = jax.random.key(5)
    num_samples = 4
    batched = sampling.sample_logits(model, variables, image, key, num_samples)
    assert batched.shape == (3, num_samples, 16, 16, 1)

    # Independent computation: the prior's samples drawn the same way, then for each sample
    # the whole network (U-Net included) re-run with the head applied in one go.
    prior = model.apply(variables, image, train=False, method=ProbabilisticUNet.prior)
    z = prior.sample(seed=key, sample_shape=num_samples)  # [S, B, d]

    def full_network(module, image, z):
        return module.head(module.unet(image, train=False), z)

    for s in range(num_samples):
        naive = model.apply(variables, image, z[s], method=full_network)
        np.testing.assert_allclose(batched[:, s], naive, rtol=1e-5, atol=1e-5)


def _count_convolutions(fn, *args) -> int:
    """Number of convolution primitives in the traced program, nested jaxprs included."""

    def inner_jaxprs(value):
        if hasattr(value, "eqns"):
            yield value
        elif hasattr(getattr(value, "jaxpr", None), "eqns"):
            yield value.jaxpr
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from inner_jaxprs(item)

    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            total += eqn.primitive.name == "conv_general_dilated"
            for param in eqn.params.values():
                total += sum(count(inner) for inner in inner_jaxprs(param))
        return total

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


def test_unet_and_prior_run_once_whatever_the_number_of_samples():
    _, model = _tiny("mixture_fc")
    variables = init_variables(model, jax.random.key(0), IMAGE_SHAPE)
    image, _ = _batch()
    key = jax.random.key(2)
    once = _count_convolutions(
        lambda v, x: model.apply(v, x, method=ProbabilisticUNet.features_and_prior),
        variables,
        image,
    )
    assert once > 0
    for num_samples in (1, 7):

        def sampler(v, x, num_samples=num_samples):
            return sampling.sample_logits(model, v, x, key, num_samples)

        assert _count_convolutions(sampler, variables, image) == once


def test_prior_mean_and_posterior_reconstruction_shapes():
    _, model = _tiny("mixture_aa")
    variables = init_variables(model, jax.random.key(0), IMAGE_SHAPE)
    image, mask = _batch()
    assert sampling.prior_mean_logits(model, variables, image).shape == (2, 16, 16, 1)
    recon = sampling.posterior_reconstruction(model, variables, image, mask)
    assert recon.shape == (2, 16, 16, 1) and np.all(np.isfinite(recon))


def test_tiny_model_overfits_a_fixed_batch():
    config, model = _tiny("mixture_fc")
    variables = init_variables(model, jax.random.key(0), IMAGE_SHAPE)
    image, mask = _batch(batch=4, seed=3)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(variables["params"])

    @jax.jit
    def step(params, batch_stats, opt_state, key):
        def loss_fn(params):
            output, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                image,
                mask,
                train=True,
                rngs={"latent": key},
                mutable=["batch_stats"],
            )
            loss, _ = losses.elbo_loss(output, mask, beta=config.beta, key=key)
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    history = []
    for i in range(60):
        params, batch_stats, opt_state, loss = step(
            params, batch_stats, opt_state, jax.random.key(i)
        )
        history.append(float(loss))
    assert np.mean(history[-5:]) < 0.3 * np.mean(history[:5]), history


@pytest.mark.parametrize(
    "image_shape, message",
    [((16, 16, 1), "image must be"), ((2, 15, 16, 1), "divisible")],
)
def test_bad_image_raises(image_shape, message):
    _, model = _tiny("aa")
    with pytest.raises(ValueError, match=message):
        model.init(
            {"params": jax.random.key(0), "latent": jax.random.key(1)},
            jnp.zeros(image_shape),
            jnp.zeros(image_shape[:3], jnp.int32),
            train=False,
        )


def test_bad_mask_raises():
    _, model = _tiny("aa")
    variables = init_variables(model, jax.random.key(0), IMAGE_SHAPE)
    image, mask = _batch()
    rngs = {"latent": jax.random.key(1)}
    with pytest.raises(ValueError, match="mask must be"):
        model.apply(variables, image, mask[:, :8], train=False, rngs=rngs)
    with pytest.raises(ValueError, match="mask values must be in"):
        model.apply(variables, image, mask * 2, train=False, rngs=rngs)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(latent_kind="diag"), "kind"),
        (dict(latent_kind="lr", latent_dim=2, rank=2), "rank"),
        (dict(num_components=0), "num_components"),
        (dict(num_components=3, temperature=0.0), "temperature"),
    ],
)
def test_bad_latent_config_raises(overrides, message):
    config = presets.model_config("aa", **overrides)
    with pytest.raises(ValueError, match=message):
        model_from_config(config)


def test_unknown_variant_or_key_raises():
    with pytest.raises(ValueError, match="Unknown model variant"):
        presets.model_config("mixture_xx")
    with pytest.raises(ValueError, match="Unknown model config key"):
        presets.model_config("aa", latent_dims=3)


def test_paper_parameter_counts():
    command = [sys.executable, "-m", "experiments.count_params", "--variants=mixture_fc,aa"]
    table = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    # The paper's network has 18.6 M parameters (issue "Performance"); the split per part is
    # documented in the README.
    assert "| mixture_fc | 7,059,168 | 5,826,879 | 5,827,167 | 3,265 | 18,716,479 |" in table
    assert "| aa | 7,059,168 |" in table and "18,664,281" in table


def test_sliced_convolutions_are_the_same_map():
    """``conv_slice_mib`` 16 KiB slices the batch of 5 in the convolutions of the 16×16 maps
    (5–16 KiB per image) and changes neither the training forward pass, its gradients nor
    batch norm's batch statistics."""
    image, mask = _batch(batch=5)
    results = {}
    for slice_mib in (0.0, 16 / 1024):
        _, model = _tiny("fc", conv_slice_mib=slice_mib)
        variables = init_variables(model, jax.random.key(0), IMAGE_SHAPE)

        def loss(params, model=model, variables=variables):
            output, updates = model.apply(
                {**variables, "params": params},
                image,
                mask,
                train=True,
                rngs={"latent": jax.random.key(3)},
                mutable=["batch_stats"],
            )
            return jnp.sum(output.logits**2), updates

        convolutions = _count_convolutions(loss, variables["params"])
        results[slice_mib] = (
            convolutions,
            jax.value_and_grad(loss, has_aux=True)(variables["params"]),
        )
    whole, sliced = results.values()
    assert sliced[0] > whole[0] > 0
    for a, b in zip(jax.tree.leaves(whole[1]), jax.tree.leaves(sliced[1]), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "batch, image_bytes, slice_mib, slices",
    [
        (32, 4 << 20, 32, 4),
        (32, 4 << 20, 0, 1),
        (32, 1 << 20, 32, 1),
        (5, 8 << 10, 16 / 1024, 3),
        (3, 64 << 20, 32, 3),
    ],
)
def test_conv_slices(batch, image_bytes, slice_mib, slices):
    assert networks.conv_slices(batch, image_bytes, slice_mib) == slices


def test_negative_conv_slice_mib_raises():
    with pytest.raises(ValueError, match="conv_slice_mib must be >= 0"):
        presets.check_model_config(presets.model_config("aa", conv_slice_mib=-1.0))
