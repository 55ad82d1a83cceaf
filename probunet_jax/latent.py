"""Latent-space analysis of a trained model: distributions, projections, decoded latents.

:func:`latent_distributions` gives the prior p(z|x) of each image and the posteriors q(z|x,y) of its
annotations as :class:`LatentParts` (mixture weights, component means and covariances, a single
Gaussian being a 1-component mixture, and the representative z of
:func:`probunet_jax.sampling.latent_mean`). A flow latent (`probunet_jax.flows`) is not a mixture of
Gaussians: its parts are its base's linearized through the flow, each component mean μ mapped to
f(μ) and its covariance Σ to J Σ Jᵀ with J the flow's Jacobian at μ (a local picture; samples,
:func:`component_samples`, show the exact shapes). :func:`projection` maps z to 2-D (identity for a
2-D latent, else PCA of the component means). :func:`decode_latents` turns any z into masks for one
image, so grids (:func:`latent_grid`), interpolations (:func:`interpolate`) and per-component
samples (:func:`component_samples`) are decoded the way the sampler decodes.
:mod:`probunet_jax.plots` draws the results.

All of it needs one global z per image: for the hierarchical model (latent maps at several
scales, `probunet_jax.hierarchical`) these functions raise ValueError.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from probunet_jax import distributions, flows, sampling
from probunet_jax.model import ProbabilisticUNet, is_hierarchical


def check_global_latent(model) -> None:
    """Raises ValueError for the hierarchical model: this module's analysis needs one global
    z per image."""
    if is_hierarchical(model):
        raise ValueError(
            "Latent-space analysis needs one global latent z per image (model.latent_scales = "
            f"0); this model has latent maps at {model.latent_scales} decoder scales (one "
            f"{model.latent.latent_dim}-dimensional latent per position), which have no 2-D "
            "projection, grid or decoding of a single z."
        )


class LatentParts(NamedTuple):
    """A batch of latent distributions as mixtures of Gaussians, batch shape `[...]`.

    Attributes:
      weights: `[..., N]` mixture weights (1 for a single Gaussian, N = 1).
      means: `[..., N, d]` component means.
      covariances: `[..., N, d, d]` component covariances.
      representative: `[..., d]` the mean of the most probable component
        (:func:`probunet_jax.sampling.latent_mean`).
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    representative: np.ndarray


def _as_parts(dist: distrax.Distribution) -> LatentParts:
    """The parts of a distribution of batch shape `[B]`, as jax arrays."""
    representative = sampling.latent_mean(dist)
    if flows.is_flow(dist):  # The base's parts, linearized through the flow at each mean.
        weights, means, covariances, _ = _as_parts(dist.distribution)
        means = jnp.swapaxes(means, 0, 1)  # [N, B, d]: each point goes through its image's flow.
        jac = jnp.swapaxes(flows.jacobian(dist, means), 0, 1)  # [B, N, d, d]
        covariances = jac @ covariances @ jnp.swapaxes(jac, -1, -2)
        means = jnp.swapaxes(flows.push_forward(dist, means), 0, 1)
        return LatentParts(weights, means, covariances, representative)
    if distributions.is_mixture(dist):
        components, weights = dist.components_distribution, dist.mixture_distribution.probs
        return LatentParts(weights, components.mean(), components.covariance(), representative)
    weights = jnp.ones((*dist.batch_shape, 1))
    return LatentParts(weights, dist.mean()[:, None], dist.covariance()[:, None], representative)


@functools.partial(jax.jit, static_argnames=("model",))
def _prior_and_posteriors(model: ProbabilisticUNet, variables: dict, images, annotations):
    def posterior(mask):
        return _as_parts(model.apply(variables, images, mask, method=ProbabilisticUNet.posterior))

    prior = _as_parts(model.apply(variables, images, method=ProbabilisticUNet.prior))
    posteriors = jax.vmap(posterior, in_axes=1, out_axes=1)(annotations)  # [B, A, ...]
    return prior, posteriors


def latent_distributions(
    model: ProbabilisticUNet, variables: dict, images: jax.Array, annotations: jax.Array
) -> tuple[LatentParts, LatentParts]:
    """The prior of each image `[B, H, W, C]` and the posterior of each of its annotations
    `[B, A, H, W]`: `LatentParts` with batch `[B]` and `[B, A]`, float64 numpy."""
    check_global_latent(model)
    prior, posteriors = _prior_and_posteriors(
        model, variables, jnp.asarray(images), jnp.asarray(annotations, jnp.int32)
    )
    to_numpy = lambda parts: LatentParts(*(np.asarray(x, np.float64) for x in parts))  # noqa: E731
    return to_numpy(prior), to_numpy(posteriors)


class Projection(NamedTuple):
    """An affine map from z `[..., d]` to the plane: `(z - center) @ basis`.

    Attributes:
      center: `[d]`.
      basis: `[d, 2]` orthonormal columns.
    """

    center: np.ndarray
    basis: np.ndarray

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z) - self.center) @ self.basis

    def lift(self, xy: np.ndarray) -> np.ndarray:
        """Points of the plane `[..., 2]` back to z `[..., d]`."""
        return self.center + np.asarray(xy) @ self.basis.T


