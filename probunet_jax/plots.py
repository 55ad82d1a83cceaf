"""Notebook helpers: data and sample grids, the GED break-up table, and the latent space.

Used by ``experiments/notebooks/*.ipynb`` so that their cells hold no model logic. Figures are
``matplotlib.figure.Figure`` objects (no global pyplot state); a notebook displays the value
of a cell's last expression.

Latent space: :func:`latent_distributions` gives the prior p(z|x) of each image and the
posteriors q(z|x,y) of its annotations as :class:`LatentParts` (mixture weights, component
means and covariances; a single Gaussian is a 1-component mixture). :func:`projection` maps
z to 2-D (identity for a 2-D latent, else PCA of the component means) and
:func:`plot_latent_space` draws 2σ ellipses per component, coloured by component, with their
weights. :func:`decode_latents` turns any z into masks for one image, so grids
(:func:`latent_grid`), interpolations (:func:`interpolate`) and per-component samples
(:func:`component_samples`) are decoded the same way the sampler decodes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from probunet_jax import distributions, sampling
from probunet_jax.model import ProbabilisticUNet

GED_TERMS = (
    ("ged", "GED"),
    ("sample_annotation_distance", "E[d(S, Y)]"),
    ("sample_diversity", "E[d(S, S')]"),
    ("annotation_diversity", "E[d(Y, Y')]"),
)


def _grey(ax, image: np.ndarray, title: str | None = None) -> None:
    ax.imshow(np.asarray(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def show_examples(images: np.ndarray, annotations: np.ndarray) -> Figure:
    """Images `[N, H, W]` (or `[N, H, W, 1]`) with their annotations `[N, A, H, W]`, a row each."""
    images = np.asarray(images).reshape(np.shape(annotations)[0], *np.shape(annotations)[2:])
    n, a = np.shape(annotations)[:2]
    fig = Figure(figsize=(1.4 * (a + 1), 1.4 * n), layout="constrained")
    axes = fig.subplots(n, a + 1, squeeze=False)
    for i in range(n):
        _grey(axes[i, 0], images[i], "image" if i == 0 else None)
        for j in range(a):
            _grey(axes[i, j + 1], annotations[i, j], f"annotation {j + 1}" if i == 0 else None)
    return fig


def show_samples(
    images: np.ndarray, samples: np.ndarray, annotations: np.ndarray | None = None
) -> Figure:
    """Per image a row: the image, its annotations (if given) and its samples `[N, S, H, W]`."""
    samples = np.asarray(samples)
    n, s = samples.shape[:2]
    images = np.asarray(images).reshape(n, *samples.shape[2:])
    a = 0 if annotations is None else np.shape(annotations)[1]
    fig = Figure(figsize=(0.9 * (1 + a + s), 0.95 * n), layout="constrained")
    axes = fig.subplots(n, 1 + a + s, squeeze=False)
    for i in range(n):
        _grey(axes[i, 0], images[i], "image" if i == 0 else None)
        for j in range(a):
            _grey(axes[i, 1 + j], annotations[i, j], f"y{j + 1}" if i == 0 else None)
        for k in range(s):
            _grey(axes[i, 1 + a + k], samples[i, k], f"s{k + 1}" if i == 0 else None)
    return fig


def ged_breakup_table(summary: Mapping) -> pd.DataFrame:
    """The GED and its terms (rows), model vs oracle (columns), from an evaluation summary.

    ``summary['metrics'][column]['mean']`` as written by ``evaluation.evaluate_model``; the
    oracle's columns (synthetic data) are ``oracle_<term>``; E[d(Y, Y')] is shared.
    """
    metrics = summary["metrics"]

    def mean(column: str) -> float:
        value = metrics.get(column)
        return float("nan") if value is None or value.get("mean") is None else value["mean"]

    rows = {}
    for column, label in GED_TERMS:
        oracle = column if column == "annotation_diversity" else f"oracle_{column}"
        rows[label] = {"model": mean(column), "oracle": mean(oracle)}
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- latent space


class LatentParts(NamedTuple):
    """A batch of latent distributions as mixtures of Gaussians.

    Attributes:
      weights: `[B, N]` mixture weights (1 for a single Gaussian, N = 1).
      means: `[B, N, d]` component means.
      covariances: `[B, N, d, d]` component covariances.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray


