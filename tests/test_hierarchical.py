"""The hierarchical model: latent maps per scale, top-down sampling, the per-scale KL against
closed forms and Monte Carlo, gradients, parameter counts, the pipeline, the search, errors."""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probunet_jax import config as config_lib
from probunet_jax import (
    distributions,
    evaluation,
    hierarchical,
    latent,
    losses,
    pipeline,
    presets,
    sampling,
)
from probunet_jax.hierarchical import HierarchicalProbUNet
from probunet_jax.model import init_variables, model_from_config, parameter_counts
from probunet_jax.search import space
from probunet_jax.search.trials import make_trials

IMAGE_SHAPE = (16, 16, 1)
TINY = dict(filters=(4, 8, 16), convs_per_block=1, head_depth=2, kl_samples=2)
HIER = sorted(presets.HIERARCHICAL_VARIANTS)


def _config(variant="hier_aa", **overrides):
    return presets.model_config(variant, **{**TINY, **overrides})


def _custom(kind, latent_dim=2, latent_scales=2, **overrides):
    """A custom hierarchical latent of family ``kind`` (or a mixture, with num_components)."""
    fields = dict(latent_kind=kind, latent_dim=latent_dim, latent_scales=latent_scales)
    return _config(presets.CUSTOM, **fields, **overrides)


@functools.cache
def _init_fn(model):
    return jax.jit(lambda key: init_variables(model, key, IMAGE_SHAPE))


