"""Latent-space analysis on a tiny untrained model: parts against the distributions, the
representative z of sampling.latent_mean, projections, grids and decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probunet_jax import latent, presets, sampling
from probunet_jax.model import ProbabilisticUNet, init_variables, model_from_config

SIZE, NUM_IMAGES, NUM_ANNOTATIONS = 16, 2, 3


@pytest.fixture(scope="module", params=["mixture_fc", "fc", "flow_fc"])
def tiny(request):
    config = presets.model_config(request.param, filters=(4, 8), convs_per_block=1)
    model = model_from_config(config)
    variables = init_variables(model, jax.random.key(0), (SIZE, SIZE, 1))
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(NUM_IMAGES, SIZE, SIZE, 1)).astype(np.float32)
    annotations = (rng.uniform(size=(NUM_IMAGES, NUM_ANNOTATIONS, SIZE, SIZE)) > 0.5).astype(
        np.uint8
    )
    return config, model, variables, images, annotations


def test_latent_distributions_match_the_model(tiny):
    config, model, variables, images, annotations = tiny
    prior, posteriors = latent.latent_distributions(model, variables, images, annotations)
    n, d = config.num_components, config.latent_dim
    assert prior.weights.shape == (NUM_IMAGES, n) and prior.means.shape == (NUM_IMAGES, n, d)
    assert prior.covariances.shape == (NUM_IMAGES, n, d, d)
    assert posteriors.representative.shape == (NUM_IMAGES, NUM_ANNOTATIONS, d)
    np.testing.assert_allclose(prior.weights.sum(-1), 1.0, rtol=1e-5)
    dist = model.apply(variables, jnp.asarray(images), method=ProbabilisticUNet.prior)
    np.testing.assert_allclose(prior.representative, sampling.latent_mean(dist), rtol=1e-5)
    mask = jnp.asarray(annotations[:, 1], jnp.int32)
    post = model.apply(variables, jnp.asarray(images), mask, method=ProbabilisticUNet.posterior)
    np.testing.assert_allclose(
        posteriors.representative[:, 1], sampling.latent_mean(post), rtol=1e-4, atol=1e-6
    )


def test_projection_identity_and_pca():
    plane = latent.projection(np.random.default_rng(0).normal(size=(5, 2)))
    np.testing.assert_array_equal(plane.basis, np.eye(2))
    points = np.zeros((4, 3))
    points[:, 0] = [0, 1, 2, 3]  # Spread along z1 only.
    proj = latent.projection(points)
    np.testing.assert_allclose(np.abs(proj.basis[:, 0]), [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(proj.lift(proj(points)), points, atol=1e-12)
    with pytest.raises(ValueError, match="latent dimension >= 2"):
        latent.projection(np.zeros((3, 1)))


def test_latent_grid_and_interpolation():
    proj = latent.projection(np.eye(3))
    grid = latent.latent_grid(proj, (-1, 1, -2, 2), num=3)
    assert grid.z.shape == (3, 3, 3)
    np.testing.assert_allclose(grid.x, [-1, 0, 1])
    np.testing.assert_allclose(grid.y, [2, 0, -2])  # Row 0 is the top.
    np.testing.assert_allclose(proj(grid.z[0, 2]), [1, 2], atol=1e-12)
    path = latent.interpolate(np.zeros(2), np.ones(2), num=5)
    np.testing.assert_allclose(path[[0, 2, -1]], [[0, 0], [0.5, 0.5], [1, 1]])


def test_decoded_latents_and_component_samples(tiny):
    config, model, variables, images, _ = tiny
    z = np.random.default_rng(1).normal(size=(2, 3, config.latent_dim))
    masks = latent.decode_latents(model, variables, images[0], z)
    assert masks.shape == (2, 3, SIZE, SIZE) and masks.dtype == np.uint8
    features = model.apply(variables, jnp.asarray(images[:1]), method=ProbabilisticUNet.features)
    logits = model.apply(
        variables, features, jnp.asarray(z[1, 2:], jnp.float32), method=ProbabilisticUNet.decode
    )
    np.testing.assert_array_equal(masks[1, 2], sampling.logits_to_masks(logits)[0])
    samples, weights = latent.component_samples(model, variables, images[0], jax.random.key(0), 4)
    assert samples.shape == (config.num_components, 4, SIZE, SIZE)
    assert weights.shape == (config.num_components,) and np.isclose(weights.sum(), 1.0)