@functools.partial(jax.jit, static_argnames=("model",))
def _prior_and_posteriors(model: ProbabilisticUNet, variables: dict, images, annotations):
    def posterior(mask):
        dist = model.apply(variables, images, mask, method=_posterior)
        return _as_parts(dist)

    prior = _as_parts(model.apply(variables, images, method=_prior))
    posteriors = jax.vmap(posterior, in_axes=1, out_axes=1)(annotations)  # [B, A, ...]
    return prior, posteriors


def _prior(module: ProbabilisticUNet, images):
    return module.prior(images, train=False)


def _posterior(module: ProbabilisticUNet, images, mask):
    return module.posterior(images, mask, train=False)


def _as_parts(dist: distrax.Distribution) -> tuple[jax.Array, jax.Array, jax.Array]:
    if distributions.is_mixture(dist):
        components, weights = dist.components_distribution, dist.mixture_distribution.probs
        return weights, components.mean(), components.covariance()
    weights = jnp.ones((*dist.batch_shape, 1))
    return weights, dist.mean()[:, None], dist.covariance()[:, None]


def latent_distributions(
    model: ProbabilisticUNet, variables: dict, images: jax.Array, annotations: jax.Array
) -> tuple[LatentParts, LatentParts]:
    """The prior of each image `[B, H, W, C]` and the posterior of each of its annotations
    `[B, A, H, W]`: `LatentParts` with batch `[B]` and `[B, A]`."""
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


def _ellipse(ax, mean: np.ndarray, cov: np.ndarray, color, alpha: float = 0.0, **kwargs) -> None:
    """The 2σ ellipse of a 2-D Gaussian `cov` `[2, 2]` at `mean` `[2]`: outline, and a fill of
    opacity ``alpha`` if > 0."""
    values, vectors = np.linalg.eigh(cov)
    width, height = 2 * 2 * np.sqrt(np.maximum(values[::-1], 1e-12))
    angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
    if alpha > 0:
        ax.add_patch(Ellipse(mean, width, height, angle=angle, facecolor=color, alpha=alpha))
    ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, edgecolor=color, **kwargs))


