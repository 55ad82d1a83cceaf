"""Normalizing-flow latents: bijectors against Jacobians, invertibility constraints, densities,
the Monte Carlo KL, gradients, jit, bad inputs, parameter counts and a tiny training run."""

import json
import os

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probunet_jax import distributions, flows, latent, pipeline, presets, sampling, train
from probunet_jax.distributions import LatentSpec, make_latent_distribution
from probunet_jax.model import ProbabilisticUNet, init_variables, model_from_config
from probunet_jax.search import space

FLOWS = ("planar", "radial", "coupling")


def _normal(seed, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.key(seed), shape)


def _bijector(flow, d=3, layers=1, batch=4, seed=0, scale=1.0):
    raw = _normal(seed, (batch, flows.num_params(flow, d, layers)), scale)
    return flows.make_bijector(raw, flow, d, layers), raw


def _per_element_jacobians(bijector, x):
    """J `[B, d, d]` of each batch element's map, from jax.jacfwd of the whole batch."""
    full = jax.jacfwd(bijector.forward)(x)  # [B, d, B, d]
    return jnp.stack([full[b, :, b, :] for b in range(x.shape[0])])


def _flow_pair(flow, kind="fc", d=2, layers=3, n=1, seed=0, prior_flow=False, batch=3):
    """q (the flow) and p (the prior family) of random raw parameters."""
    spec = LatentSpec(kind, d, num_components=n, flow=flow, flow_layers=layers)
    spec = spec._replace(prior_flow=prior_flow)
    raw_q = _normal(seed, (batch, spec.num_params), 0.7)
    raw_p = _normal(seed + 1, (batch, spec.prior_spec.num_params), 0.7)
    return (
        spec,
        make_latent_distribution(raw_q, spec),
        make_latent_distribution(raw_p, spec.prior_spec),
        raw_q,
        raw_p,
    )


# ----------------------------------------------------------------------------- the bijectors


@pytest.mark.parametrize("d, layers", [(2, 1), (3, 3), (5, 2)])
@pytest.mark.parametrize("flow", FLOWS)
def test_log_det_matches_the_jacobian_determinant(flow, d, layers):
    bijector, _ = _bijector(flow, d, layers, seed=d + layers)
    x = _normal(1, (4, d), 1.5)
    y, log_det = bijector.forward_and_log_det(x)
    jac = _per_element_jacobians(bijector, x)
    sign, expected = np.linalg.slogdet(np.asarray(jac, np.float64))
    assert np.all(sign > 0)  # Orientation-preserving: invertible everywhere.
    np.testing.assert_allclose(log_det, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, bijector.forward(x), rtol=1e-6)
    # Extra leading sample axes broadcast against the batch of parameters.
    xs = _normal(2, (6, 4, d))
    ys, log_dets = bijector.forward_and_log_det(xs)
    assert ys.shape == (6, 4, d) and log_dets.shape == (6, 4)
    np.testing.assert_allclose(log_dets[3], bijector.forward_and_log_det(xs[3])[1], rtol=1e-5)


