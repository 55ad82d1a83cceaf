"""Latent distributions of the Generalized Probabilistic U-Net (Bhat et al. 2022, §3).

Every latent distribution is a Distrax distribution with batch shape `[B]` and event shape
`[d]`, built from the raw output of a prior or posterior net by `make_latent_distribution`:

- ``aa``: axis-aligned Gaussian, `distrax.MultivariateNormalDiag` (the Probabilistic U-Net).
- ``fc``: full-covariance Gaussian through its Cholesky factor,
  `distrax.MultivariateNormalTri`; L = strictly lower triangle of a raw d×d matrix plus a
  positive diagonal exp(log_scale) + floor, so Σ = L Lᵀ is positive definite.
- ``lr``: low rank plus diagonal, with U of shape `[d, rank]` (the "FC-LR" variant of the
  paper's code), parameterized by ``lr_parameterization``: 'scale' (default),
  `distrax.MultivariateNormalDiagPlusLowRank` with scale S = diag(s) + U Uᵀ and Σ = S Sᵀ;
  or 'covariance', the paper code's (PyTorch's ``LowRankMultivariateNormal``)
  Σ = U Uᵀ + diag(s), a `distrax.MultivariateNormalTri` on the Cholesky factor of Σ. Both
  have d·(rank + 2) parameters and are positive definite.
- a mixture of N components of any of the three, `GumbelSoftmaxMixture`: its samples pick a
  component with a straight-through Gumbel-Softmax so that gradients reach the mixture logits.

``layout`` orders the raw outputs: 'compact' (default), one layer, component after component,
then the mixture logits; 'authors', the output layers of the paper's code (`output_layers`):
means and log-scales of all components, then their covariance parameters (FC: a d×d matrix of
which only the strict lower triangle is used, the diagonal being exp(log-scale) + floor, so d
more outputs per component than 'compact'; LR: U), then the mixture logits.

- a normalizing flow on top of any of these (``flow``: 'planar', 'radial' or 'coupling',
  `probunet_jax.flows`): a `distrax.Transformed` whose parameters the net outputs after the
  base's (amortized, per image). The posterior is the flow; the prior is its base family
  unless ``prior_flow`` (a coupling flow only: the KL needs log p at the posterior's samples,
  and planar and radial flows have no analytic inverse).

`kl_divergence(q, p)` is KL(q‖p) per batch element: closed form for two single Gaussians,
a Monte Carlo estimate with reparameterized samples of q when either is a mixture or a flow
(a flow's log q(z) on the forward path, log q₀(z₀) − Σ log|det J|).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp

from probunet_jax import flows

LATENT_KINDS = ("aa", "fc", "lr")
LAYOUTS = ("compact", "authors")
LR_PARAMETERIZATIONS = ("scale", "covariance")

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
      layout: "compact" or "authors", the order of the raw outputs (module docstring).
      lr_parameterization: "scale" (S = diag(s) + U Uᵀ) or "covariance" (Σ = U Uᵀ + diag(s)).
      flow: "none", or a normalizing flow on the base family: "planar", "radial", "coupling".
      flow_layers: the flow's number of layers (>= 1 for a flow).
      prior_flow: whether the prior is the same kind of flow too (coupling only); else the
        prior is the base family (`prior_spec`).
    """

    kind: str = "aa"
    latent_dim: int = 6
    num_components: int = 1
    rank: int = 1
    temperature: float = 0.5
    layout: str = "compact"
    lr_parameterization: str = "scale"
    flow: str = "none"
    flow_layers: int = 0
    prior_flow: bool = False

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
        if self.layout not in LAYOUTS:
            raise ValueError(f"Unknown latent layout {self.layout!r}; expected one of {LAYOUTS}.")
        if self.lr_parameterization not in LR_PARAMETERIZATIONS:
            raise ValueError(
                f"Unknown lr_parameterization {self.lr_parameterization!r}; expected one of "
                f"{LR_PARAMETERIZATIONS}."
            )
        flows.check_flow(self.flow, self.flow_layers, self.latent_dim)
        if self.prior_flow and self.flow not in flows.INVERTIBLE_FLOWS:
            raise ValueError(
                f"prior_flow needs an invertible flow {flows.INVERTIBLE_FLOWS}, got flow "
                f"{self.flow!r}: KL(q‖p) evaluates log p(z) at the posterior's samples, and "
                "planar and radial flows have no analytic inverse (their density is known only "
                "on their own samples)."
            )
        return self

    @property
    def prior_spec(self) -> LatentSpec:
        """The prior's family: this one if ``prior_flow``, else its base family (no flow)."""
        return self if self.prior_flow else self._replace(flow="none", flow_layers=0)

    @property
    def flow_params(self) -> int:
        """Raw outputs of the flow (0 without one)."""
        return flows.num_params(self.flow, self.latent_dim, self.flow_layers)

    @property
    def base_params(self) -> int:
        """Raw outputs of the base family: components' parameters plus mixture logits."""
        mixture_logits = self.num_components if self.num_components > 1 else 0
        return self.num_components * self.params_per_component + mixture_logits

    @property
    def params_per_component(self) -> int:
        """Number of raw outputs that parameterize one Gaussian component."""
        d = self.latent_dim
        if self.kind == "aa":
            return 2 * d  # mean, log-scale
        return 2 * d + self.covariance_params if self.has_log_scale else d + d * d

    @property
    def has_log_scale(self) -> bool:
        """Whether a component's outputs hold d log-scales (all but the compact FC, whose
        log-diagonal is the diagonal of its d×d matrix)."""
        return self.kind != "fc" or self.layout == "authors"

    @property
    def covariance_params(self) -> int:
        """Outputs per component beyond the mean and log-scales: FC d×d, LR d×rank, AA 0."""
        return {"aa": 0, "fc": self.latent_dim**2, "lr": self.latent_dim * self.rank}[self.kind]

    @property
    def output_layers(self) -> tuple[tuple[str, int], ...]:
        """`(name, width)` of the net's output layers, in the order of the raw outputs: one
        layer ('compact'), or the paper code's layers ('authors')."""
        if self.layout == "compact":
            return (("latent_params", self.num_params),)
        n, d = self.num_components, self.latent_dim
        layers = [("mean_log_scale", n * 2 * d)]
        if self.covariance_params:
            layers.append(("covariance", n * self.covariance_params))
        if n > 1:
            layers.append(("mixture_logits", n))
        if self.flow_params:
            layers.append(("flow", self.flow_params))
        return tuple(layers)

    @property
    def num_params(self) -> int:
        """Number of raw outputs of the net: the base's (`base_params`), then the flow's."""
        return self.base_params + self.flow_params


