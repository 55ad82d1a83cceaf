"""Tests of the latent-collapse diagnostics: hand cases, closed forms, a quadrature reference for
the Monte Carlo marginal KL of mixtures, the validation aggregates, jit, bad inputs."""

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probunet_jax import diagnostics
from probunet_jax.distributions import GumbelSoftmaxMixture


def diag(loc, scale):
    return distrax.MultivariateNormalDiag(
        jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32)
    )


def mixture(logits, loc, scale, temperature=0.5):
    return GumbelSoftmaxMixture(jnp.asarray(logits, jnp.float32), diag(loc, scale), temperature)


def normal_kl(m1, v1, m2, v2):
    return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


# ----------------------------------------------------------------------------- KL per dimension


def test_collapsed_posterior_has_zero_kl_in_every_dimension_and_no_active_unit():
    p = diag([[0.0, 1.0], [2.0, -1.0]], [[1.0, 2.0], [0.5, 1.0]])
    np.testing.assert_allclose(diagnostics.kl_per_dimension(p, p), 0.0, atol=1e-7)
    # The posterior equals the prior N(0, I) for every image: its mean never varies.
    q = diag(np.zeros((5, 3)), np.ones((5, 3)))
    assert int(diagnostics.active_units(diagnostics.latent_mean(q))) == 0
    m = mixture([[0.3, -0.2]] * 2, [[[0.0, 1.0], [3.0, -1.0]]] * 2, [[[1.0, 1.0], [0.5, 2.0]]] * 2)
    kl = diagnostics.kl_per_dimension(m, m, key=jax.random.key(0), num_samples=16)
    np.testing.assert_allclose(kl, 0.0, atol=1e-6)  # log q - log p is 0 sample by sample.


def test_gaussian_kl_per_dimension_is_the_closed_form_of_the_marginals():
    q = diag([[1.0, 0.0]], [[2.0, 0.5]])
    p = diag([[0.0, 0.0]], [[1.0, 1.0]])
    expected = [normal_kl(1.0, 4.0, 0.0, 1.0), normal_kl(0.0, 0.25, 0.0, 1.0)]
    np.testing.assert_allclose(diagnostics.kl_per_dimension(q, p)[0], expected, rtol=1e-6)
    # For factorized Gaussians the dimensions add up to the full KL.
    np.testing.assert_allclose(
        jnp.sum(diagnostics.kl_per_dimension(q, p), -1), q.kl_divergence(p), rtol=1e-6
    )
    # Full covariance: the marginal variance of z_j is Σ_jj = Σ_k L_jk².
    tril = jnp.array([[[1.0, 0.0], [0.8, 0.6]]])
    fc = distrax.MultivariateNormalTri(jnp.array([[0.5, -0.5]]), tril)
    expected = [normal_kl(0.5, 1.0, 0.0, 1.0), normal_kl(-0.5, 0.64 + 0.36, 0.0, 1.0)]
    np.testing.assert_allclose(diagnostics.kl_per_dimension(fc, p)[0], expected, rtol=1e-5)


def _quadrature_kl(wq, mq, sq, wp, mp, sp):
    """KL of two 1-D mixtures by the trapezoid rule on a fine grid."""
    x = np.linspace(-15, 15, 200001)

    def density(w, m, s):
        return sum(
            wk * np.exp(-0.5 * ((x - mk) / sk) ** 2) / (sk * np.sqrt(2 * np.pi))
            for wk, mk, sk in zip(w, m, s, strict=True)
        )

    q, p = density(wq, mq, sq), density(wp, mp, sp)
    return np.trapezoid(np.where(q > 0, q * np.log(q / p), 0.0), x)


def test_mixture_kl_per_dimension_matches_quadrature():
    logits_q, logits_p = np.log([[0.7, 0.3]]), np.log([[0.2, 0.8]])
    loc = np.array([[[-1.0, 2.0], [2.0, 0.0]]])
    scale_q = np.array([[[0.5, 1.0], [1.0, 0.3]]])
    scale_p = np.array([[[1.5, 1.0], [1.0, 2.0]]])
    q, p = mixture(logits_q, loc, scale_q), mixture(logits_p, loc + 0.5, scale_p)
    kl = diagnostics.kl_per_dimension(q, p, key=jax.random.key(0), num_samples=200_000)
    for j in range(2):
        expected = _quadrature_kl(
            [0.7, 0.3],
            loc[0, :, j],
            scale_q[0, :, j],
            [0.2, 0.8],
            loc[0, :, j] + 0.5,
            scale_p[0, :, j],
        )
        np.testing.assert_allclose(kl[0, j], expected, rtol=0.02)
    # A mixture against a single Gaussian works too (K = 2 against K = 1).
    gaussian = diag([[0.0, 0.0]], [[2.0, 2.0]])
    kl = diagnostics.kl_per_dimension(q, gaussian, key=jax.random.key(1), num_samples=200_000)
    expected = _quadrature_kl([0.7, 0.3], loc[0, :, 0], scale_q[0, :, 0], [1.0], [0.0], [2.0])
    np.testing.assert_allclose(kl[0, 0], expected, rtol=0.02)


