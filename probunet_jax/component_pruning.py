"""A learned number of mixture components (issue #15): a sparse Dirichlet prior on the aggregate
mixture weights, and pruning of the components that stay unused.

A mixture latent starts with N components (the search space's maximum, 10, in the preset
``mixture_fc_auto``) and learns how many it needs:

**Sparsity** (``model.sparsity_weight`` = λ > 0). The loss gains

    λ · Σ_k log(π̄_k + ε),   π̄ = ½ (mean_b π_prior(x_b) + mean_b π_post(x_b, y_b)),

the sum over the components not yet pruned, π̄ the weights averaged over the batch (the share
of the data each component explains), ε = 1e-6. It is −log Dir(π̄; α) up to a constant, with
α = 1 − λ: a Dirichlet prior with α < 1, whose density grows without bound towards the corners
and edges of the simplex, so it favours few components. Figueiredo & Jain (2002, "Unsupervised
learning of finite mixture models", IEEE TPAMI 24(3)) derive the same term, λ = (parameters per
component) / 2, from the minimum message length of a mixture — a Dirichlet with negative α —
and prune ("annihilate") components whose weight reaches 0 during fitting, starting from more
components than needed; Corduneanu & Bishop (2001) reach pruning by optimizing the weights of a
variational Bayesian mixture. The gradient on the logit l_j of one image's weights π (with
π̄ = π) is λ(1 − N′π_j), N′ the components left: a component less used than average is pushed
further down, one used more pushed up (rich get richer), while the ELBO keeps the components it
needs. Only the aggregate is penalized, but in a batch its gradient on an image's weights,
(λ/2B)·π_bj·(1/π̄_j − Σ_k π_bk/π̄_k), moves the image's weight towards the components most used
overall, so each image's weights concentrate too (measured in the README, "Latent
diagnostics": per-image prior entropy 0.04 nats at λ = 1 against 0.73 for Mixture-FC). The term
enters the training loss (logged as ``sparsity``), not the validation loss.

**Pruning** (``model.prune_threshold`` > 0). The model keeps, in its ``batch_stats``
collection (it is a running statistic of the training batches, like batch norm's: checkpoints,
the best export, resumption, evaluation and sampling carry it unchanged), under
``component_usage``:

- ``usage`` `[N]`: an exponential moving average (decay ``model.prune_decay``) of π̄, updated by
  every training step (starting from 1/N);
- ``steps_below`` `[N]`: for how many consecutive steps each component's usage has been below
  ``model.prune_threshold``;
- ``active`` `[N]` bool: the components not pruned.

A component whose usage stays below the threshold for ``model.prune_patience`` steps is pruned:
its logit becomes ``MASKED_LOGIT`` (−1e9: exactly zero probability in float32, without the
NaNs of −∞ in 0·log 0 and in gradients) in the prior and the posterior, permanently, in
training and in sampling and evaluation. The most used component is never pruned.
``components_active`` is logged with the training metrics and stated at the end of training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from probunet_jax import distributions

# model.* fields and their defaults (off).
CONFIG_DEFAULTS = dict(
    sparsity_weight=0.0, prune_threshold=0.0, prune_patience=100, prune_decay=0.99
)
CONFIG_FIELDS = tuple(CONFIG_DEFAULTS)
MODULE_NAME = "component_usage"  # The model's submodule; its variables live in batch_stats.
MASKED_LOGIT = -1e9
EPSILON = 1e-6


class PruningSpec(NamedTuple):
    """When a component is pruned: its usage (moving average with ``decay``) stays below
    ``threshold`` for ``patience`` consecutive training steps."""

    threshold: float
    patience: int = 100
    decay: float = 0.99

    def validate(self) -> PruningSpec:
        """Returns self, or raises ValueError naming the bad field."""
        if not 0 < self.threshold < 1:
            raise ValueError(f"model.prune_threshold must be in (0, 1), got {self.threshold}.")
        if int(self.patience) < 1 or int(self.patience) != self.patience:
            raise ValueError(f"model.prune_patience must be an integer >= 1, got {self.patience}.")
        if not 0 <= self.decay < 1:
            raise ValueError(f"model.prune_decay must be in [0, 1), got {self.decay}.")
        return self


def check_config(model: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the model field that is out of range, or sparsity or pruning
    set for a latent that is no mixture."""
    if not model.sparsity_weight >= 0:  # Also rejects NaN.
        raise ValueError(
            f"model.sparsity_weight must be >= 0 (0: off), got {model.sparsity_weight}."
        )
    if not 0 <= model.prune_threshold < 1:
        raise ValueError(
            f"model.prune_threshold must be in [0, 1) (0: off), got {model.prune_threshold}."
        )
    PruningSpec(0.5, model.prune_patience, model.prune_decay).validate()
    if learns_components(model) and model.num_components < 2:
        raise ValueError(
            "model.sparsity_weight and model.prune_threshold need a mixture "
            f"(model.num_components >= 2), got model.num_components {model.num_components}."
        )