def _positive(log_scale: jax.Array) -> jax.Array:
    return jnp.exp(log_scale) + SCALE_FLOOR


def _gaussian(raw: jax.Array, spec: LatentSpec) -> distrax.Distribution:
    """A Gaussian with batch shape `raw.shape[:-1]` from one component's raw parameters
    `[..., P]`: the mean, (the log-scales), the covariance parameters."""
    d = spec.latent_dim
    loc, rest = raw[..., :d], raw[..., d:]
    if spec.kind == "aa":
        return distrax.MultivariateNormalDiag(loc, _positive(rest))
    log_scale, rest = (rest[..., :d], rest[..., d:]) if spec.has_log_scale else (None, rest)
    eye = jnp.eye(d, dtype=raw.dtype)
    if spec.kind == "fc":
        matrix = rest.reshape(*rest.shape[:-1], d, d)
        if log_scale is None:
            log_scale = jnp.diagonal(matrix, axis1=-2, axis2=-1)
        scale_tril = jnp.tril(matrix, k=-1) + _positive(log_scale)[..., None] * eye
        return distrax.MultivariateNormalTri(loc, scale_tril)
    factor = rest.reshape(*rest.shape[:-1], d, spec.rank)
    if spec.lr_parameterization == "scale":
        return distrax.MultivariateNormalDiagPlusLowRank(loc, _positive(log_scale), factor)
    covariance = factor @ jnp.swapaxes(factor, -1, -2) + _positive(log_scale)[..., None] * eye
    return distrax.MultivariateNormalTri(loc, jnp.linalg.cholesky(covariance))


