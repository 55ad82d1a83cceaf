"""The (Generalized) Probabilistic U-Net: U-Net, prior net p(z|x), posterior net q(z|x,y), head.

Kohl et al. 2018; Bhat et al. 2022, Fig. 1. Images are `[B, H, W, C]` float32, training
masks `[B, H, W]` with values in {0, …, num_classes − 1} ({0, 1} in the binary case, where
the head outputs one logit channel for a sigmoid).

`model_from_config` builds this model for ``model.latent_scales`` = 0 (one global latent z) and
the hierarchical model of `probunet_jax.hierarchical` (latent maps at several decoder scales)
for ``latent_scales`` > 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from probunet_jax import component_pruning, distributions, presets
from probunet_jax.networks import Head, LatentNet, UNet, check_image, check_options


class ModelOutput(NamedTuple):
    """The training forward pass.

    Attributes:
      logits: `[B, H, W, num_classes]` for z sampled from the posterior.
      prior: p(z|x), batch shape `[B]`; for the hierarchical model a tuple with one
        distribution per latent scale, coarsest first, over the flattened positions (batch shape
        `[B·h·w]`, p(z_i|x, z_<i) given the posterior's z of the coarser scales).
      posterior: q(z|x,y), batch shape `[B]`; a tuple like ``prior`` for the hierarchical model.
    """

    logits: jax.Array
    prior: distrax.Distribution
    posterior: distrax.Distribution


def check_mask(mask: jax.Array, image: jax.Array, num_classes: int) -> None:
    """Raises ValueError unless `mask` is `[B, H, W]` like `image` with valid class values.

    Values are checked only for concrete arrays (not under jit tracing).
    """
    if mask.shape != image.shape[:3]:
        raise ValueError(
            f"mask must be [B, H, W] = {image.shape[:3]} to match image {image.shape}, "
            f"got shape {mask.shape}."
        )
    if not isinstance(mask, jax.core.Tracer):
        values = np.unique(np.asarray(mask))
        allowed = np.arange(max(num_classes, 2))
        if not np.isin(values, allowed).all():
            raise ValueError(
                f"mask values must be in {set(allowed.tolist())}, got values {values[:10]}."
            )


def posterior_input(image: jax.Array, mask: jax.Array, num_classes: int, num_levels: int):
    """The posterior's input: the image concatenated with the mask (one-hot if multi-class),
    `[B, H, W, C + max(1, num_classes)]`; checks both."""
    check_image(image, num_levels)
    check_mask(mask, image, num_classes)
    if num_classes == 1:
        mask_channels = mask[..., None].astype(image.dtype)
    else:
        mask_channels = jax.nn.one_hot(mask, num_classes, dtype=image.dtype)
    return jnp.concatenate([image, mask_channels], axis=-1)


def is_hierarchical(model: nn.Module) -> bool:
    """Whether ``model`` is the hierarchical model (`probunet_jax.hierarchical`), whose latents
    are maps at ``model.latent_scales`` decoder scales, rather than one global z."""
    return getattr(model, "latent_scales", 0) > 0


class ProbabilisticUNet(nn.Module):
    """The Generalized Probabilistic U-Net.

    Attributes:
      filters: block widths from the top, the last is the bottleneck (paper: 32, 64, 128, 512).
      latent: the family of the posterior (`distributions.LatentSpec`); the prior's is
        ``latent.prior_spec`` (the same but for a flow of the posterior only).
      head_depth: number of 1×1 layers of the head, the logits layer included (paper: 4).
      num_classes: 1 for binary segmentation (sigmoid), else the number of classes (softmax).
      convs_per_block: 3×3 convolutions per block (paper: 3).
      norm, init_scheme, align_corners: the network options of `networks` (the paper's text:
        'paper', 'flax', False; the authors' code: 'authors', 'authors', True).
      conv_slice_mib: on the CPU, the most MiB of activations per convolution, in slices of
        images (`networks.sliced_conv`; 0: one convolution); the same map at any value.
      pruning: pruning of unused mixture components (`component_pruning`), None for none: its
        state lives in ``batch_stats``, a training forward pass updates it, and the pruned
        components are masked in the prior and the posterior.
    """

    filters: Sequence[int]
    latent: distributions.LatentSpec
    head_depth: int = 4
    num_classes: int = 1
    convs_per_block: int = 3
    norm: str = "paper"
    init_scheme: str = "flax"
    align_corners: bool = False
    conv_slice_mib: float = 0.0
    pruning: component_pruning.PruningSpec | None = None

    # The parts of `parameter_counts`: submodule names.
    PARTS: ClassVar[tuple[str, ...]] = ("unet", "prior_net", "posterior_net", "head")

    def setup(self):
        self.latent.validate()
        check_options(self.norm, self.init_scheme)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}.")
        if len(self.filters) < 1:
            raise ValueError("filters must list at least one block width.")
        options = dict(norm=self.norm, init_scheme=self.init_scheme)
        convs = dict(num_convs=self.convs_per_block, conv_slice_mib=self.conv_slice_mib, **options)
        self.unet = UNet(self.filters, align_corners=self.align_corners, **convs)
        prior_layers = self.latent.prior_spec.output_layers  # No flow unless latent.prior_flow.
        self.prior_net = LatentNet(self.filters, prior_layers, **convs)
        self.posterior_net = LatentNet(self.filters, self.latent.output_layers, **convs)
        self.head = Head(
            self.filters[0], self.head_depth, self.num_classes, self.latent.latent_dim, **options
        )
        if self.pruning is not None:
            self.component_usage = component_pruning.ComponentUsage(
                self.latent.num_components, self.pruning
            )

    def _masked(self, dist: distrax.Distribution) -> distrax.Distribution:
        """``dist`` with the pruned mixture components masked (unchanged without pruning)."""
        if self.pruning is None:
            return dist
        return component_pruning.mask_mixture(dist, self.component_usage())

    def prior(self, image: jax.Array, *, train: bool = False) -> distrax.Distribution:
        """p(z|x), batch shape `[B]`."""
        return self._masked(
            distributions.make_latent_distribution(
                self.prior_net(image, train=train), self.latent.prior_spec
            )
        )

    def posterior(
        self, image: jax.Array, mask: jax.Array, *, train: bool = False
    ) -> distrax.Distribution:
        """q(z|x,y) on the image concatenated with the mask (one-hot if multi-class)."""
        inputs = posterior_input(image, mask, self.num_classes, len(self.filters))
        return self._masked(
            distributions.make_latent_distribution(
                self.posterior_net(inputs, train=train), self.latent
            )
        )

    def features(self, image: jax.Array, *, train: bool = False) -> jax.Array:
        """U-Net features with the head's per-image first-layer part applied, `[B, H, W, F]`."""
        return self.head.project(self.unet(image, train=train))

    def decode(self, features: jax.Array, z: jax.Array, *, train: bool = False) -> jax.Array:
        """Logits `[B, H, W, num_classes]` from `features` (see `features`) and z `[B, d]`."""
        return self.head.combine(features, z, train=train)

    def features_and_prior(
        self, image: jax.Array, *, train: bool = False
    ) -> tuple[jax.Array, distrax.Distribution]:
        """Everything sampling needs that is computed once per image."""
        return self.features(image, train=train), self.prior(image, train=train)

    def __call__(self, image: jax.Array, mask: jax.Array, *, train: bool) -> ModelOutput:
        """The training forward pass: z ~ q(z|x,y) (rng stream "latent"); with ``train`` it
        also advances the pruning state, if any (``batch_stats`` must be mutable)."""
        posterior = self.posterior(image, mask, train=train)
        prior = self.prior(image, train=train)
        if train and self.pruning is not None:
            self.component_usage.update(prior, posterior)
        z = posterior.sample(seed=self.make_rng("latent"))
        logits = self.decode(self.features(image, train=train), z, train=train)
        return ModelOutput(logits, prior, posterior)


def model_from_config(config: ml_collections.ConfigDict) -> nn.Module:
    """Builds the model of a model config (see `presets.model_config`): `ProbabilisticUNet` for
    ``latent_scales`` 0 (or absent), else `hierarchical.HierarchicalProbUNet`."""
    fields = dict(
        filters=tuple(config.filters),
        latent=presets.latent_spec(config),
        head_depth=config.head_depth,
        num_classes=config.num_classes,
        convs_per_block=config.convs_per_block,
        norm=config.norm,
        init_scheme=config.init_scheme,
        align_corners=config.align_corners,
        conv_slice_mib=float(config.get("conv_slice_mib", 0.0)),
        pruning=component_pruning.spec_from_config(config),
    )
    scales = int(config.get("latent_scales", 0))
    if scales == 0:
        return ProbabilisticUNet(**fields)
    from probunet_jax import hierarchical  # It imports this module.

    del fields["head_depth"]  # Its head is one logits layer (no Fcomb: z enters the decoder).
    del fields["pruning"]  # None: `presets.check_model_config` rejects it with latent maps.
    return hierarchical.HierarchicalProbUNet(latent_scales=scales, **fields)


def init_variables(model: nn.Module, key: jax.Array, image_shape: tuple[int, int, int]) -> dict:
    """Initial `{'params', 'batch_stats'}` for images of shape `[H, W, C]`."""
    image = jnp.zeros((1, *image_shape), jnp.float32)
    mask = jnp.zeros((1, *image_shape[:2]), jnp.int32)
    params_key, latent_key = jax.random.split(key)
    return model.init({"params": params_key, "latent": latent_key}, image, mask, train=False)


def parameter_counts(model: nn.Module, image_shape: tuple[int, int, int]) -> dict[str, int]:
    """Number of trainable parameters of each part of ``model.PARTS`` and the total: U-Net,
    prior, posterior, head; for the hierarchical model prior, posterior, decoder, head."""
    shapes = jax.eval_shape(lambda k: init_variables(model, k, image_shape), jax.random.key(0))
    params = shapes["params"]
    counts = {
        name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params.get(name, {})))
        for name in model.PARTS
    }
    counts["total"] = sum(counts.values())
    return counts
