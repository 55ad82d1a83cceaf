"""Normalizing-flow latents: Distrax bijectors on top of any latent family of `distributions`.

A flow latent is a `distrax.Transformed` distribution (`FlowDistribution`): z = f_K ∘ … ∘ f_1(z₀)
with z₀ from a base distribution (AA, FC, LR or a mixture of them) and
log q(z) = log q₀(z₀) − Σ_k log|det J_k|.
Its parameters are *amortized*: the prior or posterior net outputs them for each image next to
the base's parameters (as the posterior of cFlow Net, Selvan et al. 2020), so every bijector
here holds parameters with a batch shape `[B]` and maps z `[..., B, d]`.

Layers (``flow``), each from raw, unconstrained outputs of the net:

- ``planar`` (Rezende & Mohamed 2015, §4.1 and Appendix A): f(z) = z + û·tanh(wᵀz + b), with
  û = u + (m(wᵀu) − wᵀu)·w/‖w‖², m(x) = −1 + softplus(x), so that wᵀû = m(wᵀu) > −1 and f is
  invertible (strictly increasing along w; in floating point up to the rounding of û, relative
  ε·|wᵀu|, once softplus(wᵀu) falls below it). 2d + 1 raw outputs (u, w, b). No analytic
  inverse.
- ``radial`` (same paper): f(z) = z + β·(z − z₀)/(α + r), r = ‖z − z₀‖, with α = softplus(raw)
  > 0 and β = −α + softplus(raw) > −α, the condition of invertibility. d + 2 raw outputs (z₀,
  α, β). No analytic inverse.
- ``coupling``: an affine coupling layer (Real NVP, Dinh et al. 2017) that keeps the
  coordinates A (even indices on even layers, odd on odd layers) and maps the others, B, to
  z_B·exp(s(z_A)) + t(z_A); s = tanh(·) and t come from a one-hidden-layer conditioner (width
  ``COUPLING_HIDDEN``, tanh) whose weights are the raw outputs. Exactly invertible, so a
  coupling flow's log-density is available at any z (a prior may be one). Needs d >= 2.

Zero raw parameters are the identity for every layer (u = 0; β = −log 2 + log 2 = 0; s = t = 0).

log|det J| of planar and radial layers is computed in a form that stays finite where the
invertibility constraint is tight: planar 1 + tanh'(a)·wᵀû as
tanh²(a) + (1 − tanh²(a))·softplus(wᵀu); radial from (r + softplus(β_raw))/(α + r) and
(r² + 2αr + α·softplus(β_raw))/(α + r)².
"""

from __future__ import annotations

import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np

FLOWS = ("none", "planar", "radial", "coupling")
INVERTIBLE_FLOWS = ("coupling",)  # Flows with an analytic inverse: their log_prob works at any z.
COUPLING_HIDDEN = 8  # Width of the coupling conditioner's hidden layer.


def check_flow(flow: str, layers: int, latent_dim: int) -> None:
    """Raises ValueError for an unknown flow, fewer than 1 layer of a flow, or a coupling flow
    on a 1-D latent."""
    if flow not in FLOWS:
        raise ValueError(f"Unknown flow {flow!r}; expected one of {FLOWS}.")
    if int(layers) < 0:
        raise ValueError(f"flow_layers must be >= 0, got {layers}.")
    if flow != "none" and int(layers) < 1:
        raise ValueError(f"A {flow!r} flow needs flow_layers >= 1, got {layers}.")
    if flow == "coupling" and latent_dim < 2:
        raise ValueError(f"An affine coupling flow needs latent_dim >= 2, got {latent_dim}.")


