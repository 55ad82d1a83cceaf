"""Hierarchical latents: latent maps at several decoder scales, sampled top down.

The Hierarchical Probabilistic U-Net (HPU-Net; Kohl et al. 2019, "A Hierarchical Probabilistic
U-Net for Modeling Multi-Scale Ambiguities") and PHiSeg (Baumgartner et al. 2019), with the
per-position latent of any family of `distributions` (AA as both papers have it; FC, LR and
mixtures as the Generalized Probabilistic U-Net proposes).

With ``n = len(filters)`` resolution levels and ``L = latent_scales`` (1 <= L <= n − 1):

- The **prior net** p(z|x) is a U-Net encoder on the image and a decoder truncated after the
  L coarsest decoder scales. At decoder scale i (i = 0 is the bottleneck, `[B, H/2^(n-1),
  W/2^(n-1)]`; each next scale doubles the size) a 1×1 layer maps the features to the raw
  parameters of one latent distribution per position (soft-clipped to ±``RAW_BOUND``),
  `distributions.make_latent_distribution` on the flattened positions `[B·h·w, P]`; z_i
  `[B, h, w, d]` is concatenated to the features, which are upsampled, concatenated with the
  encoder's skip and decoded by the next block, where the next scale's latent distribution is
  computed: p(z_i | x, z_<i).
- The **posterior net** q(z|x, y) has the same structure on the image and the mask and samples
  its own z top down, q(z_i | x, y, z_<i).
- The **decoder** ("stitching decoder" in HPU-Net) completes the prior net's decoder to full
  resolution with the prior encoder's skips, then the **head**, HPU-Net's single 1×1 logits
  layer, gives the logits. z enters the decoder, so there is no Fcomb to combine it with the
  features: ``model.head_depth`` (the global-latent model's Fcomb depth) does not apply. A
  deeper ReLU head is a trap here (measured on the quick start: with 3 layers, the first
  layer's units all died at the lesion pixels, whose logits stuck at a constant below 0, and
  every prior sample was empty; test GED 1.19 against 0.21 with one layer).

Training (as HPU-Net): the posterior samples z_q top down, the prior net is fed z_q instead of
its own samples (so its distributions at scale i are p(z_i | x, z_q<i)), and the logits come
from the prior net's features; the loss is the cross-entropy plus β (or GECO) times
KL = Σ_i Σ_positions KL(q_i ‖ p_i) (closed form, or Monte Carlo for mixtures;
`losses.kl_terms`, reported per scale as ``kl/scale_i``).

Sampling: the prior encoder runs once per image; the latent scales, the decoder and the head
run per sample (`probunet_jax.sampling.sample_logits` vmaps `HierarchicalProbUNet.sample` over
the samples). Unlike the global-latent model, whose U-Net runs once per image and only the 1×1
head per sample, the decoder cannot be shared between samples here: it is conditioned on z
from the coarsest scale up.

Not applicable: the 2-D latent-space figures of `probunet_jax.latent` (one d-dimensional z per
image), which raise ValueError for this model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from probunet_jax import distributions, sampling
from probunet_jax.model import ModelOutput, posterior_input
from probunet_jax.networks import (
    SMALL_BIAS,
    ConvBlock,
    Encoder,
    block_norm,
    check_image,
    check_options,
    upsample_to,
)

# One latent map per scale, coarsest first: `[B, h_i, w_i, d]`.
Latents = tuple[jax.Array, ...]

# The raw latent parameters are soft-clipped to ±RAW_BOUND (RAW_BOUND·tanh(raw / RAW_BOUND)):
# scales exp(raw) + floor stay below e⁵ ≈ 148. Unbounded, a prior sample of one scale can blow up
# the next scale's log-scales at an image unlike the training images (measured: in one of 4096
# prior samples of the quick start's test images, 16 per image, σ ≈ 3·10³ at scale 0 gave
# σ = inf at scale 1 and NaN logits).
RAW_BOUND = 5.0


def check_latent_scales(latent_scales: int, filters: Sequence[int]) -> None:
    """Raises ValueError unless 1 <= ``latent_scales`` <= len(``filters``) − 1."""
    levels = len(filters)
    if not 1 <= latent_scales <= levels - 1:
        raise ValueError(
            f"latent_scales must be between 1 and len(filters) - 1 = {levels - 1} for filters "
            f"{tuple(filters)} ({levels} resolution levels: latents at the coarsest decoder "
            f"scales, not at full resolution), got {latent_scales}."
        )


def decoder_block_norm(norm: str, block: int, num_levels: int) -> str:
    """The ConvBlock norm of decoder block ``block`` (0: the one after the bottleneck), as in
    `networks.UNet`: under 'authors' every block but the last is normalized."""
    return block_norm(norm, block < num_levels - 2)


def latent_map(z: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """z `[B·h·w, d]` of a per-position distribution as a map `[B, h, w, d]`."""
    return z.reshape(*shape, z.shape[-1])


class LatentLayer(nn.Module):
    """1×1 layers from features `[B, h, w, C]` to raw latent parameters `[B, h, w, P]`: the
    layers ``(name, width)`` of `distributions.LatentSpec.output_layers`, concatenated and
    soft-clipped to ±``RAW_BOUND``.

    Kernels and biases start at zero (whatever the network's ``init_scheme``): at
    initialization every position's prior and posterior are the same standard Gaussian (or
    mixture of identical ones), so the KL starts at 0 and z enters the decoder as unit noise.
    """

    output_layers: Sequence[tuple[str, int]]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        zeros = nn.initializers.zeros
        raw = jnp.concatenate(
            [
                nn.Dense(width, name=name, kernel_init=zeros, bias_init=zeros)(x)
                for name, width in self.output_layers
            ],
            axis=-1,
        )
        return RAW_BOUND * jnp.tanh(raw / RAW_BOUND)


class HierarchicalCore(nn.Module):
    """A U-Net encoder and a decoder interleaved with ``latent_scales`` latent scales.

    ``decoder_blocks`` decoder blocks follow the latent scales: ``latent_scales`` for the prior
    (the decoder continues from its features), ``latent_scales − 1`` for the posterior (only
    its distributions are needed).
    """

    filters: Sequence[int]
    latent: distributions.LatentSpec
    latent_scales: int
    decoder_blocks: int
    convs_per_block: int = 3
    norm: str = "paper"
    init_scheme: str = "flax"
    align_corners: bool = False
    conv_slice_mib: float = 0.0

    def setup(self):
        n = len(self.filters)
        self.encoder = Encoder(
            self.filters,
            self.convs_per_block,
            self.norm,
            self.init_scheme,
            conv_slice_mib=self.conv_slice_mib,
        )
        self.latent_layers = [
            LatentLayer(self.latent.output_layers) for _ in range(self.latent_scales)
        ]
        self.blocks = [
            ConvBlock(
                self.filters[n - 2 - i],
                self.convs_per_block,
                decoder_block_norm(self.norm, i, n),
                self.init_scheme,
                self.conv_slice_mib,
            )
            for i in range(self.decoder_blocks)
        ]

    def encode(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
        """The encoder's features of every level, the bottleneck last."""
        return self.encoder(x, train=train)

    def decode(
        self,
        levels: Sequence[jax.Array],
        *,
        train: bool,
        latents: Latents | None = None,
        key: jax.Array | None = None,
        mean: bool = False,
    ) -> tuple[jax.Array, tuple[distrax.Distribution, ...], Latents]:
        """The decoder, top down from the bottleneck of ``levels``.

        At each scale the latent is taken from ``latents`` if given, else the distribution's
        representative z (``mean``: `sampling.latent_mean`) or a sample (key
        ``fold_in(key, scale)``).

        Returns:
          the features after the last decoder block, the distribution of every scale (batch
          shape `[B·h·w]`), and the latent maps used (`[B, h, w, d]`, coarsest first).
        """
        if latents is None and not mean and key is None:
            raise ValueError("Sampling the latents top down needs a PRNG `key`.")
        n = len(self.filters)
        x = levels[-1]
        dists, used = [], []
        for i in range(self.latent_scales):
            raw = self.latent_layers[i](x)
            dist = distributions.make_latent_distribution(
                raw.reshape(-1, raw.shape[-1]), self.latent
            )
            if latents is not None:
                z = latents[i]
            elif mean:
                z = latent_map(sampling.latent_mean(dist), raw.shape[:3])
            else:
                z = latent_map(dist.sample(seed=jax.random.fold_in(key, i)), raw.shape[:3])
            dists.append(dist)
            used.append(z)
            if i < self.decoder_blocks:
                skip = levels[n - 2 - i]
                up = upsample_to(
                    jnp.concatenate([z, x], axis=-1), skip, align_corners=self.align_corners
                )
                x = self.blocks[i](jnp.concatenate([up, skip], axis=-1), train=train)
        return x, tuple(dists), tuple(used)


