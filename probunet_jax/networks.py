"""Convolutional building blocks: conv blocks, the U-Net encoder and the U-Net.

Paper §4.2 and Appendix A: every block is three 3×3 convolutions, each followed by ReLU and
batch normalization; average pooling down, bilinear interpolation up, skip concatenation.
`filters` lists the blocks' widths from the top; its last entry is the bottleneck, e.g.
`(32, 64, 128, 512)` for the paper's three blocks of 32, 64, 128 and a 512 bottleneck.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvBlock(nn.Module):
    """`num_convs` × (3×3 conv → ReLU → batch norm). `[B, H, W, C] → [B, H, W, features]`."""

    features: int
    num_convs: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for _ in range(self.num_convs):
            x = nn.Conv(self.features, (3, 3), padding="SAME")(x)
            x = nn.relu(x)
            # PyTorch's BatchNorm2d defaults (momentum 0.1, eps 1e-5), as in the paper's code.
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        return x


def downsample(x: jax.Array) -> jax.Array:
    """2×2 average pooling, `[B, H, W, C] → [B, H/2, W/2, C]`."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


def upsample_to(x: jax.Array, like: jax.Array) -> jax.Array:
    """Bilinear upsampling of `x` `[B, h, w, C]` to the spatial size of `like` `[B, H, W, _]`."""
    b, _, _, c = x.shape
    return jax.image.resize(x, (b, like.shape[1], like.shape[2], c), method="bilinear")


def check_image(image: jax.Array, num_levels: int) -> None:
    """Raises ValueError unless `image` is `[B, H, W, C]` with H, W divisible by 2**(levels-1)."""
    if image.ndim != 4:
        raise ValueError(f"image must be [B, H, W, C], got shape {image.shape}.")
    factor = 2 ** (num_levels - 1)
    if image.shape[1] % factor or image.shape[2] % factor:
        raise ValueError(
            f"image height and width must be divisible by {factor} for {num_levels} "
            f"resolution levels, got shape {image.shape}."
        )


class Encoder(nn.Module):
    """The U-Net encoder: a block per level, average pooling between levels.

    Returns the features of every level, `[B, H / 2**i, W / 2**i, filters[i]]`; the last
    is the bottleneck.
    """

    filters: Sequence[int]
    num_convs: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
        check_image(x, len(self.filters))
        levels = []
        for i, features in enumerate(self.filters):
            if i > 0:
                x = downsample(x)
            x = ConvBlock(features, self.num_convs)(x, train=train)
            levels.append(x)
        return levels


class UNet(nn.Module):
    """The U-Net without its last layer: `[B, H, W, C] → [B, H, W, filters[0]]` features."""

    filters: Sequence[int]
    num_convs: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        levels = Encoder(self.filters, self.num_convs, name="encoder")(x, train=train)
        x = levels[-1]
        for skip, features in zip(levels[-2::-1], self.filters[-2::-1], strict=True):
            x = jnp.concatenate([upsample_to(x, skip), skip], axis=-1)
            x = ConvBlock(features, self.num_convs)(x, train=train)
        return x


class LatentNet(nn.Module):
    """Prior or posterior net: a U-Net encoder, the spatial mean, a 1×1 layer.

    `[B, H, W, C] → [B, num_params]` raw parameters of the latent distribution.
    """

    filters: Sequence[int]
    num_params: int
    num_convs: int = 3

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        bottleneck = Encoder(self.filters, self.num_convs, name="encoder")(x, train=train)[-1]
        pooled = jnp.mean(bottleneck, axis=(1, 2))
        return nn.Dense(self.num_params, name="latent_params")(pooled)


class Head(nn.Module):
    """The "Fcomb" head: z tiled over H×W, concatenated with the U-Net features, 1×1 convs.

    `depth` 1×1 layers in all, ReLU between them, the last giving `num_classes` logits.
    The first layer on [features ⊕ z] is computed as W_f·features + W_z·z, which is the
    same map; `project` applies the per-image part once so that each sample of z only costs
    `combine`.
    """

    features: int
    depth: int
    num_classes: int

    def setup(self):
        if self.depth < 1:
            raise ValueError(f"head depth must be >= 1, got {self.depth}.")
        width = self.features if self.depth > 1 else self.num_classes
        self.feature_projection = nn.Dense(width, name="feature_projection")
        self.latent_projection = nn.Dense(width, use_bias=False, name="latent_projection")
        self.layers = [
            nn.Dense(self.features if i < self.depth - 2 else self.num_classes)
            for i in range(self.depth - 1)
        ]

    def project(self, features: jax.Array) -> jax.Array:
        """`[B, H, W, F] → [B, H, W, width]`: the per-image part of the first layer."""
        return self.feature_projection(features)

    def combine(self, projected: jax.Array, z: jax.Array) -> jax.Array:
        """Logits `[B, H, W, num_classes]` from projected features and z `[B, d]`."""
        x = projected + self.latent_projection(z)[:, None, None, :]
        for layer in self.layers:
            x = layer(nn.relu(x))
        return x

    def __call__(self, features: jax.Array, z: jax.Array) -> jax.Array:
        return self.combine(self.project(features), z)