def learns_components(model: Mapping[str, Any]) -> bool:
    """Whether a model config (or a preset's fields) has sparsity or pruning on."""
    return model.get("sparsity_weight", 0) > 0 or model.get("prune_threshold", 0) > 0


def spec_from_config(model: ml_collections.ConfigDict) -> PruningSpec | None:
    """The pruning of a model config, None when ``model.prune_threshold`` is 0."""
    if not model.get("prune_threshold", 0.0):
        return None
    return PruningSpec(
        float(model.prune_threshold), int(model.prune_patience), float(model.prune_decay)
    ).validate()


# ----------------------------------------------------------------------------- weights


def active_components(dist: distrax.Distribution) -> jax.Array:
    """Which components of a mixture are not masked, bool `[..., N]`."""
    return dist.mixture_distribution.logits > MASKED_LOGIT / 2


def mask_mixture(dist: distrax.Distribution, active: jax.Array) -> distrax.Distribution:
    """``dist`` (a `GumbelSoftmaxMixture`) with the logits of the inactive components (``active``
    `[N]` false) set to ``MASKED_LOGIT``: probability 0 in ``sample``, ``log_prob`` and the
    mixture weights; no gradient reaches their logits."""
    logits = jnp.where(active, dist.mixture_distribution.logits, MASKED_LOGIT)
    return distributions.GumbelSoftmaxMixture(
        logits, dist.components_distribution, dist.temperature
    )


def aggregate_weights(prior: distrax.Distribution, posterior: distrax.Distribution) -> jax.Array:
    """π̄ `[N]`: the mixture weights of the prior and of the posterior averaged over the batch,
    and the two averaged."""
    return 0.5 * (
        jnp.mean(prior.mixture_distribution.probs, axis=0)
        + jnp.mean(posterior.mixture_distribution.probs, axis=0)
    )


def sparsity_penalty(
    prior: distrax.Distribution, posterior: distrax.Distribution, weight: float
) -> jax.Array:
    """λ · Σ_k log(π̄_k + ε) over the unmasked components (module docstring), a scalar."""
    if not distributions.is_mixture(prior) or not distributions.is_mixture(posterior):
        raise ValueError("The sparsity penalty needs mixture latents.")
    active = active_components(prior)[0]  # The mask is the same for every image.
    log_weights = jnp.log(aggregate_weights(prior, posterior) + EPSILON)
    return weight * jnp.sum(jnp.where(active, log_weights, 0.0))


# ----------------------------------------------------------------------------- the state


class ComponentUsage(nn.Module):
    """The pruning state (``usage``, ``steps_below``, ``active``; collection ``batch_stats``).

    ``__call__()`` returns ``active``; :meth:`update` advances the state by one training step.
    """

    num_components: int
    spec: PruningSpec

    def setup(self):
        if self.num_components < 2:
            raise ValueError(f"Pruning needs a mixture, got {self.num_components} components.")
        self.spec.validate()
        n = self.num_components
        self.usage = self.variable(
            "batch_stats", "usage", lambda: jnp.full((n,), 1.0 / n, jnp.float32)
        )
        self.steps_below = self.variable(
            "batch_stats", "steps_below", lambda: jnp.zeros((n,), jnp.int32)
        )
        self.active = self.variable("batch_stats", "active", lambda: jnp.ones((n,), bool))

    def __call__(self) -> jax.Array:
        return self.active.value

    def update(self, prior: distrax.Distribution, posterior: distrax.Distribution) -> None:
        """One training step: the moving average of π̄ (:func:`aggregate_weights`), the steps
        below the threshold, and the pruning of the components below it for ``patience``
        steps (never the most used one)."""
        batch = jax.lax.stop_gradient(aggregate_weights(prior, posterior))
        usage = self.spec.decay * self.usage.value + (1.0 - self.spec.decay) * batch
        active = self.active.value
        below = active & (usage < self.spec.threshold)
        steps = jnp.where(below, self.steps_below.value + 1, 0)
        most_used = jnp.argmax(jnp.where(active, usage, -jnp.inf))
        keep = jnp.arange(self.num_components) == most_used
        prune = (steps >= self.spec.patience) & ~keep
        self.usage.value = usage
        self.steps_below.value = steps
        self.active.value = active & ~prune


def pruning_state(batch_stats: Mapping) -> Mapping | None:
    """The ``component_usage`` variables of a model's ``batch_stats`` (None without pruning)."""
    return batch_stats.get(MODULE_NAME) if isinstance(batch_stats, Mapping) else None


def components_active(batch_stats: Mapping) -> jax.Array | None:
    """The number of components not pruned (int32 `[]`), None for a model without pruning."""
    state = pruning_state(batch_stats)
    return None if state is None else jnp.sum(state["active"].astype(jnp.int32))