class Decoder(nn.Module):
    """The decoder blocks below the latent scales, up to full resolution (HPU-Net's stitching
    decoder): blocks ``first_block`` … n − 2, with the prior encoder's skips."""

    filters: Sequence[int]
    first_block: int
    convs_per_block: int = 3
    norm: str = "paper"
    init_scheme: str = "flax"
    align_corners: bool = False
    conv_slice_mib: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, levels: Sequence[jax.Array], *, train: bool) -> jax.Array:
        n = len(self.filters)
        for i in range(self.first_block, n - 1):
            skip = levels[n - 2 - i]
            up = upsample_to(x, skip, align_corners=self.align_corners)
            norm = decoder_block_norm(self.norm, i, n)
            block = ConvBlock(
                self.filters[n - 2 - i],
                self.convs_per_block,
                norm,
                self.init_scheme,
                self.conv_slice_mib,
            )
            x = block(jnp.concatenate([up, skip], axis=-1), train=train)
        return x


class OutputHead(nn.Module):
    """The logits layer: one 1×1 layer from the decoder's features to ``num_classes`` logits
    (under ``init_scheme`` 'authors' orthogonal with small biases, as HPU-Net's and the
    authors' head layers)."""

    num_classes: int
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inits = (
            dict(kernel_init=nn.initializers.orthogonal(), bias_init=SMALL_BIAS)
            if self.init_scheme == "authors"
            else {}
        )
        return nn.Dense(self.num_classes, **inits)(x)