@pytest.mark.parametrize("d", [2, 3, 6])
def test_coupling_inverse_undoes_forward(d):
    bijector, _ = _bijector("coupling", d, layers=4, seed=d, scale=1.5)
    x = _normal(3, (7, 4, d), 2.0)
    y, log_det = bijector.forward_and_log_det(x)
    x_back, inverse_log_det = bijector.inverse_and_log_det(y)
    np.testing.assert_allclose(x_back, x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(inverse_log_det, -log_det, rtol=1e-4, atol=1e-4)
    assert flows.has_inverse(bijector)


def test_coupling_layers_alternate_their_conditioning_coordinates():
    assert flows.coupling_split(5, 0) == ((0, 2, 4), (1, 3))
    assert flows.coupling_split(5, 1) == ((1, 3), (0, 2, 4))
    bijector, _ = _bijector("coupling", 4, layers=1, seed=1)
    x = _normal(4, (4, 4))
    y = bijector.forward(x)
    np.testing.assert_array_equal(y[:, ::2], x[:, ::2])  # A passes through unchanged.
    assert np.all(np.abs(y[:, 1::2] - x[:, 1::2]) > 0)


def _adversarial_planar_raw(batch, d):
    """Raw (u, w, b) with wᵀu from −0.5 down to −30 (where the unconstrained map folds), and a
    zero and a tiny w."""
    rng = np.random.default_rng(5)
    u = 4.0 * rng.normal(size=(batch, d))
    w = -np.linspace(0.5, 30.0, batch)[:, None] * u / np.sum(u * u, -1, keepdims=True)
    w[0], w[1] = 0.0, w[1] * 1e-7
    return np.concatenate([u, w, 3.0 * rng.normal(size=(batch, 1))], axis=-1)


def test_planar_constraint_keeps_every_layer_monotone_along_w():
    d, batch = 3, 12
    raws = [_adversarial_planar_raw(batch, d), 2.0 * np.random.default_rng(7).normal(size=(12, 7))]
    # In float64, the map itself is strictly increasing along w (float32 rounds û to ~1e-7·|wᵀu|,
    # more than softplus(wᵀu) once wᵀu < −15: only the log-determinant is exact there).
    with jax.enable_x64(True):
        for raw in raws:
            layer = flows.make_bijector(jnp.asarray(raw), "planar", d, 1).bijectors[0]
            assert np.all(np.asarray(jnp.sum(layer.w * layer.u_hat, -1)) > -1)
            t = jnp.linspace(-20, 20, 4001)[:, None, None]
            norm = jnp.linalg.norm(layer.w, axis=-1, keepdims=True)
            z = t * layer.w / jnp.maximum(norm, 1e-300)
            along = np.asarray(jnp.sum(layer.forward(z) * layer.w, -1))  # [T, B]
            moving = np.asarray(norm[:, 0] > 1e-3)
            assert np.all(np.diff(along, axis=0)[:, moving] > 0)
    # In float32: every log-determinant stays finite.
    for raw in raws:
        bijector = flows.make_bijector(jnp.asarray(raw, jnp.float32), "planar", d, 1)
        _, log_det = bijector.forward_and_log_det(_normal(8, (50, batch, d), 5.0))
        assert np.all(np.isfinite(log_det))


def test_radial_constraint_keeps_the_radius_map_increasing():
    d, batch = 3, 8
    raw = _normal(9, (batch, d + 2), 6.0)
    layer = flows.make_bijector(raw, "radial", d, 1).bijectors[0]
    assert np.all(np.asarray(layer.alpha) > 0) and np.all(np.asarray(layer.beta + layer.alpha) > 0)
    direction = jnp.ones(d) / jnp.sqrt(d)
    r = jnp.linspace(0.0, 30.0, 3001)[:, None, None]
    z = layer.z0 + r * direction
    radius = jnp.linalg.norm(layer.forward(z) - layer.z0, axis=-1)  # [R, B]
    assert np.all(np.diff(np.asarray(radius), axis=0) > 0)
    _, log_det = layer.forward_and_log_det(_normal(10, (50, batch, d), 5.0))
    assert np.all(np.isfinite(log_det))


@pytest.mark.parametrize("flow", FLOWS)
def test_zero_parameters_are_the_identity(flow):
    d = 3
    bijector = flows.make_bijector(jnp.zeros((2, flows.num_params(flow, d, 3))), flow, d, 3)
    x = _normal(11, (5, 2, d))
    y, log_det = bijector.forward_and_log_det(x)
    np.testing.assert_allclose(y, x, atol=1e-7)
    np.testing.assert_allclose(log_det, 0.0, atol=1e-6)


# ----------------------------------------------------------------------------- densities


def test_coupling_density_integrates_to_one_and_both_paths_agree():
    spec, q, _, _, _ = _flow_pair("coupling", "fc", d=2, layers=4, batch=2, seed=12)
    edges = np.linspace(-12, 12, 401)
    centers = (edges[1:] + edges[:-1]) / 2
    grid = np.stack(np.meshgrid(centers, centers, indexing="ij"), -1).reshape(-1, 1, 2)
    log_prob = jax.jit(lambda q, z: q.log_prob(z))(q, jnp.asarray(grid, jnp.float32))
    density = np.exp(np.asarray(log_prob, np.float64))
    mass = density.sum(0) * (edges[1] - edges[0]) ** 2
    np.testing.assert_allclose(mass, 1.0, atol=5e-3)
    # log_prob (inverse path) equals sample_and_log_prob (forward path) at the samples.
    z, log_q = q.sample_and_log_prob(seed=jax.random.key(13), sample_shape=64)
    np.testing.assert_allclose(q.log_prob(z), log_q, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("flow", ["planar", "radial"])
def test_forward_path_density_is_normalized(flow):
    # E_q[g(z) / q(z)] = ∫ g = 1 for any density g: the forward-path log q (all planar and
    # radial flows give) is a normalized density. g is a narrow Gaussian, so g/q is bounded.
    spec, q, _, _, _ = _flow_pair(flow, "fc", d=2, layers=4, batch=3, seed=14)

    @jax.jit
    def log_ratio(q, key):
        z, log_q = q.sample_and_log_prob(seed=key, sample_shape=400_000)
        center = sampling.latent_mean(q)
        g = distrax.MultivariateNormalDiag(center, 0.3 * jnp.ones_like(center))
        return g.log_prob(z) - log_q

    ratio = np.exp(np.asarray(log_ratio(q, jax.random.key(15)), np.float64))
    mean, stderr = ratio.mean(0), ratio.std(0) / np.sqrt(len(ratio))
    assert np.all(np.abs(mean - 1.0) < 4 * stderr + 0.01), (mean, stderr)


@pytest.mark.parametrize("flow", FLOWS)
def test_sample_and_log_prob_is_the_base_density_minus_the_log_det(flow):
    _, q, _, _, _ = _flow_pair(flow, "aa", d=3, layers=2, n=3, seed=16)

    @jax.jit
    def both_ways(q, key):
        z, log_q = q.sample_and_log_prob(seed=key, sample_shape=5)
        z0 = q.distribution.sample(seed=key, sample_shape=5)
        z_forward, log_det = q.bijector.forward_and_log_det(z0)
        reference = q.distribution.log_prob(z0) - log_det
        return z, log_q, z_forward, reference, q.sample(seed=key, sample_shape=5)

    z, log_q, z_forward, reference, sampled = both_ways(q, jax.random.key(17))
    np.testing.assert_allclose(z, z_forward, rtol=1e-6)
    np.testing.assert_allclose(log_q, reference, rtol=1e-5)
    np.testing.assert_allclose(sampled, z, rtol=1e-6)
    if flow != "coupling":
        with pytest.raises(NotImplementedError, match="no analytic inverse"):
            q.log_prob(z[0])


# ----------------------------------------------------------------------------- the KL


@pytest.mark.parametrize("flow", FLOWS)
def test_mc_kl_of_an_identity_flow_is_the_closed_form(flow):
    spec = LatentSpec("fc", 3, flow=flow, flow_layers=2, prior_flow=flow == "coupling")
    plain = LatentSpec("fc", 3)
    base_q, base_p = _normal(18, (3, plain.num_params), 0.7), _normal(19, (3, plain.num_params))
    zeros = jnp.zeros((3, spec.flow_params))  # Zero flow parameters: the identity.
    q0, p0 = make_latent_distribution(base_q, plain), make_latent_distribution(base_p, plain)
    q = make_latent_distribution(jnp.concatenate([base_q, zeros], -1), spec)
    p = (
        make_latent_distribution(jnp.concatenate([base_p, zeros], -1), spec)
        if spec.prior_flow
        else p0
    )
    assert flows.is_flow(q) and flows.is_flow(p) == spec.prior_flow
    assert not flows.is_flow(q0)  # Distrax's Gaussians are Transformed, but not flows.
    exact = np.asarray(distributions.kl_divergence(q0, p0))

    @jax.jit
    def estimates(q, p, q0, p0, key):
        # The same draws as the mean of log q₀ − log p₀ over the base's samples.
        z = q0.sample(seed=key, sample_shape=64)
        same_draws = jnp.mean(q0.log_prob(z) - p0.log_prob(z), 0)
        few = distributions.kl_divergence(q, p, key=key, num_samples=64)
        many = distributions.kl_divergence(q, p, key=key, num_samples=200_000)
        return few, same_draws, many

    few, same_draws, many = estimates(q, p, q0, p0, jax.random.key(20))
    np.testing.assert_allclose(few, same_draws, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(many, exact, rtol=0.02, atol=0.01)


@pytest.mark.parametrize(
    "flow, kind, n, prior_flow",
    [("planar", "fc", 1, False), ("radial", "aa", 3, False), ("coupling", "fc", 1, True)],
)
def test_mc_kl_is_unbiased_against_a_high_sample_reference(flow, kind, n, prior_flow):
    _, q, p, _, _ = _flow_pair(flow, kind, d=2, layers=3, n=n, seed=21, prior_flow=prior_flow)
    kl = jax.jit(distributions.kl_divergence, static_argnames="num_samples")
    reference = kl(q, p, key=jax.random.key(22), num_samples=100_000)
    keys = jax.random.split(jax.random.key(23), 200)
    estimates = np.asarray(
        jax.jit(jax.vmap(lambda k: distributions.kl_divergence(q, p, key=k)))(keys)
    )
    mean, std = estimates.mean(0), estimates.std(0)
    assert np.all(np.abs(mean - reference) < 4 * std / np.sqrt(len(keys)) + 0.02), (
        mean,
        reference,
    )
    assert np.all(reference > 0)


@pytest.mark.parametrize(
    "flow, kind, prior_flow",
    [("planar", "aa", False), ("radial", "lr", False), ("coupling", "aa", True)],
)
def test_gradients_reach_every_raw_parameter(flow, kind, prior_flow):
    # Mixtures of AA and LR use every raw output (compact FC ignores its upper triangle).
    spec, _, _, raw_q, raw_p = _flow_pair(flow, kind, d=3, layers=2, n=2, prior_flow=prior_flow)

    def loss(raw_q, raw_p):
        q = make_latent_distribution(raw_q, spec)
        p = make_latent_distribution(raw_p, spec.prior_spec)
        key = jax.random.key(24)
        kl = distributions.kl_divergence(q, p, key=key, num_samples=16)
        z = q.sample(seed=key, sample_shape=4)
        return jnp.sum(kl) + jnp.sum(jnp.sin(3 * z))

    grad_q, grad_p = jax.jit(jax.grad(loss, argnums=(0, 1)))(raw_q, raw_p)
    assert np.all(np.isfinite(grad_q)) and np.all(np.isfinite(grad_p))
    # Every raw output (base, mixture logits, each flow parameter) gets a gradient.
    assert np.all(np.abs(np.asarray(grad_q)).sum(0) > 0), np.abs(grad_q).sum(0)
    assert np.all(np.abs(np.asarray(grad_p)).sum(0) > 0), np.abs(grad_p).sum(0)
    assert grad_p.shape[-1] == (spec.num_params if prior_flow else spec.base_params)


@pytest.mark.parametrize("flow", FLOWS)
def test_jit_equals_no_jit(flow):
    spec, q, p, raw_q, raw_p = _flow_pair(flow, "fc", d=2, layers=2, prior_flow=flow == "coupling")

    def run(raw_q, raw_p, key):
        q = make_latent_distribution(raw_q, spec)
        p = make_latent_distribution(raw_p, spec.prior_spec)
        z, log_q = q.sample_and_log_prob(seed=key, sample_shape=3)
        kl = distributions.kl_divergence(q, p, key=key, num_samples=8)
        return z, log_q, kl, sampling.latent_mean(q)

    key = jax.random.key(25)
    for eager, jitted in zip(run(raw_q, raw_p, key), jax.jit(run)(raw_q, raw_p, key), strict=True):
        np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)
    # A flow distribution passes through a jit boundary as a pytree.
    z = jax.jit(lambda d, k: d.sample(seed=k))(q, key)
    assert z.shape == (3, 2)


def test_latent_mean_is_the_flow_of_the_base_representative():
    _, q, _, _, _ = _flow_pair("planar", "fc", d=2, layers=3, n=4, seed=26)
    base = sampling.latent_mean(q.distribution)
    np.testing.assert_allclose(sampling.latent_mean(q), q.bijector.forward(base), rtol=1e-6)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "spec, message",
    [
        (LatentSpec("aa", 3, flow="glow", flow_layers=2), "Unknown flow 'glow'"),
        (LatentSpec("aa", 3, flow="planar", flow_layers=-1), "flow_layers must be >= 0"),
        (LatentSpec("aa", 3, flow="none", flow_layers=-1), "flow_layers must be >= 0"),
        (LatentSpec("aa", 3, flow="radial", flow_layers=0), "flow_layers >= 1"),
        (LatentSpec("aa", 1, flow="coupling", flow_layers=2), "latent_dim >= 2"),
        (LatentSpec("aa", 3, flow="planar", flow_layers=2, prior_flow=True), "no analytic inverse"),
        (LatentSpec("aa", 3, flow="radial", flow_layers=2, prior_flow=True), "no analytic inverse"),
        (LatentSpec("aa", 3, prior_flow=True), "prior_flow needs an invertible flow"),
    ],
)
def test_bad_flow_specs_raise(spec, message):
    with pytest.raises(ValueError, match=message):
        spec.validate()


def test_bad_flow_configs_and_inputs_raise():
    model = presets.model_config(presets.CUSTOM, latent_dim=2, flow="planar", flow_layers=2)
    presets.check_model_config(model)
    model.prior_flow = True
    with pytest.raises(ValueError, match="no analytic inverse"):
        presets.check_model_config(model)
    changed = presets.model_config("flow_fc")
    changed.flow_layers = 7
    with pytest.raises(ValueError, match="flow_layers 4"):
        presets.check_model_config(changed)
    with pytest.raises(ValueError, match="has 10 raw parameters, got 11"):
        flows.make_bijector(jnp.zeros((2, 11)), "planar", 2, 2)
    _, q, _, _, _ = _flow_pair("radial", "aa", d=2, layers=2)
    with pytest.raises(ValueError, match="no analytic inverse"):
        distributions.kl_divergence(q, q, key=jax.random.key(0))
    with pytest.raises(ValueError, match="PRNG"):
        distributions.kl_divergence(
            q, make_latent_distribution(jnp.zeros((3, 4)), LatentSpec("aa", 2))
        )


# ----------------------------------------------------------------------------- model, counts


@pytest.mark.parametrize(
    "flow, d, layers, per_layer",
    [
        ("planar", 6, 4, [13] * 4),
        ("radial", 2, 3, [4] * 3),
        ("coupling", 3, 2, [2 * 8 + 8 + 2 * 8 * 1 + 2, 1 * 8 + 8 + 2 * 8 * 2 + 4]),
    ],
)
def test_flow_parameter_counts(flow, d, layers, per_layer):
    # planar 2d + 1; radial d + 2; coupling |A|·H + H + 2·H·|B| + 2·|B| with H = 8
    # (d = 3: layer 0 conditions on 2 coordinates and maps 1, layer 1 the other way round).
    assert flows.COUPLING_HIDDEN == 8
    assert [flows.layer_num_params(flow, d, k) for k in range(layers)] == per_layer
    spec = LatentSpec("fc", d, flow=flow, flow_layers=layers)
    assert spec.num_params == LatentSpec("fc", d).num_params + sum(per_layer)
    assert spec.output_layers == (("latent_params", spec.num_params),)
    authors = spec._replace(layout="authors")
    assert [name for name, _ in authors.output_layers] == ["mean_log_scale", "covariance", "flow"]
    assert authors.output_layers[-1] == ("flow", sum(per_layer))
    assert sum(w for _, w in authors.output_layers) == authors.num_params


@pytest.mark.parametrize(
    "variant, base", [("flow_fc", "fc"), ("flow_aa", "aa"), ("coupling_fc", "fc")]
)
def test_flow_presets_add_the_flow_outputs_to_their_latent_nets(variant, base):
    from probunet_jax.model import parameter_counts

    network = dict(filters=(8, 16), convs_per_block=1, head_depth=2)
    flow = parameter_counts(
        model_from_config(presets.model_config(variant, **network)), (16, 16, 1)
    )
    plain = parameter_counts(model_from_config(presets.model_config(base, **network)), (16, 16, 1))
    config = presets.model_config(variant)
    outputs = flows.num_params(config.flow, config.latent_dim, config.flow_layers)
    dense = (16 + 1) * outputs  # One 1×1 output layer on the 16-wide bottleneck.
    assert flow["posterior_net"] == plain["posterior_net"] + dense
    assert flow["prior_net"] == plain["prior_net"] + (dense if config.prior_flow else 0)
    assert flow["unet"] == plain["unet"] and flow["head"] == plain["head"]


def test_a_flow_model_samples_and_its_latents_are_linearized():
    # coupling_fc: a flow prior and a flow posterior (tests/test_latent.py runs flow_fc).
    config = presets.model_config("coupling_fc", filters=(4, 8), convs_per_block=1, head_depth=2)
    model = model_from_config(config)
    variables = jax.jit(lambda k: init_variables(model, k, (16, 16, 1)))(jax.random.key(0))
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 16, 16, 1)), jnp.float32)
    prior = jax.jit(lambda v, x: model.apply(v, x, method=ProbabilisticUNet.prior))(
        variables, images
    )
    assert flows.is_flow(prior) == bool(config.prior_flow)
    masks = sampling.sample_masks(model, variables, images, jax.random.key(1), 3)
    assert masks.shape == (2, 3, 16, 16)
    annotations = np.zeros((2, 2, 16, 16), np.uint8)
    annotations[:, 1, 4:9, 4:9] = 1
    _, posteriors = latent.latent_distributions(model, variables, images, annotations)
    mask = jnp.asarray(annotations[:, 1], jnp.int32)
    posterior = jax.jit(lambda v, x, m: model.apply(v, x, m, method=ProbabilisticUNet.posterior))
    post = posterior(variables, images, mask)
    assert flows.is_flow(post)
    # Means: the flow of the base means; covariances: J Σ Jᵀ with the Jacobian by jacfwd.
    base_mean = post.distribution.mean()
    np.testing.assert_allclose(
        posteriors.means[:, 1, 0], post.bijector.forward(base_mean), rtol=1e-4, atol=1e-6
    )
    jac = np.asarray(_per_element_jacobians(post.bijector, base_mean), np.float64)
    cov = np.asarray(post.distribution.covariance(), np.float64)
    np.testing.assert_allclose(
        posteriors.covariances[:, 1, 0], jac @ cov @ np.swapaxes(jac, 1, 2), rtol=1e-3, atol=1e-6
    )
    np.testing.assert_allclose(
        posteriors.representative[:, 1], sampling.latent_mean(post), rtol=1e-4
    )
    samples, weights = latent.component_samples(model, variables, images[0], jax.random.key(2), 4)
    assert samples.shape == (1, 4, 16, 16) and weights.shape == (1,)