def test_zero_weight_components_drop_out_of_the_marginals():
    loc = np.array([[[0.0, 0.0], [50.0, 50.0]]])
    scale = np.ones((1, 2, 2))
    pruned = mixture([[0.0, -1e9]], loc, scale)  # Weight exactly 0 in float32.
    single = diag([[0.0, 0.0]], [[1.0, 1.0]])
    p = diag([[1.0, 0.0]], [[1.0, 1.0]])
    kl = diagnostics.kl_per_dimension(pruned, p, key=jax.random.key(0), num_samples=50_000)
    np.testing.assert_allclose(kl, diagnostics.kl_per_dimension(single, p), atol=0.02)
    assert np.all(np.isfinite(kl))


def test_kl_per_dimension_gradient_is_the_closed_forms():
    def kl(mean_q, scale_q):
        return diagnostics.kl_per_dimension(diag(mean_q, scale_q), diag([[0.0]], [[2.0]]))[0, 0]

    grad_mean, grad_scale = jax.grad(kl, argnums=(0, 1))(jnp.array([[1.0]]), jnp.array([[0.5]]))
    np.testing.assert_allclose(grad_mean, [[1.0 / 4.0]], rtol=1e-6)  # (μ_q − μ_p) / σ_p²
    np.testing.assert_allclose(grad_scale, [[-1 / 0.5 + 0.5 / 4.0]], rtol=1e-6)  # −1/σ_q + σ_q/σ_p²


# ----------------------------------------------------------------------------- units, weights


def test_active_units_counts_dimensions_whose_mean_varies():
    rng = np.random.default_rng(0)
    means = np.stack(
        [rng.normal(0, 1, 1000), rng.normal(3, 0.05, 1000), np.full(1000, 7.0)], axis=1
    )
    assert int(diagnostics.active_units(jnp.asarray(means))) == 1  # Var 1, 0.0025, 0.
    assert int(diagnostics.active_units(jnp.asarray(means), threshold=0.001)) == 2
    # A mixture's mean is Σ π_k μ_k.
    m = mixture(np.log([[0.25, 0.75]]), [[[0.0, 4.0], [4.0, 0.0]]], np.ones((1, 2, 2)))
    np.testing.assert_allclose(diagnostics.latent_mean(m), [[3.0, 1.0]], rtol=1e-6)


def test_weight_entropy_usage_and_components_in_use_on_hand_cases():
    one_hot = jnp.eye(4)[jnp.array([0, 0, 2])]
    np.testing.assert_allclose(diagnostics.weight_entropy(one_hot), 0.0, atol=1e-7)
    uniform = jnp.full((3, 5), 0.2)
    np.testing.assert_allclose(diagnostics.weight_entropy(uniform), np.log(5), rtol=1e-6)
    np.testing.assert_allclose(diagnostics.usage(one_hot), [2 / 3, 0, 1 / 3, 0], rtol=1e-6)
    np.testing.assert_allclose(
        diagnostics.usage(one_hot, valid=jnp.array([True, False, True])), [0.5, 0, 0.5, 0]
    )
    assert int(diagnostics.components_in_use(diagnostics.usage(one_hot))) == 2
    assert int(diagnostics.components_in_use(jnp.array([0.5, 0.3, 0.195, 0.005]))) == 3
    np.testing.assert_array_equal(diagnostics.argmax_counts(one_hot), [2, 0, 1, 0])
    # One-hot per image but different components: per-image entropy 0, aggregate log 2.
    values = diagnostics.weight_entropy(diagnostics.usage(jnp.eye(2)))
    np.testing.assert_allclose(values, np.log(2), rtol=1e-6)


def _batch(seed=0, b=6, n=3, d=2):
    rng = np.random.default_rng(seed)
    prior = mixture(
        rng.normal(size=(b, n)),
        rng.normal(size=(b, n, d)),
        np.exp(rng.normal(size=(b, n, d)) * 0.3),
    )
    posterior = mixture(
        rng.normal(size=(b, n)) * 2,
        rng.normal(size=(b, n, d)),
        np.exp(rng.normal(size=(b, n, d)) * 0.3),
    )
    return prior, posterior