class HierarchicalProbUNet(nn.Module):
    """The hierarchical Probabilistic U-Net (module docstring).

    Attributes:
      filters: block widths from the top, the last is the bottleneck.
      latent: the per-position latent family (`distributions.LatentSpec`), the same at every
        scale; ``latent.latent_dim`` is the dimension of z at one position.
      latent_scales: L, the number of coarsest decoder scales with latents, 1 … n − 1.
      num_classes, convs_per_block, norm, init_scheme, align_corners, conv_slice_mib: as
        `model.ProbabilisticUNet`.
    """

    filters: Sequence[int]
    latent: distributions.LatentSpec
    latent_scales: int = 2
    num_classes: int = 1
    convs_per_block: int = 3
    norm: str = "paper"
    init_scheme: str = "flax"
    align_corners: bool = False
    conv_slice_mib: float = 0.0

    PARTS: ClassVar[tuple[str, ...]] = ("prior_net", "posterior_net", "decoder", "head")

    def setup(self):
        self.latent.validate()
        check_options(self.norm, self.init_scheme)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
        check_latent_scales(self.latent_scales, self.filters)
        core = dict(
            filters=self.filters,
            latent=self.latent,
            latent_scales=self.latent_scales,
            convs_per_block=self.convs_per_block,
            norm=self.norm,
            init_scheme=self.init_scheme,
            align_corners=self.align_corners,
            conv_slice_mib=self.conv_slice_mib,
        )
        self.prior_net = HierarchicalCore(decoder_blocks=self.latent_scales, **core)
        self.posterior_net = HierarchicalCore(decoder_blocks=self.latent_scales - 1, **core)
        self.decoder = Decoder(
            self.filters,
            self.latent_scales,
            self.convs_per_block,
            self.norm,
            self.init_scheme,
            self.align_corners,
            self.conv_slice_mib,
        )
        self.head = OutputHead(self.num_classes, self.init_scheme)

    # -------------------------------------------------------------------------- parts

    def encode(self, image: jax.Array, *, train: bool = False) -> list[jax.Array]:
        """The prior encoder's features of every level (computed once per image)."""
        check_image(image, len(self.filters))
        return self.prior_net.encode(image, train=train)

    def prior(
        self,
        levels: Sequence[jax.Array],
        *,
        train: bool = False,
        latents: Latents | None = None,
        key: jax.Array | None = None,
        mean: bool = False,
    ) -> tuple[jax.Array, tuple[distrax.Distribution, ...], Latents]:
        """The prior net's decoder on ``levels`` (`encode`): the features for `logits`, the
        distribution of every scale and the latents used (`HierarchicalCore.decode`)."""
        return self.prior_net.decode(levels, train=train, latents=latents, key=key, mean=mean)

    def posterior(
        self,
        image: jax.Array,
        mask: jax.Array,
        *,
        train: bool = False,
        key: jax.Array | None = None,
        mean: bool = False,
    ) -> tuple[tuple[distrax.Distribution, ...], Latents]:
        """q(z_i | x, y, z_<i) of every scale and the latents it sampled top down (with
        ``key``) or its representative z at every scale (``mean``)."""
        inputs = posterior_input(image, mask, self.num_classes, len(self.filters))
        levels = self.posterior_net.encode(inputs, train=train)
        _, dists, used = self.posterior_net.decode(levels, train=train, key=key, mean=mean)
        return dists, used

    def logits(
        self, levels: Sequence[jax.Array], features: jax.Array, *, train: bool = False
    ) -> jax.Array:
        """Logits `[B, H, W, num_classes]` from the prior net's decoder features."""
        return self.head(self.decoder(features, levels, train=train))

    def decode(
        self, levels: Sequence[jax.Array], latents: Latents, *, train: bool = False
    ) -> jax.Array:
        """Logits for given latent maps ``latents`` (`[B, h_i, w_i, d]`, coarsest first)."""
        features, _, _ = self.prior(levels, train=train, latents=latents)
        return self.logits(levels, features, train=train)

    def sample(self, levels: Sequence[jax.Array], key: jax.Array) -> jax.Array:
        """Logits of one sample z ~ p(z|x) drawn top down with ``key``: the part of sampling
        that runs per sample (everything but the encoder)."""
        features, _, _ = self.prior(levels, key=key)
        return self.logits(levels, features)

    # -------------------------------------------------------------------------- whole passes

    def __call__(self, image: jax.Array, mask: jax.Array, *, train: bool) -> ModelOutput:
        """The training forward pass: z ~ q(z|x,y) top down (rng stream "latent"), the prior's
        distributions and the logits given those z (`posterior_fed`)."""
        return self.posterior_fed(image, mask, self.make_rng("latent"), train=train)[0]

    def posterior_fed(
        self, image: jax.Array, mask: jax.Array, key: jax.Array, *, train: bool = False
    ) -> tuple[ModelOutput, Latents]:
        """The training forward pass with z_q ~ q(z|x,y) drawn top down with ``key``: the
        prior net decodes z_q (its distributions p(z_i | x, z_q<i)), the logits come from its
        features; returns the `ModelOutput` and z_q."""
        posterior, z_q = self.posterior(image, mask, train=train, key=key)
        levels = self.encode(image, train=train)
        features, prior, _ = self.prior(levels, train=train, latents=z_q)
        return ModelOutput(self.logits(levels, features, train=train), prior, posterior), z_q

    def prior_mean_logits(self, image: jax.Array) -> jax.Array:
        """Logits for the prior's representative z at every scale, top down."""
        levels = self.encode(image)
        features, _, _ = self.prior(levels, mean=True)
        return self.logits(levels, features)

    def posterior_reconstruction(self, image: jax.Array, mask: jax.Array) -> jax.Array:
        """Logits for the posterior's representative z at every scale, top down."""
        _, z_q = self.posterior(image, mask, mean=True)
        return self.decode(self.encode(image), z_q)
