"""Latent-collapse diagnostics: how much of its latent space a model uses (issue #11).

Pure functions of the prior p(z|x) and posterior q(z|x,y) of a batch (Gaussians of
`distributions` — AA, FC, LR — and mixtures of them), and their validation-time aggregates,
logged by ``train`` with every validation under ``latent/``:

- **KL per latent dimension** (:func:`kl_per_dimension`, ``latent/kl_dim_<j>``): the KL between
  the one-dimensional marginals, KL(q_j ‖ p_j), of coordinate j of z. For two Gaussians it is
  the closed form of the 1-D normals N(μ_j, Σ_jj). For a mixture the marginal of z_j is the
  1-D mixture Σ_k π_k N(μ_kj, Σ_k,jj), whose KL has no closed form: it is the Monte Carlo
  mean of log q_j(z_j) − log p_j(z_j) over samples z_j ~ q_j, with both 1-D mixture densities
  exact. The marginal KLs add up to KL(q‖p) only when q and p both factorize over the
  dimensions (AA single Gaussians); with correlations or mixtures they measure what each
  coordinate carries on its own. A dimension with KL ≈ 0 on every image is collapsed: the
  posterior says nothing the prior does not.
- **Active units** (:func:`active_units`, ``latent/active_units``; Burda, Grosse & Salakhutdinov
  2016, "Importance Weighted Autoencoders", §5.2): the number of dimensions j whose posterior
  mean E_q[z_j] varies over the data, Var_(x,y)(E_q[z_j]) > 0.01 (the mean of a mixture is
  Σ_k π_k μ_k). Over the validation set every (image, valid annotation) pair is one data point.
- **Mixture-weight entropy** (mixtures only): the mean per-image entropy H(π(x)) of the prior's
  (and the posterior's) mixture weights (``latent/prior_weight_entropy``,
  ``latent/posterior_weight_entropy``; 0 = one component per image, log N = all N equally),
  and the entropy of the batch-averaged prior weights (:func:`usage`, ``latent/usage_entropy``;
  small = few components across the data set).
- **Components in use** (mixtures only): the number of components whose aggregate usage, the
  mean of the prior's weights over the images, exceeds ``USAGE_THRESHOLD``
  (``latent/components_in_use``; the posterior's: ``latent/posterior_components_in_use``), and
  the number of components that are the prior's most probable one for at least one image
  (``latent/components_argmax``).

In training (:func:`annotation_terms`, :func:`validation_sums`, :func:`finish_validation`) the
validation step adds sums over its batch to its other sums, and the validation loop turns their
means into the logged values. Latent distributions of other kinds (no Gaussian marginals) get
no diagnostics (:func:`is_supported`).
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import entr, logsumexp

from probunet_jax import distributions

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016: a unit is active if Var_x(E_q[z_j]) > 0.01.
USAGE_THRESHOLD = 0.01  # A component is in use if its aggregate weight exceeds 1 %.
KL_SAMPLES = 64  # Monte Carlo samples of the marginal KL per dimension when a mixture is involved.
PREFIX = "latent/"
_INTERNAL = PREFIX + "_"  # Sums that finish_validation turns into the logged values.


# ----------------------------------------------------------------------------- the batch


def is_supported(dist: distrax.Distribution) -> bool:
    """Whether ``dist`` (batch shape `[B]`) has Gaussian marginals: a Gaussian of
    `distributions`, or a mixture of them."""
    if distributions.is_mixture(dist):
        dist = dist.components_distribution
    return isinstance(dist, distrax.MultivariateNormalFromBijector)


def marginals(dist: distrax.Distribution) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(weights [B, K], means [B, K, d], variances [B, K, d])`` of the 1-D marginals of every
    coordinate: a mixture of K Gaussians per dimension (K = 1 for a Gaussian)."""
    if not is_supported(dist):
        raise ValueError(
            f"Latent diagnostics need a Gaussian or a mixture of Gaussians, got {type(dist)}."
        )
    if distributions.is_mixture(dist):
        components = dist.components_distribution
        return dist.mixture_distribution.probs, components.mean(), components.variance()
    mean, variance = dist.mean()[..., None, :], dist.variance()[..., None, :]
    return jnp.ones(mean.shape[:-1], mean.dtype), mean, variance


