"""Latent distributions of the Generalized Probabilistic U-Net (Bhat et al. 2022, §3).

Every latent distribution is a Distrax distribution with batch shape `[B]` and event shape
`[d]`, built from the raw output of a prior or posterior net by `make_latent_distribution`:

- ``aa``: axis-aligned Gaussian, `distrax.MultivariateNormalDiag` (the Probabilistic U-Net).
- ``fc``: full-covariance Gaussian through its Cholesky factor,
  `distrax.MultivariateNormalTri`; L = strictly lower triangle of a raw d×d matrix plus a
  positive diagonal exp(log_scale) + floor, so Σ = L Lᵀ is positive definite.
- ``lr``: low rank plus diagonal, `distrax.MultivariateNormalDiagPlusLowRank`: the scale is
  S = diag(s) + U Uᵀ with U of shape `[d, rank]` and Σ = S Sᵀ (the "FC-LR" variant of the
  paper's code, which uses PyTorch's Σ = diag(s) + U Uᵀ instead; both have d·(rank + 2)
  parameters and are positive definite).
- a mixture of N components of any of the three, `GumbelSoftmaxMixture`: its samples pick a
  component with a straight-through Gumbel-Softmax so that gradients reach the mixture logits.

`kl_divergence(q, p)` is KL(q‖p) per batch element: closed form for two single Gaussians,
a Monte Carlo estimate with reparameterized samples of q when either is a mixture.
"""

from __future__ import annotations

from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp

LATENT_KINDS = ("aa", "fc", "lr")

# Floor added to every positive scale so that covariances stay well conditioned.
SCALE_FLOOR = 1e-4

# Default number of q-samples of the Monte Carlo KL for mixtures, chosen by measurement
# (`python -m experiments.kl_samples`, README "Monte Carlo KL": 400 repeats against a 100k-sample
# reference, batch of 32 random q/p pairs of the paper's mixture presets): the estimate is
# unbiased at every K, and the standard deviation of the batch-mean KL (what enters the loss)
# relative to the KL is 17 % / 9 % / 10 % at K = 16 and 8 % / 5 % / 5 % at K = 64 for
# Mixture-FC / -AA / -LR. 64 samples cost about 7 ms per training step at batch 32 on a CPU,
# nothing next to the U-Net.
DEFAULT_KL_SAMPLES = 64
KL_CHUNK = 8  # Monte Carlo KL samples whose log-densities are evaluated in one call.