def plot_latent_space(
    prior: LatentParts,
    posteriors: LatentParts,
    proj: Projection,
    *,
    image_index: int = 0,
    ax=None,
) -> Figure | None:
    """Prior components of one image (filled 2σ ellipses, colour = component, opacity and
    label = weight) and the posterior of each of its annotations (dashed, black)."""
    fig = None
    if ax is None:
        fig = Figure(figsize=(4.5, 4.5), layout="constrained")
        ax = fig.subplots()
    basis = proj.basis
    weights, means, covs = (x[image_index] for x in prior)
    colors = [f"C{k % 10}" for k in range(len(weights))]
    for k in np.argsort(-weights):
        mean2, cov2 = proj(means[k]), basis.T @ covs[k] @ basis
        _ellipse(ax, mean2, cov2, colors[k], alpha=0.15 + 0.6 * weights[k])
        ax.plot(*mean2, "o", color=colors[k], label=f"prior {k}: w={weights[k]:.2f}")
    post_w, post_m, post_c = (x[image_index] for x in posteriors)  # [A, N, ...]
    for a in range(post_m.shape[0]):
        for k in range(post_m.shape[1]):
            if post_w[a, k] < 0.05:
                continue
            mean2 = proj(post_m[a, k])
            _ellipse(ax, mean2, basis.T @ post_c[a, k] @ basis, "k", linestyle="--")
            ax.plot(*mean2, "x", color="k")
            ax.annotate(f"y{a + 1}", mean2, fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    axis = "z" if proj.basis.shape[0] == 2 else "PC"
    ax.set_xlabel(f"{axis}1")
    ax.set_ylabel(f"{axis}2")
    ax.legend(fontsize=6, loc="best")
    ax.set_title(f"image {image_index}: prior (filled) and posteriors (dashed)", fontsize=8)
    return fig


@functools.partial(jax.jit, static_argnames=("model",))
def _decode(model: ProbabilisticUNet, variables: dict, image: jax.Array, z: jax.Array):
    features = model.apply(variables, image[None], method=_features)  # [1, H, W, F]
    features = jnp.broadcast_to(features, (z.shape[0], *features.shape[1:]))
    logits = model.apply(variables, features, z, method=ProbabilisticUNet.decode)
    return sampling.logits_to_masks(logits)


def _features(module: ProbabilisticUNet, images):
    return module.features(images, train=False)


def decode_latents(
    model: ProbabilisticUNet, variables: dict, image: jax.Array, z: np.ndarray
) -> np.ndarray:
    """Masks `[..., H, W]` uint8 of one image `[H, W, C]` for each z `[..., d]`."""
    z = np.asarray(z, np.float32)
    flat = z.reshape(-1, z.shape[-1])
    masks = _decode(model, variables, jnp.asarray(image), jnp.asarray(flat))
    return np.asarray(masks).reshape(*z.shape[:-1], *masks.shape[1:])


def latent_grid(proj: Projection, extent: float | Sequence[float], num: int = 5) -> np.ndarray:
    """z `[num, num, d]` on a regular grid of the projection plane, ``extent`` around its centre
    (a half-width, or (x_min, x_max, y_min, y_max)); row 0 is the top (largest y)."""
    if np.ndim(extent) == 0:
        extent = (-extent, extent, -extent, extent)
    x_min, x_max, y_min, y_max = (float(e) for e in extent)
    xs, ys = np.linspace(x_min, x_max, num), np.linspace(y_max, y_min, num)
    xy = np.stack(np.meshgrid(xs, ys), axis=-1)  # [num, num, 2]
    return proj.lift(xy)


def show_decoded_grid(masks: np.ndarray, extent: Sequence[float]) -> Figure:
    """Masks `[R, C, H, W]` decoded on a :func:`latent_grid` over ``extent``, axes labelled."""
    fig = show_mask_grid(masks, title="decoded grid over the projection plane")
    rows, cols = np.shape(masks)[:2]
    axes = fig.axes
    xs, ys = np.linspace(extent[0], extent[1], cols), np.linspace(extent[3], extent[2], rows)
    for c in range(cols):
        axes[(rows - 1) * cols + c].set_xlabel(f"{xs[c]:.1f}", fontsize=7)
    for r in range(rows):
        axes[r * cols].set_ylabel(f"{ys[r]:.1f}", fontsize=7)
    return fig


def interpolate(z0: np.ndarray, z1: np.ndarray, num: int = 8) -> np.ndarray:
    """z `[num, d]` on the segment from ``z0`` to ``z1`` `[d]`."""
    t = np.linspace(0.0, 1.0, num)[:, None]
    return (1 - t) * np.asarray(z0) + t * np.asarray(z1)


def show_mask_grid(
    masks: np.ndarray, title: str = "", labels: Sequence[str] | None = None
) -> Figure:
    """Masks `[R, C, H, W]` (or `[C, H, W]`, one row) as a grid, with optional row labels."""
    masks = np.asarray(masks)
    if masks.ndim == 3:
        masks = masks[None]
    rows, cols = masks.shape[:2]
    fig = Figure(figsize=(0.9 * cols + 0.6, 0.9 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        for c in range(cols):
            _grey(axes[r, c], masks[r, c])
        if labels is not None:
            axes[r, 0].set_ylabel(labels[r], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def component_samples(
    model: ProbabilisticUNet,
    variables: dict,
    image: jax.Array,
    key: jax.Array,
    num_samples: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Samples of each prior component of one image: masks `[N, S, H, W]`, weights `[N]`.

    For a single Gaussian prior, N = 1 (its plain samples).
    """
    prior = model.apply(variables, jnp.asarray(image)[None], method=_prior)
    if distributions.is_mixture(prior):
        components = prior.components_distribution  # batch [1, N]
        weights = np.asarray(prior.mixture_distribution.probs[0])
    else:
        components, weights = prior, np.ones(1)
    z = components.sample(seed=key, sample_shape=num_samples)  # [S, 1, N, d] or [S, 1, d]
    z = np.asarray(z).reshape(num_samples, len(weights), -1)
    return decode_latents(model, variables, image, np.swapaxes(z, 0, 1)), weights


def representative(parts: LatentParts) -> np.ndarray:
    """The mean of the most probable component, `[..., d]` (as `sampling.latent_mean`)."""
    best = np.argmax(parts.weights, axis=-1)[..., None, None]
    return np.take_along_axis(parts.means, best, axis=-2)[..., 0, :]


def latent_extent(
    parts: Sequence[LatentParts], proj: Projection, image_index: int = 0, margin: float = 1.0
) -> tuple[float, float, float, float]:
    """(x_min, x_max, y_min, y_max) of the projected component means of one image, widened by
    ``margin`` (in latent units) on each side: a window for :func:`latent_grid`."""
    points = np.concatenate([proj(p.means[image_index]).reshape(-1, 2) for p in parts])
    low, high = points.min(axis=0) - margin, points.max(axis=0) + margin
    return float(low[0]), float(high[0]), float(low[1]), float(high[1])