def _perturbed(params, scale=0.1, seed=14):
    """``params`` plus N(0, scale²) noise: away from the initialization, where the zero latent
    layers make every prior equal to its posterior (the KL 0, with no gradient)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, noisy)


def _model(config):
    """The model and its variables, parameters perturbed (`_perturbed`)."""
    model = model_from_config(config)
    variables = _init_fn(model)(jax.random.key(0))
    return model, dict(variables, params=_perturbed(variables["params"]))


def _batch(batch=2, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(size=(batch, *IMAGE_SHAPE)).astype(np.float32)
    mask = (image[..., 0] > 0.6).astype(np.uint8)
    return jnp.asarray(image), jnp.asarray(mask)


def _forward(model, variables, image, mask, key, train=False, moments=False):
    """The training forward pass and its loss terms (jit-compiled); with ``moments`` the
    output's distributions as (mean, covariance) of q and p per scale (distrax's low-rank
    distributions cannot leave a jit-compiled function)."""

    def run(variables, image, mask, key):
        output, _ = model.apply(
            variables, image, mask, train=train, rngs={"latent": key}, mutable=["batch_stats"]
        )
        terms = losses.elbo_terms(output, mask, beta=1.0, key=key, kl_samples=2)
        if moments:
            pairs = zip(output.posterior, output.prior, strict=True)
            output = [(q.mean(), q.covariance(), p.mean(), p.covariance()) for q, p in pairs]
        return output, terms

    return jax.jit(run)(variables, image, mask, key)


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("variant, num_classes", [("hier_aa", 1), ("hier_mixture_aa", 3)])
def test_presets_give_latent_maps_per_scale_and_finite_terms(variant, num_classes):
    config = _config(variant, num_classes=num_classes)
    model, variables = _model(config)
    assert isinstance(model, HierarchicalProbUNet) and model.latent_scales == 2
    image, mask = _batch()
    if num_classes > 1:
        mask = jnp.asarray(np.random.default_rng(0).integers(0, 3, (2, 16, 16)), jnp.uint8)
    output, terms = _forward(model, variables, image, mask, jax.random.key(1), train=True)
    assert output.logits.shape == (2, 16, 16, num_classes)
    # Scale 0 is the bottleneck (16 / 4 = 4), scale 1 twice its size; B·h·w positions each.
    assert [p.batch_shape for p in output.prior] == [(2 * 4 * 4,), (2 * 8 * 8,)]
    assert [q.batch_shape for q in output.posterior] == [(32,), (128,)]
    assert all(d.event_shape == (config.latent_dim,) for d in output.prior + output.posterior)
    assert set(terms) == {"loss", "reconstruction", "kl", "kl/scale_0", "kl/scale_1"}
    assert all(v.shape == (2,) and np.all(np.isfinite(v)) for v in terms.values())
    masks = sampling.sample_masks(model, variables, image, jax.random.key(2), 3)
    assert masks.shape == (2, 3, 16, 16) and masks.dtype == jnp.uint8
    assert set(np.unique(masks)) <= set(range(max(2, num_classes)))
    logits_shape = (2, 16, 16, num_classes)
    assert sampling.prior_mean_logits(model, variables, image).shape == logits_shape
    assert sampling.posterior_reconstruction(model, variables, image, mask).shape == logits_shape


def test_jit_equals_no_jit():
    model, variables = _model(_config("hier_aa"))
    image, mask = _batch()
    key = jax.random.key(3)

    def run(variables, image, mask, key):
        output = model.apply(variables, image, mask, train=False, rngs={"latent": key})
        return output.logits, losses.elbo_terms(output, mask, beta=1.0, key=key, kl_samples=2)

    eager, jitted = run(variables, image, mask, key), jax.jit(run)(variables, image, mask, key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), eager, jitted)


# ----------------------------------------------------------------------------- the KL


def _gaussian_kl(mq, cq, mp, cp):
    """KL(N(mq, cq) ‖ N(mp, cp)) of batches of full Gaussians in float64 numpy, `[N]`."""
    mq, cq, mp, cp = (np.asarray(x, np.float64) for x in (mq, cq, mp, cp))
    d = mq.shape[-1]
    cp_inv = np.linalg.inv(cp)
    diff = (mp - mq)[..., None]
    trace = np.trace(cp_inv @ cq, axis1=-2, axis2=-1)
    mahalanobis = (np.swapaxes(diff, -1, -2) @ cp_inv @ diff)[..., 0, 0]
    logdet = np.linalg.slogdet(cp)[1] - np.linalg.slogdet(cq)[1]
    return 0.5 * (trace + mahalanobis - d + logdet)


@pytest.mark.parametrize(
    "config",
    [
        _config("hier_aa"),
        _custom("fc", latent_dim=2),
        _custom("lr", latent_dim=3, rank=2, lr_parameterization="covariance"),
    ],
    ids=["hier_aa", "fc2", "lr3-covariance"],
)
def test_kl_per_scale_is_the_closed_form_summed_over_positions(config):
    model, variables = _model(config)
    image, mask = _batch()
    scales, terms = _forward(model, variables, image, mask, jax.random.key(4), moments=True)
    total = 0.0
    for i, (mq, cq, mp, cp) in enumerate(scales):
        expected = _gaussian_kl(mq, cq, mp, cp)
        if config.latent_kind == "aa":  # The textbook 1-D formula, summed over dimensions.
            sq = np.sqrt(np.diagonal(np.asarray(cq, np.float64), axis1=-2, axis2=-1))
            sp = np.sqrt(np.diagonal(np.asarray(cp, np.float64), axis1=-2, axis2=-1))
            mq, mp = np.asarray(mq, np.float64), np.asarray(mp, np.float64)
            by_hand = np.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5
            np.testing.assert_allclose(by_hand.sum(-1), expected, rtol=1e-5, atol=1e-7)
        per_image = expected.reshape(2, -1).sum(axis=1)
        np.testing.assert_allclose(terms[f"kl/scale_{i}"], per_image, rtol=2e-4)
        total = total + per_image
    np.testing.assert_allclose(terms["kl"], total, rtol=2e-4)
    np.testing.assert_allclose(terms["loss"], terms["reconstruction"] + terms["kl"], rtol=1e-5)


def test_mixture_kl_per_scale_is_a_monte_carlo_estimate_of_the_exact_kl():
    model, variables = _model(_custom("aa", latent_dim=2, num_components=3, temperature=0.5))
    image, mask = _batch()
    key = jax.random.key(6)

    def output_of(variables):  # Mixtures cannot leave a jit-compiled function: recompute.
        return model.apply(variables, image, mask, train=False, rngs={"latent": jax.random.key(5)})

    @jax.jit
    def estimates(variables):
        output = output_of(variables)
        few = losses.kl_terms(output, key=key, num_samples=8)
        many = losses.kl_terms(output, key=jax.random.key(7), num_samples=2048)
        by_hand, parts = [], []
        for i, (q, p) in enumerate(zip(output.posterior, output.prior, strict=True)):
            z = q.sample(seed=jax.random.fold_in(key, i), sample_shape=8)
            by_hand.append(jnp.mean(q.log_prob(z) - p.log_prob(z), 0).reshape(2, -1).sum(1))
            c = q.components_distribution
            parts.append((q.mixture_distribution.probs, c.mean(), c.stddev()))
        return few, many, by_hand, parts

    @jax.jit
    def log_ratios(variables, zs):
        output = output_of(variables)
        pairs = zip(output.posterior, output.prior, zs, strict=True)
        return [q.log_prob(z) - p.log_prob(z) for q, p, z in pairs]

    few, many, by_hand, parts = estimates(variables)
    # The wiring: scale i draws its samples with fold_in(key, i), per position.
    for i in range(2):
        np.testing.assert_allclose(few[f"kl/scale_{i}"], by_hand[i], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(few["kl"], few["kl/scale_0"] + few["kl/scale_1"], rtol=1e-6)
    # Unbiased: 2048 samples agree with an independent estimate, the components sampled
    # exactly in numpy, within a few standard errors.
    k, zs = 2048, []
    for i, (weights, means, stds) in enumerate(parts):
        rng = np.random.default_rng(i)
        weights, means, stds = (np.asarray(x, np.float64) for x in (weights, means, stds))
        positions = weights.shape[0]
        pick = (rng.uniform(size=(k, positions, 1)) > np.cumsum(weights, -1)).sum(-1)
        pick = np.minimum(pick, weights.shape[1] - 1)
        rows = np.arange(positions)
        z = means[rows, pick] + stds[rows, pick] * rng.standard_normal((k, positions, 2))
        zs.append(jnp.asarray(z, jnp.float32))
    for i, log_ratio in enumerate(log_ratios(variables, zs)):
        per_image = np.asarray(log_ratio, np.float64).reshape(k, 2, -1).sum(-1)  # [K, B]
        reference, error = per_image.mean(0), per_image.std(0) / np.sqrt(k)
        assert np.all(np.abs(np.asarray(many[f"kl/scale_{i}"]) - reference) < 5 * error + 1e-3)


def test_latent_layers_start_at_zero_and_are_soft_clipped():
    spec = presets.latent_spec(_custom("fc", latent_dim=2, num_components=2))
    layer = hierarchical.LatentLayer(spec.output_layers)
    x = jnp.linspace(-1e4, 1e4, 3 * 4 * 8).reshape(3, 4, 8)  # far outside any training range
    raw, params = layer.init_with_output(jax.random.key(0), x)
    assert raw.shape == (3, 4, spec.num_params) and not np.any(raw)  # N(0, I) everywhere
    params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape), params)
    raw = layer.apply(params, x)
    assert np.all(np.abs(raw) <= hierarchical.RAW_BOUND) and np.abs(raw).max() > 4.9
    dist = distributions.make_latent_distribution(raw.reshape(-1, spec.num_params), spec)
    z = dist.sample(seed=jax.random.key(1), sample_shape=4)
    assert np.all(np.isfinite(z)) and np.all(np.isfinite(dist.log_prob(z)))
    small = jnp.full((1, 1, 8), 0.01)
    dense = params["params"]["latent_params"]
    linear = small @ dense["kernel"] + dense["bias"]
    np.testing.assert_allclose(layer.apply(params, small), 5.0 * np.tanh(linear / 5.0), rtol=1e-5)


# ----------------------------------------------------------------------------- top down


def test_training_decodes_the_posterior_latents_and_sampling_goes_top_down():
    model, variables = _model(_config("hier_aa"))
    image, mask = _batch()
    key, sample_key = jax.random.key(8), jax.random.key(9)

    @jax.jit
    def run(variables):
        apply = functools.partial(model.apply, variables)
        output, z_q = apply(image, mask, key, method="posterior_fed")
        levels = apply(image, method="encode")
        # The posterior's samples, drawn top down with fold_in(key, scale).
        redrawn = [
            q.sample(seed=jax.random.fold_in(key, i)).reshape(z.shape)
            for i, (q, z) in enumerate(zip(output.posterior, z_q, strict=True))
        ]
        _, prior, _ = apply(levels, latents=z_q, method="prior")
        other, _ = apply(image, 1 - mask, key, method="posterior_fed")
        # A prior sample by hand: z_0 ~ p(z_0|x), then z_1 ~ p(z_1|x, z_0).
        z0 = prior[0].sample(seed=jax.random.fold_in(sample_key, 0)).reshape(2, 4, 4, 1)
        _, (_, p1), _ = apply(levels, latents=(z0, z_q[1]), method="prior")
        z1 = p1.sample(seed=jax.random.fold_in(sample_key, 1)).reshape(2, 8, 8, 1)
        return dict(
            z_q=z_q,
            redrawn=tuple(redrawn),
            logits=output.logits,
            decoded=apply(levels, z_q, method="decode"),
            fed_means=tuple(p.mean() for p in output.prior),
            prior_means=tuple(p.mean() for p in prior),
            other_means=tuple(p.mean() for p in other.prior),
            sample=apply(levels, sample_key, method="sample"),
            by_hand=apply(levels, (z0, z1), method="decode"),
        )

    r = run(variables)
    assert [z.shape for z in r["z_q"]] == [(2, 4, 4, 1), (2, 8, 8, 1)]
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5)
    jax.tree.map(close, r["z_q"], r["redrawn"])
    # The logits are the prior net's decoder fed z_q; its priors are conditioned on z_q.
    close(r["logits"], r["decoded"])
    jax.tree.map(close, r["fed_means"], r["prior_means"])
    # The coarsest prior sees the image only; the next one depends on the coarser z.
    close(r["other_means"][0], r["fed_means"][0])
    assert not np.allclose(r["other_means"][1], r["fed_means"][1])
    close(r["sample"], r["by_hand"])


def test_sampler_draws_each_sample_with_its_key_and_is_batch_independent():
    model, variables = _model(_config("hier_aa"))
    image, _ = _batch()
    key = jax.random.key(10)
    logits = sampling.sample_logits(model, variables, image, key, 4)
    assert logits.shape == (2, 4, 16, 16, 1)
    levels = jax.jit(functools.partial(model.apply, method="encode"))(variables, image)
    one_sample = jax.jit(functools.partial(model.apply, method="sample"))
    for s, sample_key in enumerate(jax.random.split(key, 4)):
        one = one_sample(variables, levels, sample_key)
        np.testing.assert_allclose(logits[:, s], one, rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits[:, 0], logits[:, 1])
    # Evaluation: image i's samples depend on its key only, whatever the batch.
    keys = evaluation.image_keys(jax.random.key(11), jnp.arange(2))
    batch = evaluation.sample_batch(model, variables, image, keys, 4)
    alone = evaluation.sample_batch(model, variables, image[1:], keys[1:], 4)
    again = evaluation.sample_batch(model, variables, image, keys, 4)
    np.testing.assert_array_equal(batch.masks[1:], alone.masks)
    np.testing.assert_allclose(batch.probs[1:], alone.probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(batch.masks, again.masks)


def _count_convolutions(fn, *args) -> int:
    """3×3 convolutions in the traced program, nested jaxprs included."""

    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            total += eqn.primitive.name == "conv_general_dilated"
            for param in eqn.params.values():
                for inner in param if isinstance(param, list | tuple) else [param]:
                    inner = getattr(inner, "jaxpr", inner)
                    if hasattr(inner, "eqns"):
                        total += count(inner)
        return total

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


def test_encoder_runs_once_and_the_decoder_once_per_sample_vmapped():
    config = _config("hier_aa")
    model, variables = _model(config)
    image, _ = _batch()
    levels = len(config.filters)
    encoder = _count_convolutions(lambda v, x: model.apply(v, x, method="encode"), variables, image)
    assert encoder == levels * config.convs_per_block
    for num_samples in (1, 7):
        total = _count_convolutions(
            lambda v, x, n=num_samples: sampling.sample_logits(model, v, x, jax.random.key(0), n),
            variables,
            image,
        )
        # The encoder once, every decoder block once in the (vmapped) per-sample program.
        assert total == encoder + (levels - 1) * config.convs_per_block


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "config",
    [
        _config("hier_aa"),
        _config("hier_mixture_aa"),
        _custom("fc", latent_dim=2, num_components=2, latent_scales=1),
    ],
    ids=["hier_aa", "hier_mixture_aa", "mixture-fc-one-scale"],
)
def test_gradients_reach_every_parameter(config):
    model, variables = _model(config)  # Perturbed: at the initialization the prior's latent
    image, mask = _batch()  # layers get no gradient (the KL is at its minimum, 0).
    params = variables["params"]

    @jax.jit
    def grads(params):
        def loss_fn(params):
            output, _ = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                image,
                mask,
                train=True,
                rngs={"latent": jax.random.key(12)},
                mutable=["batch_stats"],
            )
            return losses.elbo_loss(output, mask, beta=1.0, key=jax.random.key(13))[0]

        return jax.grad(loss_fn)(params)

    g = grads(params)
    parts = set(g)
    assert parts == {"prior_net", "posterior_net", "head"} | (
        {"decoder"} if config.latent_scales < len(config.filters) - 1 else set()
    )
    flat = jax.tree_util.tree_leaves_with_path(g)
    dead = [jax.tree_util.keystr(path) for path, leaf in flat if not np.any(np.asarray(leaf))]
    assert not dead, f"no gradient reaches {dead}"
    assert all(np.all(np.isfinite(leaf)) for _, leaf in flat)


# ----------------------------------------------------------------------------- parameter counts


def _conv(cin, cout):
    return 9 * cin * cout + cout


def _expected_counts(config) -> dict[str, int]:
    """The parameter counts by hand (norm 'paper': a batch norm, 2 parameters per channel,
    after every 3×3 convolution; one convolution per block)."""
    assert config.convs_per_block == 1 and config.norm == "paper"
    f, n, scales = config.filters, len(config.filters), config.latent_scales
    spec = presets.latent_spec(config)
    d, width = spec.latent_dim, spec.num_params

    def block(cin, cout):
        return _conv(cin, cout) + 2 * cout

    def encoder(cin):
        return sum(block(cin if i == 0 else f[i - 1], f[i]) for i in range(n))

    def latent_layers():
        return sum(f[n - 1 - i] * width + width for i in range(scales))

    def up_block(i, with_z):  # decoder block i: [z ⊕ features from below, upsampled] ⊕ skip.
        return block((d if with_z else 0) + f[n - 1 - i] + f[n - 2 - i], f[n - 2 - i])

    counts = {
        "prior_net": encoder(1) + latent_layers() + sum(up_block(i, True) for i in range(scales)),
        "posterior_net": encoder(2)
        + latent_layers()
        + sum(up_block(i, True) for i in range(scales - 1)),
        "decoder": sum(up_block(i, False) for i in range(scales, n - 1)),
        "head": f[0] * 1 + 1,  # one logits layer, one logit (head_depth does not apply)
    }
    counts["total"] = sum(counts.values())
    return counts


@pytest.mark.parametrize(
    "config",
    [
        _config("hier_aa"),
        _config("hier_mixture_aa"),
        _custom("aa", latent_dim=3, latent_scales=1),
        _config("hier_aa", filters=(4, 8, 16, 32)),
    ],
    ids=["hier_aa", "hier_mixture_aa", "one-scale", "four-levels"],
)
def test_parameter_counts(config):
    assert parameter_counts(model_from_config(config), IMAGE_SHAPE) == _expected_counts(config)


def test_count_params_lists_the_decoder_column():
    command = [
        sys.executable,
        "-m",
        "experiments.count_params",
        "--variants=aa,hier_aa",
        "--filters=4,8,16",
        "--image_size=16",
    ]
    table = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    config = presets.model_config("hier_aa", filters=(4, 8, 16))
    expected = parameter_counts(model_from_config(config), IMAGE_SHAPE)
    assert "| variant | unet | prior_net | posterior_net | decoder | head | total |" in table
    assert f"| hier_aa | – | {expected['prior_net']:,} |" in table
    assert "| aa | " in table and "| – |" in table


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_raise_value_errors_naming_the_fields():
    with pytest.raises(ValueError, match=r"model.latent_scales .* model.filters \(4, 8\)"):
        presets.check_model_config(_config("hier_aa", filters=(4, 8)))
    with pytest.raises(ValueError, match="model.latent_scales"):
        presets.check_model_config(_custom("aa", latent_scales=-1))
    for scales in (0, 3):
        model = HierarchicalProbUNet(TINY["filters"], presets.latent_spec(_config()), scales)
        with pytest.raises(ValueError, match=rf"latent_scales .* got {scales}"):
            init_variables(model, jax.random.key(0), IMAGE_SHAPE)
    with pytest.raises(ValueError, match="model.variant 'hier_aa' has latent_scales 2"):
        presets.check_model_config(_config("hier_aa", latent_scales=1))
    for field in (dict(flow="planar", flow_layers=2), dict(prune_threshold=0.02)):
        with pytest.raises(ValueError, match="no flow and no learned number of components"):
            presets.check_model_config(_custom("aa", 2, 1, num_components=3, **field))
    model, variables = _model(_config())
    image, mask = _batch()
    with pytest.raises(ValueError, match="divisible by 4"):
        model.apply(variables, image[:, :14, :14], method="encode")
    with pytest.raises(ValueError, match="mask must be"):
        model.apply(variables, image, mask[:, :8], jax.random.key(0), method="posterior_fed")
    with pytest.raises(ValueError, match="PRNG `key`"):
        levels = model.apply(variables, image, method="encode")
        model.apply(variables, levels, method="prior")
    for analysis in (
        lambda: latent.latent_distributions(model, variables, image, mask[:, None]),
        lambda: latent.decode_latents(model, variables, image[0], np.zeros((1, 1))),
        lambda: latent.component_samples(model, variables, image[0], jax.random.key(0)),
    ):
        with pytest.raises(ValueError, match="one global latent z per image"):
            analysis()


def test_the_test_config_needs_three_levels(make_config):
    with pytest.raises(ValueError, match="model.latent_scales"):
        config_lib.validate(make_config("hier_aa"))
    config_lib.validate(make_config("hier_aa", model=dict(filters=(4, 8, 16))))


# ----------------------------------------------------------------------------- presets, search


def test_presets_swap_the_latent_scales_with_the_variant():
    hier = config_lib.get_config("hier_aa", model=dict(filters=(4, 8, 16)))
    assert (hier.model.latent_scales, hier.model.latent_dim) == (2, 1)
    flat = config_lib.with_variant(hier, "aa")
    assert flat.model.latent_scales == 0 and tuple(flat.model.filters) == (4, 8, 16)
    assert config_lib.with_variant(flat, "hier_mixture_aa").model.latent_scales == 2
    assert presets.model_name(hier.model) == "hier_aa"
    assert not set(presets.HIERARCHICAL_VARIANTS) & set(presets.VARIANTS)


@pytest.mark.parametrize("variant", HIER)
def test_search_space_of_the_hierarchical_variants(variant):
    points = space.search_points(variant, num_random=6, seed=1)
    expected = {"latent_dim", "beta", "latent_scales"}
    if presets.HIERARCHICAL_VARIANTS[variant].get("num_components", 1) > 1:
        expected |= {"num_components", "temperature"}
    assert all(set(p) == expected for p in points)
    assert {p["latent_dim"] for p in points} == {1, 2, 4}
    assert {p["latent_scales"] for p in points} == {1, 2, 3}
    capped = space.search_points(variant, num_random=6, seed=1, max_latent_scales=1)
    assert {p["latent_scales"] for p in capped} == {1}
    narrow = space.SearchSpace(latent_scales_range=(2, 3))
    with pytest.raises(ValueError, match="Empty search space"):
        space.search_points(variant, narrow, max_latent_scales=1)
    with pytest.raises(ValueError, match="position_latent_dims"):
        space.search_points(variant, space.SearchSpace(position_latent_dims=()))


def test_trials_fit_the_latent_scales_to_the_base_network(make_config):
    base = make_config("hier_aa", model=dict(filters=(4, 8, 16)))
    trials = make_trials(base, "hier_aa", num_random=2)
    assert {t.overrides["latent_scales"] for t in trials} <= {1, 2}
    for trial in trials:
        assert f"-s{trial.overrides['latent_scales']}-" in trial.trial_id
        preset = (trial.overrides["latent_dim"], trial.overrides["latent_scales"]) == (1, 2)
        assert trial.config.model.variant == ("hier_aa" if preset else presets.CUSTOM)


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_paper_pipeline_trains_with_geco_evaluates_and_compares_hier_aa(make_config, tmp_path):
    base = make_config(
        model=dict(filters=(4, 8, 16)), train=dict(validation_samples=2, geco_target=0.05)
    )
    configs = pipeline.variant_configs(base, ["hier_aa"])
    assert isinstance(model_from_config(configs["hier_aa"].model), HierarchicalProbUNet)
    result = pipeline.run(str(tmp_path), configs)
    assert "hier_aa" in result.ged_table.to_string()
    lines = [json.loads(line) for line in (tmp_path / "hier_aa" / "metrics.jsonl").open()]
    train_rows = [r for r in lines if r["split"] == "train"]
    validation_rows = [r for r in lines if r["split"] == "validation"]
    for row in train_rows + validation_rows:
        assert row["kl"] == pytest.approx(row["kl/scale_0"] + row["kl/scale_1"], rel=1e-5)
    assert all(np.isfinite(r["ged"]) for r in validation_rows)
    assert train_rows[-1]["kl_weight"] != 1.0  # GECO: 1 / λ, λ moved from 1.
    summary = json.loads((tmp_path / "hier_aa" / "eval" / "summary.json").read_text())
    assert np.isfinite(summary["metrics"]["ged"]["mean"])
