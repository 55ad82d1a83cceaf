"""The training objective: pixel cross-entropy + β·KL(q‖p) (Kohl et al. 2018, eq. 4), with a
KL warm-up, or GECO's constrained form (Rezende & Viola 2018) as an alternative to β; the
authors' code's extra λ·Σ‖W‖₂ over the prior and posterior nets, as a gradient transformation."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from probunet_jax import distributions
from probunet_jax.model import ModelOutput


def pixel_cross_entropy(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Cross-entropy summed over pixels, `[B]`.

    Args:
      logits: `[B, H, W, C]`; C = 1 means a sigmoid (binary), C > 1 a softmax.
      mask: `[B, H, W]` integer class labels ({0, 1} in the binary case).
    """
    if logits.shape[:3] != mask.shape:
        raise ValueError(
            f"logits [B, H, W, C] {logits.shape} and mask [B, H, W] {mask.shape} disagree."
        )
    if logits.shape[-1] == 1:
        per_pixel = optax.sigmoid_binary_cross_entropy(logits[..., 0], mask.astype(logits.dtype))
    else:
        per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, mask.astype(jnp.int32))
    return jnp.sum(per_pixel, axis=(1, 2))


def kl_terms(
    output: ModelOutput,
    *,
    key: jax.Array | None = None,
    num_samples: int = distributions.DEFAULT_KL_SAMPLES,
) -> dict[str, jax.Array]:
    """KL(q‖p) of each example, `[B]`, under ``kl`` (`distributions.kl_divergence`: closed
    form, or Monte Carlo with ``num_samples`` samples and ``key`` for mixtures).

    For hierarchical latents (``output.posterior`` and ``output.prior`` tuples of per-scale
    distributions over the flattened positions, `hierarchical.HierarchicalProbUNet`) also the
    KL of each scale i summed over its positions, ``kl/scale_i`` (key ``fold_in(key, i)``);
    ``kl`` is their sum.
    """
    if not isinstance(output.posterior, tuple):
        kl = distributions.kl_divergence(
            output.posterior, output.prior, key=key, num_samples=num_samples
        )
        return {"kl": kl}
    batch = output.logits.shape[0]
    scales = {}
    for i, (q, p) in enumerate(zip(output.posterior, output.prior, strict=True)):
        scale_key = None if key is None else jax.random.fold_in(key, i)
        kl = distributions.kl_divergence(q, p, key=scale_key, num_samples=num_samples)
        scales[f"kl/scale_{i}"] = jnp.sum(kl.reshape(batch, -1), axis=1)
    return {"kl": sum(scales.values()), **scales}


def elbo_terms(
    output: ModelOutput,
    mask: jax.Array,
    *,
    beta: float,
    key: jax.Array | None = None,
    kl_samples: int = distributions.DEFAULT_KL_SAMPLES,
) -> dict[str, jax.Array]:
    """The negative ELBO of each example: ``reconstruction`` (pixel cross-entropy summed over
    pixels), ``kl`` (KL(q‖p), closed form or Monte Carlo; for hierarchical latents the sum over
    scales, each also under ``kl/scale_i``: `kl_terms`) and ``loss`` = reconstruction + β·kl,
    each `[B]`.

    Args:
      output: a forward pass with z drawn from the posterior (`ProbabilisticUNet.__call__`).
      mask: `[B, H, W]` the annotation the posterior saw.
      beta: weight of the KL term.
      key: PRNG key for the Monte Carlo KL (needed for mixtures).
      kl_samples: number of Monte Carlo samples of the KL for mixtures.
    """
    reconstruction = pixel_cross_entropy(output.logits, mask)
    kl = kl_terms(output, key=key, num_samples=kl_samples)
    return {"loss": reconstruction + beta * kl["kl"], "reconstruction": reconstruction, **kl}