def mixture_weights(dist: distrax.Distribution) -> jax.Array:
    """The mixture weights `[B, N]` (`[B, 1]` of ones for a Gaussian)."""
    return marginals(dist)[0]


def latent_mean(dist: distrax.Distribution) -> jax.Array:
    """E[z] `[B, d]`: the mean, for a mixture Σ_k π_k μ_k."""
    weights, means, _ = marginals(dist)
    return jnp.sum(weights[..., None] * means, axis=-2)


def _gaussian_kl(mean_q, var_q, mean_p, var_p) -> jax.Array:
    return 0.5 * (jnp.log(var_p / var_q) + (var_q + jnp.square(mean_q - mean_p)) / var_p - 1.0)


def _log_marginal(z: jax.Array, weights, means, variances) -> jax.Array:
    """log of the 1-D mixture densities of every coordinate: z `[S, B, d]` -> `[S, B, d]`."""
    z = z[..., None, :]  # [S, B, 1, d] against [B, K, d].
    log_normal = -0.5 * (jnp.log(2 * jnp.pi * variances) + jnp.square(z - means) / variances)
    positive = (weights > 0)[..., None]  # [B, K, 1]: pruned components (weight 0) drop out.
    log_weights = jnp.log(jnp.where(positive, weights[..., None], 1.0))
    return logsumexp(jnp.where(positive, log_weights + log_normal, -jnp.inf), axis=-2)