def test_batch_diagnostics_of_a_mixture_and_jit():
    prior, posterior = _batch()
    key = jax.random.key(3)
    values = diagnostics.batch_diagnostics(prior, posterior, key=key)
    assert set(values) == {
        "kl_dim",
        "active_units",
        "prior_weight_entropy",
        "posterior_weight_entropy",
        "usage_entropy",
        "components_in_use",
        "posterior_components_in_use",
        "components_argmax",
    }
    weights = np.asarray(prior.mixture_distribution.probs)
    np.testing.assert_allclose(
        values["prior_weight_entropy"], np.mean(-np.sum(weights * np.log(weights), -1)), rtol=1e-5
    )
    assert int(values["components_argmax"]) == len(set(np.argmax(weights, -1)))
    assert values["kl_dim"].shape == (2,) and np.all(np.isfinite(values["kl_dim"]))
    jitted = jax.jit(lambda a, b, k: diagnostics.batch_diagnostics(a, b, key=k))(
        prior, posterior, key
    )
    for name in values:
        np.testing.assert_allclose(jitted[name], values[name], rtol=1e-5, atol=1e-6, err_msg=name)
    gaussian = diagnostics.batch_diagnostics(
        diag(np.zeros((3, 2)), np.ones((3, 2))), diag(np.zeros((3, 2)), np.ones((3, 2)))
    )
    assert set(gaussian) == {"kl_dim", "active_units"}


def test_validation_aggregates_equal_the_direct_computation():
    """Two validation batches with a padded image and a padded rater: the logged values are those
    of the valid (image, annotation) pairs, computed directly."""
    key = jax.random.key(0)
    batches, direct_means, direct_weights, direct_kl = [], [], [], []
    totals, count = None, 0.0
    for seed in (1, 2):
        prior, _ = _batch(seed)
        posteriors = [_batch(seed + 10 * a)[1] for a in range(2)]
        rater_valid = np.ones((6, 2), bool)
        rater_valid[0, 1] = False  # Image 0 has one annotation.
        valid = np.array([True] * 5 + [False])  # Image 5 is padding.
        terms = [diagnostics.annotation_terms(q, prior, key=key) for q in posteriors]
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *terms)
        sums = diagnostics.validation_sums(stacked, jnp.asarray(rater_valid), jnp.asarray(valid))
        sums["count"] = jnp.sum(valid)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        for b in range(5):
            raters = [a for a in range(2) if rater_valid[b, a]]
            direct_kl.append(np.mean([np.asarray(terms[a]["kl_dim"][b]) for a in raters], 0))
            direct_weights.append(np.asarray(prior.mixture_distribution.probs[b]))
            direct_means += [np.asarray(terms[a]["mean"][b]) for a in raters]
        batches.append(prior)
        count += 5
    totals = jax.device_get(totals)
    count = float(totals.pop("count"))
    values = diagnostics.finish_validation({k: v / count for k, v in totals.items()})
    np.testing.assert_allclose(
        [values["latent/kl_dim_0"], values["latent/kl_dim_1"]], np.mean(direct_kl, 0), rtol=1e-5
    )
    variance = np.var(np.array(direct_means), axis=0)
    assert values["latent/active_units"] == float(np.sum(variance > 0.01))
    usage = np.mean(direct_weights, 0)
    np.testing.assert_allclose(
        values["latent/usage_entropy"], -np.sum(usage * np.log(usage)), rtol=1e-5
    )
    assert values["latent/components_in_use"] == float(np.sum(usage > 0.01))
    entropy = np.mean([-np.sum(w * np.log(w)) for w in direct_weights])
    np.testing.assert_allclose(values["latent/prior_weight_entropy"], entropy, rtol=1e-5)
    assert values["latent/components_argmax"] == len({int(np.argmax(w)) for w in direct_weights})
    assert all(isinstance(v, float) for v in values.values())
    assert not any(k.startswith("latent/_") for k in values)


def test_other_latents_get_no_diagnostics_and_bad_inputs_raise():
    other = distrax.Independent(distrax.Laplace(jnp.zeros((2, 3)), jnp.ones((2, 3))), 1)
    assert not diagnostics.is_supported(other)
    assert diagnostics.annotation_terms(other, other, key=jax.random.key(0)) == {}
    assert diagnostics.validation_sums({}, jnp.ones((2, 1)), jnp.ones(2)) == {}
    assert diagnostics.finish_validation({"loss": np.float32(2.0)}) == {"loss": 2.0}
    with pytest.raises(ValueError, match="Gaussian or a mixture"):
        diagnostics.kl_per_dimension(other, other)
    p = diag(np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="same batch and event shapes"):
        diagnostics.kl_per_dimension(p, diag(np.zeros((2, 4)), np.ones((2, 4))))
    m = mixture(np.zeros((2, 2)), np.zeros((2, 2, 3)), np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="needs a PRNG"):
        diagnostics.kl_per_dimension(m, p)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        diagnostics.kl_per_dimension(m, p, key=jax.random.key(0), num_samples=0)
    with pytest.raises(ValueError, match=r"means must be \[M, d\]"):
        diagnostics.active_units(jnp.zeros(5))