def test_sweep_and_pipeline_know_the_flow_presets():
    for variant in ("flow_fc", "flow_aa", "coupling_fc"):
        points = space.search_points(variant, num_random=6, seed=1)
        assert all(1 <= p["flow_layers"] <= 8 and type(p["flow_layers"]) is int for p in points)
        assert len({p["flow_layers"] for p in points}) > 1
    with pytest.raises(ValueError, match="flow_layers_range"):
        space.search_points("flow_fc", space.SearchSpace(flow_layers_range=(0, 3)))
    assert "flow_layers" not in space.search_points("mixture_fc")[0]


def test_a_flow_preset_trains_evaluates_and_compares(make_config, tmp_path):
    base = make_config("flow_fc", eval=dict(num_samples=2))
    configs = pipeline.variant_configs(base, ["flow_fc", "coupling_fc"])
    assert configs["coupling_fc"].model.prior_flow and configs["flow_fc"].model.flow == "planar"
    workdir = str(tmp_path / "flow_fc")
    result = train.train_and_evaluate(configs["flow_fc"], workdir)
    assert np.isfinite(result["best_validation_loss"])
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert all(np.isfinite(line["kl"]) for line in lines if "kl" in line)
    with open(os.path.join(workdir, "eval", "summary.json")) as f:
        summary = json.load(f)
    assert summary == json.loads(json.dumps(result["evaluation"]))
    assert np.isfinite(summary["metrics"]["ged"]["mean"])
    assert summary["model"] == "flow_fc"