def kl_per_dimension(
    q: distrax.Distribution,
    p: distrax.Distribution,
    *,
    key: jax.Array | None = None,
    num_samples: int = KL_SAMPLES,
) -> jax.Array:
    """KL(q_j ‖ p_j) of the 1-D marginals of every coordinate j, `[B, d]` (module docstring):
    closed form for two Gaussians, else a Monte Carlo estimate with ``num_samples`` samples of
    q_j (needs ``key``)."""
    if q.event_shape != p.event_shape or q.batch_shape != p.batch_shape:
        raise ValueError(
            f"q and p must have the same batch and event shapes, got q: "
            f"{q.batch_shape}+{q.event_shape}, p: {p.batch_shape}+{p.event_shape}."
        )
    (wq, mq, vq), (wp, mp, vp) = marginals(q), marginals(p)
    if wq.shape[-1] == 1 and wp.shape[-1] == 1:
        return _gaussian_kl(mq[..., 0, :], vq[..., 0, :], mp[..., 0, :], vp[..., 0, :])
    if key is None:
        raise ValueError("kl_per_dimension needs a PRNG `key` when q or p is a mixture.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    component_key, noise_key = jax.random.split(key)
    # z_j ~ q_j: a component k ~ π_q, then N(μ_kj, Σ_k,jj) (the other coordinates do not matter).
    logits = jnp.where(wq > 0, jnp.log(jnp.where(wq > 0, wq, 1.0)), -jnp.inf)
    k = jax.random.categorical(component_key, logits, shape=(num_samples, *wq.shape[:-1]))
    one_hot = jax.nn.one_hot(k, wq.shape[-1], dtype=mq.dtype)  # [S, B, K]
    mean = jnp.einsum("sbk,bkd->sbd", one_hot, mq)
    std = jnp.sqrt(jnp.einsum("sbk,bkd->sbd", one_hot, vq))
    z = mean + std * jax.random.normal(noise_key, mean.shape, mean.dtype)  # [S, B, d]
    log_ratio = _log_marginal(z, wq, mq, vq) - _log_marginal(z, wp, mp, vp)
    return jnp.mean(log_ratio, axis=0)


def active_units(means: jax.Array, threshold: float = ACTIVE_THRESHOLD) -> jax.Array:
    """The number of dimensions whose posterior mean varies over the data, int `[]`.

    Args:
      means: E_q[z] `[M, d]` of M data points (:func:`latent_mean` of the posteriors).
      threshold: a unit is active if the variance of its mean over the M points exceeds it.
    """
    if means.ndim != 2:
        raise ValueError(f"means must be [M, d], got shape {means.shape}.")
    return jnp.sum(jnp.var(means, axis=0) > threshold)


def weight_entropy(weights: jax.Array) -> jax.Array:
    """Entropy −Σ_k π_k log π_k (nats, 0·log 0 = 0) of each row of ``weights`` `[..., N]`."""
    return jnp.sum(entr(weights), axis=-1)


def usage(weights: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """The aggregate usage of the components `[N]`: the mean of ``weights`` `[B, N]` over the
    batch (over the rows where ``valid`` `[B]` is true, if given)."""
    if valid is None:
        return jnp.mean(weights, axis=0)
    valid = valid.astype(weights.dtype)[:, None]
    return jnp.sum(weights * valid, axis=0) / jnp.maximum(jnp.sum(valid), 1.0)


def components_in_use(aggregate: jax.Array, threshold: float = USAGE_THRESHOLD) -> jax.Array:
    """The number of components whose aggregate usage `[N]` (:func:`usage`) exceeds
    ``threshold``."""
    return jnp.sum(aggregate > threshold)


def argmax_counts(weights: jax.Array) -> jax.Array:
    """How many rows of ``weights`` `[B, N]` have each component as their most probable, `[N]`."""
    winners = jnp.argmax(weights, axis=-1)
    return jnp.sum(jax.nn.one_hot(winners, weights.shape[-1], dtype=jnp.int32), axis=0)


def batch_diagnostics(
    prior: distrax.Distribution,
    posterior: distrax.Distribution,
    *,
    key: jax.Array | None = None,
    num_samples: int = KL_SAMPLES,
) -> dict[str, jax.Array]:
    """Every diagnostic of one batch (one posterior per image): ``kl_dim`` `[d]` (batch mean of
    :func:`kl_per_dimension`), ``active_units``; for mixtures also ``prior_weight_entropy`` and
    ``posterior_weight_entropy`` (batch means), ``usage_entropy`` (of the prior's aggregate
    usage), ``components_in_use``, ``posterior_components_in_use`` and ``components_argmax``."""
    values = {
        "kl_dim": jnp.mean(kl_per_dimension(posterior, prior, key=key, num_samples=num_samples), 0),
        "active_units": active_units(latent_mean(posterior)),
    }
    if distributions.is_mixture(prior):
        prior_w, posterior_w = mixture_weights(prior), mixture_weights(posterior)
        values.update(
            prior_weight_entropy=jnp.mean(weight_entropy(prior_w)),
            posterior_weight_entropy=jnp.mean(weight_entropy(posterior_w)),
            usage_entropy=weight_entropy(usage(prior_w)),
            components_in_use=components_in_use(usage(prior_w)),
            posterior_components_in_use=components_in_use(usage(posterior_w)),
            components_argmax=jnp.sum(argmax_counts(prior_w) > 0),
        )
    return values


# ----------------------------------------------------------------------------- validation


def annotation_terms(
    posterior: distrax.Distribution, prior: distrax.Distribution, *, key: jax.Array
) -> dict[str, jax.Array]:
    """Per-image terms of one annotation's posterior (the validation step maps this over the
    annotations): ``kl_dim`` `[B, d]`, ``mean`` `[B, d]` (E_q[z]) and, for mixtures, the
    posterior's and the prior's ``weights`` and ``prior_weights`` `[B, N]`; ``{}`` for latents
    without Gaussian marginals."""
    if not (is_supported(posterior) and is_supported(prior)):
        return {}
    terms = {
        "kl_dim": kl_per_dimension(posterior, prior, key=key),
        "mean": latent_mean(posterior),
    }
    if distributions.is_mixture(posterior) and distributions.is_mixture(prior):
        terms.update(weights=mixture_weights(posterior), prior_weights=mixture_weights(prior))
    return terms


def validation_sums(
    terms: dict[str, jax.Array],
    rater_valid: jax.Array,
    valid: jax.Array,
) -> dict[str, jax.Array]:
    """Sums over the valid images of a validation batch, to be added up over batches, divided by
    the number of images and passed to :func:`finish_validation`.

    Args:
      terms: :func:`annotation_terms` of every annotation, stacked: `[A, B, ...]`.
      rater_valid: `[B, A]`, which annotations are real (padded raters count for nothing).
      valid: `[B]`, which images are real.
    """
    if not terms:
        return {}
    image = valid.astype(jnp.float32)  # [B]
    pairs = rater_valid.T.astype(jnp.float32) * image  # [A, B]
    per_image = pairs / jnp.maximum(jnp.sum(pairs, axis=0), 1.0)  # Each image's raters sum to 1.

    def over_images(value):  # [A, B, ...] -> the sum over images of each image's rater mean.
        return jnp.einsum("ab,ab...->...", per_image, value)

    def over_pairs(value):  # [A, B, ...] -> the sum over valid (image, annotation) pairs.
        return jnp.einsum("ab,ab...->...", pairs, value)

    sums = {
        PREFIX + "kl_dim": over_images(terms["kl_dim"]),
        _INTERNAL + "pairs": jnp.sum(pairs),
        _INTERNAL + "mean": over_pairs(terms["mean"]),
        _INTERNAL + "mean_squared": over_pairs(jnp.square(terms["mean"])),
    }
    if "prior_weights" in terms:
        prior_w = terms["prior_weights"][0]  # [B, N]: the same prior for every annotation.
        wins = jax.nn.one_hot(jnp.argmax(prior_w, -1), prior_w.shape[-1]) * image[:, None]
        sums.update(
            {
                PREFIX + "prior_weight_entropy": jnp.sum(weight_entropy(prior_w) * image),
                PREFIX + "posterior_weight_entropy": over_images(weight_entropy(terms["weights"])),
                _INTERNAL + "prior_usage": jnp.sum(prior_w * image[:, None], axis=0),
                _INTERNAL + "posterior_usage": over_images(terms["weights"]),
                _INTERNAL + "argmax": jnp.sum(wins, axis=0),
            }
        )
    return sums


def finish_validation(
    means: dict[str, np.ndarray],
    *,
    active_threshold: float = ACTIVE_THRESHOLD,
    usage_threshold: float = USAGE_THRESHOLD,
) -> dict[str, float]:
    """The logged values from the means over the validation images of the eval step's sums
    (those of :func:`validation_sums` among them): every value a float, ``latent/kl_dim`` split
    into ``latent/kl_dim_<j>``, the internal sums turned into ``latent/active_units``,
    ``latent/usage_entropy``, ``latent/components_in_use``,
    ``latent/posterior_components_in_use`` and ``latent/components_argmax``."""
    values = {k: np.asarray(v, np.float64) for k, v in means.items()}
    out = {k: float(v) for k, v in values.items() if v.ndim == 0 and not k.startswith(_INTERNAL)}
    if PREFIX + "kl_dim" not in values:
        return out
    for j, value in enumerate(values[PREFIX + "kl_dim"]):
        out[f"{PREFIX}kl_dim_{j}"] = float(value)
    pairs = values[_INTERNAL + "pairs"]
    mean = values[_INTERNAL + "mean"] / pairs
    variance = values[_INTERNAL + "mean_squared"] / pairs - np.square(mean)
    out[PREFIX + "active_units"] = float(np.sum(variance > active_threshold))
    if _INTERNAL + "prior_usage" in values:
        prior_usage = values[_INTERNAL + "prior_usage"]  # Means over the images already.
        posterior_usage = values[_INTERNAL + "posterior_usage"]
        out[PREFIX + "usage_entropy"] = float(weight_entropy(prior_usage))
        out[PREFIX + "components_in_use"] = float(components_in_use(prior_usage, usage_threshold))
        out[PREFIX + "posterior_components_in_use"] = float(
            components_in_use(posterior_usage, usage_threshold)
        )
        out[PREFIX + "components_argmax"] = float(np.sum(values[_INTERNAL + "argmax"] > 0))
    return out