def elbo_loss(
    output: ModelOutput,
    mask: jax.Array,
    *,
    beta: float,
    key: jax.Array | None = None,
    kl_samples: int = distributions.DEFAULT_KL_SAMPLES,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss with the paper code's scaling: the batch mean of :func:`elbo_terms`.

    Returns:
      The scalar loss and a metrics dict with `loss`, `reconstruction` and `kl` (and the
      hierarchical model's `kl/scale_i`), batch means.
    """
    terms = elbo_terms(output, mask, beta=beta, key=key, kl_samples=kl_samples)
    metrics = {name: jnp.mean(value) for name, value in terms.items()}
    return metrics["loss"], metrics


def kl_weight(beta: float, step: jax.Array, warmup_steps: int) -> jax.Array:
    """β ramped linearly from 0 at step 0 to ``beta`` at ``warmup_steps`` (0: no warm-up)."""
    if warmup_steps <= 0:
        return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


class GecoState(NamedTuple):
    """GECO's Lagrange multiplier λ and the moving average of its constraint (scalars)."""

    multiplier: jax.Array
    constraint_average: jax.Array

    @classmethod
    def initial(cls, target: float = 1.0, num_pixels: int = 1) -> GecoState:
        """λ = κ·H·W: at the start GECO's gradient is the β = 1 ELBO's (see `geco_loss`)."""
        return cls(jnp.asarray(target * num_pixels, jnp.float32), jnp.zeros((), jnp.float32))


def geco_loss(
    metrics: dict[str, jax.Array], state: GecoState, target: float, num_pixels: int
) -> tuple[jax.Array, jax.Array]:
    """GECO (Rezende & Viola 2018; the hierarchical Probabilistic U-Net's training): minimise
    the KL subject to a reconstruction constraint, loss = KL + λ·C with the relative constraint
    C = reconstruction / (pixels · ``target``) − 1: how far the mean cross-entropy per pixel is
    above the target κ (nats), as a fraction of κ. With λ = κ·pixels (`GecoState.initial`) the
    gradient is that of reconstruction + KL; λ then grows while C > 0 and shrinks once the
    target is met, and the effective KL weight is β = κ·pixels / λ.

    Args:
      metrics: batch means ``reconstruction`` (summed over pixels) and ``kl``.
      state: λ (treated as a constant) and the constraint's moving average.
      target: κ > 0, the mean per-pixel cross-entropy the reconstruction must reach.
      num_pixels: H·W.

    Returns:
      The loss and the batch's constraint C.
    """
    constraint = metrics["reconstruction"] / (num_pixels * target) - 1.0
    return metrics["kl"] + jax.lax.stop_gradient(state.multiplier) * constraint, constraint


GECO_MULTIPLIER_RANGE = (1e-6, 1e9)


def geco_update(state: GecoState, constraint: jax.Array, *, rate: float, decay: float) -> GecoState:
    """λ ← λ·exp(rate·C̄) with C̄ the moving average (``decay``) of the constraint: λ grows
    while the reconstruction is worse than the target and shrinks once it is better (clipped
    to ``GECO_MULTIPLIER_RANGE``)."""
    average = decay * state.constraint_average + (1.0 - decay) * jax.lax.stop_gradient(constraint)
    multiplier = jnp.clip(state.multiplier * jnp.exp(rate * average), *GECO_MULTIPLIER_RANGE)
    return GecoState(multiplier, average)


LATENT_NETS = ("prior_net", "posterior_net")


def safe_norm(x: jax.Array) -> jax.Array:
    """‖x‖₂ of all entries, with the gradient 0 at x = 0 (as PyTorch's ``Tensor.norm``)."""
    squared = jnp.sum(jnp.square(x))
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def latent_nets_norm(params: dict) -> jax.Array:
    """Σ‖W‖₂ over every parameter tensor W of the prior and posterior nets: the L2 norms, not
    squared (the authors' code: ``l2_regularisation(prior) + l2_regularisation(posterior)``,
    kernels, biases and batch-norm scales and offsets alike)."""
    leaves = jax.tree.leaves([params[name] for name in LATENT_NETS])
    return sum(safe_norm(leaf) for leaf in leaves)