def projection(points: np.ndarray) -> Projection:
    """Identity for 2-D z; else PCA onto the top 2 principal axes of ``points`` `[M, d]`."""
    points = np.asarray(points, np.float64).reshape(-1, np.shape(points)[-1])
    d = points.shape[-1]
    if d < 2:
        raise ValueError(f"Need a latent dimension >= 2 to plot a plane, got {d}.")
    if d == 2:
        return Projection(np.zeros(2), np.eye(2))
    center = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - center, full_matrices=False)
    basis = vt[:2].T
    if basis.shape[1] < 2:  # A single point: any two axes.
        basis = np.eye(d)[:, :2]
    return Projection(center, basis)


@functools.partial(jax.jit, static_argnames=("model",))
def _decode(model: ProbabilisticUNet, variables: dict, image: jax.Array, z: jax.Array):
    features = model.apply(variables, image[None], method=ProbabilisticUNet.features)
    features = jnp.broadcast_to(features, (z.shape[0], *features.shape[1:]))  # [Z, H, W, F]
    logits = model.apply(variables, features, z, method=ProbabilisticUNet.decode)
    return sampling.logits_to_masks(logits)


def decode_latents(
    model: ProbabilisticUNet, variables: dict, image: jax.Array, z: np.ndarray
) -> np.ndarray:
    """Masks `[..., H, W]` uint8 of one image `[H, W, C]` for each z `[..., d]`."""
    check_global_latent(model)
    z = np.asarray(z, np.float32)
    flat = z.reshape(-1, z.shape[-1])
    masks = _decode(model, variables, jnp.asarray(image), jnp.asarray(flat))
    return np.asarray(masks).reshape(*z.shape[:-1], *masks.shape[1:])


class LatentGrid(NamedTuple):
    """A regular grid of the projection plane lifted to z.

    Attributes:
      z: `[R, C, d]` latents; row 0 is the top (largest y).
      x: `[C]` plane x of the columns, left to right.
      y: `[R]` plane y of the rows, top to bottom.
    """

    z: np.ndarray
    x: np.ndarray
    y: np.ndarray


def latent_grid(proj: Projection, extent: float | Sequence[float], num: int = 5) -> LatentGrid:
    """``num`` x ``num`` z on a regular grid of the projection plane, ``extent`` around its
    centre (a half-width, or (x_min, x_max, y_min, y_max))."""
    if np.ndim(extent) == 0:
        extent = (-extent, extent, -extent, extent)
    x_min, x_max, y_min, y_max = (float(e) for e in extent)
    x, y = np.linspace(x_min, x_max, num), np.linspace(y_max, y_min, num)
    return LatentGrid(proj.lift(np.stack(np.meshgrid(x, y), axis=-1)), x, y)


def latent_extent(
    parts: Sequence[LatentParts], proj: Projection, image_index: int = 0, margin: float = 1.0
) -> tuple[float, float, float, float]:
    """(x_min, x_max, y_min, y_max) of the projected component means of one image, widened by
    ``margin`` (in latent units) on each side: a window for :func:`latent_grid`."""
    points = np.concatenate([proj(p.means[image_index]).reshape(-1, 2) for p in parts])
    low, high = points.min(axis=0) - margin, points.max(axis=0) + margin
    return float(low[0]), float(high[0]), float(low[1]), float(high[1])


def interpolate(z0: np.ndarray, z1: np.ndarray, num: int = 8) -> np.ndarray:
    """z `[num, d]` on the segment from ``z0`` to ``z1`` `[d]`."""
    t = np.linspace(0.0, 1.0, num)[:, None]
    return (1 - t) * np.asarray(z0) + t * np.asarray(z1)


def component_samples(
    model: ProbabilisticUNet,
    variables: dict,
    image: jax.Array,
    key: jax.Array,
    num_samples: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Samples of each prior component of one image: masks `[N, S, H, W]`, weights `[N]`.

    For a single Gaussian prior, N = 1 (its plain samples); for a flow prior, the samples of
    each component of its base, pushed through the flow.
    """
    check_global_latent(model)
    prior = model.apply(variables, jnp.asarray(image)[None], method=ProbabilisticUNet.prior)
    base = prior.distribution if flows.is_flow(prior) else prior
    if distributions.is_mixture(base):
        components = base.components_distribution  # batch [1, N]
        weights = np.asarray(base.mixture_distribution.probs[0])
    else:
        components, weights = base, np.ones(1)
    z = components.sample(seed=key, sample_shape=num_samples)  # [S, 1, N, d] or [S, 1, d]
    z = z.reshape(num_samples, len(weights), 1, -1)  # [S, N, 1, d]: the image's batch axis last
    if flows.is_flow(prior):
        z = flows.push_forward(prior, z)
    z = np.asarray(z).reshape(num_samples, len(weights), -1)
    return decode_latents(model, variables, image, np.swapaxes(z, 0, 1)), weights