def coupling_split(latent_dim: int, layer: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The coordinates (A, B) of coupling layer ``layer``: A conditions, B is transformed."""
    parity = layer % 2
    a = tuple(i for i in range(latent_dim) if i % 2 == parity)
    b = tuple(i for i in range(latent_dim) if i % 2 != parity)
    return a, b


def layer_num_params(flow: str, latent_dim: int, layer: int = 0) -> int:
    """Raw outputs of layer ``layer`` of ``flow``: planar 2d + 1, radial d + 2, coupling
    |A|·H + H + 2·H·|B| + 2·|B| (H = ``COUPLING_HIDDEN``)."""
    d, h = latent_dim, COUPLING_HIDDEN
    if flow == "planar":
        return 2 * d + 1
    if flow == "radial":
        return d + 2
    if flow == "coupling":
        a, b = (len(s) for s in coupling_split(d, layer))
        return a * h + h + 2 * h * b + 2 * b
    return 0


def num_params(flow: str, latent_dim: int, layers: int) -> int:
    """Raw outputs of a flow of ``layers`` layers (0 for 'none')."""
    if flow == "none":
        return 0
    return sum(layer_num_params(flow, latent_dim, k) for k in range(int(layers)))


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.sum(x * y, axis=-1)


class Planar(distrax.Bijector):
    """f(z) = z + û·tanh(wᵀz + b) with wᵀû > −1 (Rezende & Mohamed 2015); batched parameters.

    Forward only: the planar map has no analytic inverse (`inverse_and_log_det` raises).
    """

    def __init__(self, u: jax.Array, w: jax.Array, b: jax.Array):
        """Initializes the layer from raw parameters: u, w `[..., d]`, b `[...]`."""
        super().__init__(event_ndims_in=1)
        wu = _dot(w, u)
        norm2 = _dot(w, w)
        positive = norm2 > 0
        # û = u + (m(wᵀu) − wᵀu)·w/‖w‖²; at w = 0, û = u (then f is a translation).
        coefficient = jnp.where(
            positive, (jax.nn.softplus(wu) - 1.0 - wu) / jnp.where(positive, norm2, 1.0), 0.0
        )
        self.u_hat = u + coefficient[..., None] * w
        self.w = w
        self.b = b
        # 1 + wᵀû = softplus(wᵀu) > 0 where w ≠ 0 (1 at w = 0, where tanh' does not matter).
        self.one_plus_wu_hat = jnp.where(positive, jax.nn.softplus(wu), 1.0)

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        activation = jnp.tanh(_dot(self.w, x) + self.b)  # [..., B]
        y = x + self.u_hat * activation[..., None]
        # det(I + û ψᵀ) = 1 + tanh'(a)·wᵀû = tanh²(a) + (1 − tanh²(a))·(1 + wᵀû) > 0.
        squared = jnp.square(activation)
        return y, jnp.log(squared + (1.0 - squared) * self.one_plus_wu_hat)

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError(
            "A planar flow has no analytic inverse: evaluate its density on the forward path "
            "(`sample_and_log_prob`), not `log_prob` at an arbitrary z."
        )


class Radial(distrax.Bijector):
    """f(z) = z + β·(z − z₀)/(α + ‖z − z₀‖) with α > 0, β > −α (Rezende & Mohamed 2015).

    Forward only: the radial map has no analytic inverse (`inverse_and_log_det` raises).
    """

    def __init__(self, z0: jax.Array, alpha: jax.Array, beta: jax.Array):
        """Initializes the layer from raw parameters: z₀ `[..., d]`, α and β `[...]`."""
        super().__init__(event_ndims_in=1)
        self.z0 = z0
        self.alpha = jax.nn.softplus(alpha)
        self.beta_excess = jax.nn.softplus(beta)  # β + α > 0
        self.beta = self.beta_excess - self.alpha

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        diff = x - self.z0
        squared = _dot(diff, diff)
        nonzero = squared > 0
        r = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squared, 1.0)), 0.0)
        alpha, excess = self.alpha, self.beta_excess
        y = x + (self.beta / (alpha + r))[..., None] * diff
        d = x.shape[-1]
        # 1 + βh = (r + α + β)/(α + r); 1 + βh + βh'r = (r² + 2αr + α(α + β))/(α + r)².
        log_det = (d - 1) * (jnp.log(r + excess) - jnp.log(alpha + r))
        log_det += jnp.log(squared + 2 * alpha * r + alpha * excess) - 2 * jnp.log(alpha + r)
        return y, log_det

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        raise NotImplementedError(
            "A radial flow has no analytic inverse: evaluate its density on the forward path "
            "(`sample_and_log_prob`), not `log_prob` at an arbitrary z."
        )


class AffineCoupling(distrax.Bijector):
    """z_A ↦ z_A, z_B ↦ z_B·exp(s(z_A)) + t(z_A); s = tanh(h Wₛ + bₛ), t = h Wₜ + bₜ with the
    hidden layer h = tanh(z_A W₁ + b₁). Weights `[..., in, out]` and biases `[..., out]`
    carry the batch shape `[...]`."""

    def __init__(self, params: dict[str, jax.Array], a: tuple[int, ...], b: tuple[int, ...]):
        super().__init__(event_ndims_in=1)
        self.params = params
        self.a = a
        self.b = b

    @staticmethod
    def _affine(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
        return (x[..., None, :] @ kernel)[..., 0, :] + bias

    def _shift_and_log_scale(self, x_a: jax.Array) -> tuple[jax.Array, jax.Array]:
        p = self.params
        hidden = jnp.tanh(self._affine(x_a, p["w1"], p["b1"]))
        log_scale = jnp.tanh(self._affine(hidden, p["ws"], p["bs"]))
        return self._affine(hidden, p["wt"], p["bt"]), log_scale

    def forward_and_log_det(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        a, b = np.asarray(self.a), np.asarray(self.b)
        shift, log_scale = self._shift_and_log_scale(x[..., a])
        x = jnp.broadcast_to(x, (*shift.shape[:-1], x.shape[-1]))  # x may lack the batch axes.
        y = x.at[..., b].set(x[..., b] * jnp.exp(log_scale) + shift)
        return y, jnp.sum(log_scale, axis=-1)

    def inverse_and_log_det(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        a, b = np.asarray(self.a), np.asarray(self.b)
        shift, log_scale = self._shift_and_log_scale(y[..., a])
        y = jnp.broadcast_to(y, (*shift.shape[:-1], y.shape[-1]))
        x = y.at[..., b].set((y[..., b] - shift) * jnp.exp(-log_scale))
        return x, -jnp.sum(log_scale, axis=-1)


def _split(raw: jax.Array, sizes: dict[str, tuple[int, ...]]) -> dict[str, jax.Array]:
    """Raw `[..., P]` into named blocks of shape `[..., *size]`, in order."""
    blocks, start = {}, 0
    for name, size in sizes.items():
        width = math.prod(size)
        blocks[name] = raw[..., start : start + width].reshape(*raw.shape[:-1], *size)
        start += width
    return blocks


def _layer(flow: str, raw: jax.Array, latent_dim: int, k: int) -> distrax.Bijector:
    d = latent_dim
    if flow == "planar":
        p = _split(raw, {"u": (d,), "w": (d,), "b": ()})
        return Planar(p["u"], p["w"], p["b"])
    if flow == "radial":
        p = _split(raw, {"z0": (d,), "alpha": (), "beta": ()})
        return Radial(p["z0"], p["alpha"], p["beta"])
    a, b = coupling_split(d, k)
    h = COUPLING_HIDDEN
    sizes = {
        "w1": (len(a), h),
        "b1": (h,),
        "ws": (h, len(b)),
        "bs": (len(b),),
        "wt": (h, len(b)),
        "bt": (len(b),),
    }
    return AffineCoupling(_split(raw, sizes), a, b)


def make_bijector(raw: jax.Array, flow: str, latent_dim: int, layers: int) -> distrax.Chain:
    """The flow f = f_K ∘ … ∘ f_1 from its raw parameters `[..., num_params]` (layer after
    layer), with the batch shape `[...]`."""
    check_flow(flow, layers, latent_dim)
    if flow == "none":
        raise ValueError("make_bijector needs a flow, got 'none'.")
    expected = num_params(flow, latent_dim, layers)
    if raw.shape[-1] != expected:
        raise ValueError(
            f"A {layers}-layer {flow!r} flow on a {latent_dim}-D latent has {expected} raw "
            f"parameters, got {raw.shape[-1]}."
        )
    bijectors, start = [], 0
    for k in range(int(layers)):
        width = layer_num_params(flow, latent_dim, k)
        bijectors.append(_layer(flow, raw[..., start : start + width], latent_dim, k))
        start += width
    return distrax.Chain(bijectors[::-1])  # Chain applies its last bijector first.


class FlowDistribution(distrax.Transformed):
    """A flow latent: `distrax.Transformed` of a base latent distribution by a chain of this
    module's layers (its own class: Distrax's Gaussians are `Transformed` too).

    `sample_and_log_prob` evaluates the density on the forward path; `log_prob` at an arbitrary
    z needs the inverse (coupling flows only).
    """

    def mean(self) -> jax.Array:
        raise NotImplementedError(
            "A flow latent has no closed-form mean: use sampling.latent_mean (the flow of its "
            "base's representative z) or the mean of samples."
        )


def transformed(
    base: distrax.Distribution, raw: jax.Array, flow: str, layers: int
) -> FlowDistribution:
    """The flow of raw parameters `[B, num_params]` on ``base`` (batch `[B]`, event `[d]`)."""
    (latent_dim,) = base.event_shape
    return FlowDistribution(base, make_bijector(raw, flow, latent_dim, layers))


def is_flow(dist: distrax.Distribution) -> bool:
    return isinstance(dist, FlowDistribution)


def has_inverse(bijector: distrax.Bijector) -> bool:
    """Whether ``bijector`` (a layer or a chain of this module's layers) has an analytic inverse."""
    if isinstance(bijector, distrax.Chain):
        return all(has_inverse(b) for b in bijector.bijectors)
    return not isinstance(bijector, Planar | Radial)


def forward_and_log_prob(dist: FlowDistribution, z0: jax.Array) -> tuple[jax.Array, jax.Array]:
    """z = f(z₀) and log q(z) = log q₀(z₀) − log|det J_f(z₀)| for base samples z₀ `[..., B, d]`:
    the density on the forward path, as `sample_and_log_prob` computes it."""
    z, log_det = dist.bijector.forward_and_log_det(z0)
    return z, dist.distribution.log_prob(z0) - log_det


def push_forward(dist: FlowDistribution, z0: jax.Array) -> jax.Array:
    """f(z₀) for base points z₀ `[..., B, d]` (any leading axes)."""
    return dist.bijector.forward(z0)


def jacobian(dist: FlowDistribution, z0: jax.Array) -> jax.Array:
    """J_f(z₀) `[..., B, d, d]` (rows: outputs) at base points z₀ `[..., B, d]`; every point is
    mapped by its own batch element's flow, so the columns are jvps along the unit vectors."""
    d = z0.shape[-1]

    def column(e):
        return jax.jvp(dist.bijector.forward, (z0,), (jnp.broadcast_to(e, z0.shape),))[1]

    columns = jax.vmap(column)(jnp.eye(d, dtype=z0.dtype))  # [d (input), ..., d (output)]
    return jnp.moveaxis(columns, 0, -1)