def _components(raw: jax.Array, spec: LatentSpec) -> tuple[jax.Array, jax.Array]:
    """Raw outputs `[B, num_params]` → component parameters `[B, N, P]`, mixture logits
    `[B, N]` (empty for one component)."""
    n, rows = spec.num_components, raw.shape[0]
    n_params = n * spec.params_per_component
    if spec.layout == "compact":
        params = raw[:, :n_params].reshape(rows, n, -1)
    else:
        split = n * 2 * spec.latent_dim
        params = jnp.concatenate(
            [raw[:, :split].reshape(rows, n, -1), raw[:, split:n_params].reshape(rows, n, -1)],
            axis=-1,
        )
    return params, raw[:, n_params:]


def make_latent_distribution(raw: jax.Array, spec: LatentSpec) -> distrax.Distribution:
    """Builds the latent distribution of `spec` from a net's raw output.

    Args:
      raw: `[B, spec.num_params]` in the order of ``spec.layout``: 'compact', N blocks of
        component parameters followed by N mixture logits (for a mixture); 'authors', the
        outputs of ``spec.output_layers`` one after the other. A flow's parameters come last.
      spec: the distribution family.

    Returns:
      A distribution with batch shape `[B]` and event shape `[d]`: the base family, or a
      `distrax.Transformed` of it for a flow.
    """
    spec.validate()
    if raw.ndim != 2 or raw.shape[-1] != spec.num_params:
        raise ValueError(
            f"Raw latent parameters must have shape [B, {spec.num_params}] for {spec}, "
            f"got {raw.shape}."
        )
    params, logits = _components(raw[:, : spec.base_params], spec)
    if spec.num_components == 1:
        base = _gaussian(params[:, 0], spec)
    else:
        base = GumbelSoftmaxMixture(logits, _gaussian(params, spec), spec.temperature)
    if spec.flow == "none":
        return base
    return flows.transformed(base, raw[:, spec.base_params :], spec.flow, spec.flow_layers)


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
    `GumbelSoftmaxMixture`), which needs `key`. For a flow q, z_k = f(z₀ₖ) with z₀ₖ from its
    base and log q(z_k) = log q₀(z₀ₖ) − log|det J_f(z₀ₖ)| (`sample_and_log_prob`'s forward
    path: planar and radial flows have no inverse); a flow p must be invertible (coupling).
    """
    if q.event_shape != p.event_shape or q.batch_shape != p.batch_shape:
        raise ValueError(
            f"q and p must have the same batch and event shapes, got q: "
            f"{q.batch_shape}+{q.event_shape}, p: {p.batch_shape}+{p.event_shape}."
        )
    if not (is_mixture(q) or is_mixture(p) or flows.is_flow(q) or flows.is_flow(p)):
        return q.kl_divergence(p)
    if flows.is_flow(p) and not flows.has_inverse(p.bijector):
        raise ValueError(
            "KL(q‖p) needs log p(z) at q's samples, but p is a planar or radial flow, which has "
            "no analytic inverse: make the prior its base family or a coupling flow."
        )
    if key is None:
        raise ValueError("kl_divergence needs a PRNG `key` when q or p is a mixture or a flow.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    if flows.is_flow(q):  # Base samples; z and log q(z) on the forward path, per chunk.
        draws = q.distribution.sample(seed=key, sample_shape=num_samples)  # [K, B, d]
        sample_and_log_prob = functools.partial(flows.forward_and_log_prob, q)
    else:
        draws = q.sample(seed=key, sample_shape=num_samples)  # [K, B, d]

        def sample_and_log_prob(z):
            return z, q.log_prob(z)

    def log_ratio(draw):
        z, log_q = sample_and_log_prob(draw)
        return log_q - p.log_prob(z)

    # Log-densities of KL_CHUNK samples at a time: FC and LR log-densities are batched LAPACK
    # solves on CPU, and jaxlib 0.10's kernels can deadlock on a 2-core machine when large
    # batched solves run concurrently; chunks keep every call small (it costs nothing
    # measurable: the loop runs num_samples / KL_CHUNK times over tiny arrays).
    return jnp.mean(jax.lax.map(log_ratio, draws, batch_size=KL_CHUNK), axis=0)