class LatentSpec(NamedTuple):
    """What a prior or posterior net outputs: the family of its latent distribution.

    Attributes:
      kind: "aa", "fc" or "lr".
      latent_dim: d, the dimension of z.
      num_components: N mixture components; 1 means a single Gaussian.
      rank: rank of the low-rank factor (kind "lr" only), 1 <= rank < d.
      temperature: Gumbel-Softmax temperature τ > 0 (mixtures only).
    """

    kind: str = "aa"
    latent_dim: int = 6
    num_components: int = 1
    rank: int = 1
    temperature: float = 0.5

    def validate(self) -> LatentSpec:
        """Returns self, or raises ValueError naming the bad field."""
        if self.kind not in LATENT_KINDS:
            raise ValueError(f"Unknown latent kind {self.kind!r}; expected one of {LATENT_KINDS}.")
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}.")
        if self.num_components < 1:
            raise ValueError(f"num_components (N) must be >= 1, got {self.num_components}.")
        if self.kind == "lr" and not 1 <= self.rank < self.latent_dim:
            raise ValueError(
                f"rank must satisfy 1 <= rank < latent_dim, got rank={self.rank} with "
                f"latent_dim={self.latent_dim}."
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature (tau) must be > 0, got {self.temperature}.")
        return self

    @property
    def params_per_component(self) -> int:
        """Number of raw outputs that parameterize one Gaussian component."""
        d = self.latent_dim
        if self.kind == "aa":
            return 2 * d  # mean, log-scale
        if self.kind == "fc":
            return d + d * d  # mean, raw d×d matrix (strict lower part + log-diagonal)
        return 2 * d + d * self.rank  # mean, log-diagonal, low-rank factor

    @property
    def num_params(self) -> int:
        """Number of raw outputs of the net: components' parameters plus mixture logits."""
        mixture_logits = self.num_components if self.num_components > 1 else 0
        return self.num_components * self.params_per_component + mixture_logits


def _positive(log_scale: jax.Array) -> jax.Array:
    return jnp.exp(log_scale) + SCALE_FLOOR


def _gaussian(raw: jax.Array, spec: LatentSpec) -> distrax.Distribution:
    """A Gaussian with batch shape `raw.shape[:-1]` from raw parameters `[..., P]`."""
    d = spec.latent_dim
    loc, rest = raw[..., :d], raw[..., d:]
    if spec.kind == "aa":
        return distrax.MultivariateNormalDiag(loc, _positive(rest))
    if spec.kind == "fc":
        matrix = rest.reshape(*rest.shape[:-1], d, d)
        diagonal = _positive(jnp.diagonal(matrix, axis1=-2, axis2=-1))
        scale_tril = jnp.tril(matrix, k=-1) + diagonal[..., None] * jnp.eye(d, dtype=raw.dtype)
        return distrax.MultivariateNormalTri(loc, scale_tril)
    diag, factor = rest[..., :d], rest[..., d:]
    factor = factor.reshape(*factor.shape[:-1], d, spec.rank)
    return distrax.MultivariateNormalDiagPlusLowRank(loc, _positive(diag), factor)


def make_latent_distribution(raw: jax.Array, spec: LatentSpec) -> distrax.Distribution:
    """Builds the latent distribution of `spec` from a net's raw output.

    Args:
      raw: `[B, spec.num_params]`: for a mixture, N blocks of component parameters followed
        by N mixture logits.
      spec: the distribution family.

    Returns:
      A distribution with batch shape `[B]` and event shape `[d]`.
    """
    spec.validate()
    if raw.ndim != 2 or raw.shape[-1] != spec.num_params:
        raise ValueError(
            f"Raw latent parameters must have shape [B, {spec.num_params}] for {spec}, "
            f"got {raw.shape}."
        )
    n = spec.num_components
    if n == 1:
        return _gaussian(raw, spec)
    component_params = raw[:, : n * spec.params_per_component].reshape(raw.shape[0], n, -1)
    logits = raw[:, n * spec.params_per_component :]
    return GumbelSoftmaxMixture(logits, _gaussian(component_params, spec), spec.temperature)


class GumbelSoftmaxMixture(distrax.MixtureSameFamily):
    """A mixture whose samples choose a component by straight-through Gumbel-Softmax.

    The forward value of a sample is exactly one component's reparameterized sample (the
    component of the hard, one-hot Gumbel-max choice); in the backward pass the one-hot
    weights are replaced by the relaxed weights softmax((logits + g) / τ), so gradients reach
    the mixture logits as well as the components' parameters. `log_prob` is the exact
    mixture density (inherited from `distrax.MixtureSameFamily`).
    """

    def __init__(self, logits: jax.Array, components: distrax.Distribution, temperature: float):
        """Initializes the mixture.

        Args:
          logits: mixture logits `[..., N]`.
          components: a distribution with batch shape `[..., N]` and event shape `[d]`.
          temperature: the Gumbel-Softmax temperature τ > 0.
        """
        # Under jit, distrax re-creates the object from traced leaves: check concrete values.
        if isinstance(temperature, int | float) and not temperature > 0:
            raise ValueError(f"temperature (tau) must be > 0, got {temperature}.")
        if components.batch_shape != logits.shape:
            raise ValueError(
                f"components must have batch shape {logits.shape} (the logits' shape), "
                f"got {components.batch_shape}."
            )
        super().__init__(distrax.Categorical(logits=logits), components)
        self._temperature = temperature

    @property
    def temperature(self) -> float:
        return self._temperature

    def _sample_n(self, key: jax.Array, n: int) -> jax.Array:
        """Returns `[n, ..., d]` straight-through samples."""
        component_key, gumbel_key = jax.random.split(key)
        logits = self.mixture_distribution.logits
        # [n, ..., N, d]: a reparameterized sample of every component.
        candidates = self.components_distribution.sample(seed=component_key, sample_shape=n)
        gumbel = jax.random.gumbel(gumbel_key, (n, *logits.shape), dtype=logits.dtype)
        soft = jax.nn.softmax((logits + gumbel) / self._temperature, axis=-1)
        hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), logits.shape[-1], dtype=soft.dtype)
        # Forward: exactly `hard` (soft - soft is 0), so the sum below is one candidate
        # exactly; backward: the gradient of the relaxed weights `soft`.
        weights = hard + (soft - jax.lax.stop_gradient(soft))
        return jnp.sum(weights[..., None] * candidates, axis=-2)


def is_mixture(dist: distrax.Distribution) -> bool:
    return isinstance(dist, distrax.MixtureSameFamily)


def kl_divergence(
    q: distrax.Distribution,
    p: distrax.Distribution,
    *,
    key: jax.Array | None = None,
    num_samples: int = DEFAULT_KL_SAMPLES,
) -> jax.Array:
    """KL(q‖p) per batch element, `[B]`.

    Closed form when q and p are both single Gaussians; otherwise the Monte Carlo estimate
    mean_k [log q(z_k) − log p(z_k)] with z_k ~ q reparameterized (straight-through for a
    `GumbelSoftmaxMixture`), which needs `key`.
    """
    if q.event_shape != p.event_shape or q.batch_shape != p.batch_shape:
        raise ValueError(
            f"q and p must have the same batch and event shapes, got q: "
            f"{q.batch_shape}+{q.event_shape}, p: {p.batch_shape}+{p.event_shape}."
        )
    if not (is_mixture(q) or is_mixture(p)):
        return q.kl_divergence(p)
    if key is None:
        raise ValueError("kl_divergence needs a PRNG `key` when q or p is a mixture.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    z = q.sample(seed=key, sample_shape=num_samples)  # [K, B, d]
    # Log-densities of KL_CHUNK samples at a time: FC and LR log-densities are batched LAPACK
    # solves on CPU, and jaxlib 0.10's kernels can deadlock on a 2-core machine when large
    # batched solves run concurrently; chunks keep every call small (it costs nothing
    # measurable: the loop runs num_samples / KL_CHUNK times over tiny arrays).
    log_ratio = jax.lax.map(lambda z_k: q.log_prob(z_k) - p.log_prob(z_k), z, batch_size=KL_CHUNK)
    return jnp.mean(log_ratio, axis=0)
