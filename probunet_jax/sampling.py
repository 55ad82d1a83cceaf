"""Jit-compiled sampling: the U-Net and the prior run once per image, the head per sample.

For the hierarchical model (`probunet_jax.hierarchical`, ``model.latent_scales`` > 0) the
prior's encoder runs once per image, and its decoder, conditioned on z from the coarsest scale
up, with the head per sample (vmapped over the samples).
"""

from __future__ import annotations

import functools

import distrax
import jax
import jax.numpy as jnp

from probunet_jax import distributions, flows
from probunet_jax.model import ProbabilisticUNet, is_hierarchical


@functools.partial(jax.jit, static_argnames=("model", "num_samples"))
def sample_logits(
    model: ProbabilisticUNet,
    variables: dict,
    images: jax.Array,
    key: jax.Array,
    num_samples: int,
) -> jax.Array:
    """Logits `[B, S, H, W, C]` of S samples z ~ p(z|x) per image `[B, H, W, C]`."""
    if is_hierarchical(model):
        return _hierarchical_samples(model, variables, images, key, num_samples)
    features, prior = model.apply(variables, images, method=ProbabilisticUNet.features_and_prior)
    return decode_samples(model, variables, features, prior, key, num_samples)


def _hierarchical_samples(model, variables, images, key, num_samples) -> jax.Array:
    """`sample_logits` of the hierarchical model: the encoder once per image, then sample s
    (key ``split(key, S)[s]``) drawn top down and decoded (`HierarchicalProbUNet.sample`)."""
    levels = model.apply(variables, images, method="encode")
    sample = functools.partial(model.apply, variables, method="sample")
    logits = jax.vmap(sample, in_axes=(None, 0))(levels, jax.random.split(key, num_samples))
    return jnp.moveaxis(logits, 0, 1)


def decode_samples(
    model: ProbabilisticUNet,
    variables: dict,
    features: jax.Array,
    dist: distrax.Distribution,
    key: jax.Array,
    num_samples: int,
) -> jax.Array:
    """Logits `[B, S, H, W, C]` of S samples z ~ ``dist`` (batch shape `[B]`) decoded with the
    per-image ``features`` `[B, H, W, F]` (`ProbabilisticUNet.features`): only the head runs
    per sample."""
    z = dist.sample(seed=key, sample_shape=num_samples)  # [S, B, d]
    decode = functools.partial(model.apply, variables, method=ProbabilisticUNet.decode)
    logits = jax.vmap(decode, in_axes=(None, 0))(features, z)  # [S, B, H, W, C]
    return jnp.moveaxis(logits, 0, 1)


def logits_to_masks(logits: jax.Array) -> jax.Array:
    """Hard masks `[...]` uint8 from logits `[..., C]`: probability > 0.5 if C = 1, else argmax."""
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).astype(jnp.uint8)  # sigmoid(l) > 0.5  <=>  l > 0
    return jnp.argmax(logits, axis=-1).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("model", "num_samples"))
def sample_masks(
    model: ProbabilisticUNet,
    variables: dict,
    images: jax.Array,
    key: jax.Array,
    num_samples: int,
) -> jax.Array:
    """Binary (or class) masks `[B, S, H, W]` uint8 of S samples per image."""
    return logits_to_masks(sample_logits(model, variables, images, key, num_samples))


def latent_mean(dist: distrax.Distribution) -> jax.Array:
    """A representative z `[B, d]`: the mean of a Gaussian; for a mixture, the mean of its
    most probable component (the mixture's mean can fall between its modes); for a flow, the
    flow applied to its base's representative z."""
    if flows.is_flow(dist):
        return flows.push_forward(dist, latent_mean(dist.distribution))
    if not distributions.is_mixture(dist):
        return dist.mean()
    component = jnp.argmax(dist.mixture_distribution.logits, axis=-1)  # [B]
    means = dist.components_distribution.mean()  # [B, N, d]
    return jnp.take_along_axis(means, component[:, None, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=("model",))
def prior_mean_logits(model: ProbabilisticUNet, variables: dict, images: jax.Array) -> jax.Array:
    """Logits `[B, H, W, C]` for the prior's representative z (see `latent_mean`; at every
    scale, top down, for the hierarchical model)."""
    if is_hierarchical(model):
        return model.apply(variables, images, method="prior_mean_logits")
    features, prior = model.apply(variables, images, method=ProbabilisticUNet.features_and_prior)
    return model.apply(variables, features, latent_mean(prior), method=ProbabilisticUNet.decode)


def _posterior_reconstruction(model: ProbabilisticUNet, images, masks) -> jax.Array:
    return model.decode(model.features(images), latent_mean(model.posterior(images, masks)))


@functools.partial(jax.jit, static_argnames=("model",))
def posterior_reconstruction(
    model: ProbabilisticUNet, variables: dict, images: jax.Array, masks: jax.Array
) -> jax.Array:
    """Logits `[B, H, W, C]` for the posterior's representative z given the masks `[B, H, W]`."""
    if is_hierarchical(model):
        return model.apply(variables, images, masks, method="posterior_reconstruction")
    return model.apply(variables, images, masks, method=_posterior_reconstruction)
