"""Convolutional building blocks: conv blocks, the U-Net encoder and the U-Net.

Paper §4.2 and Appendix A: every block is three 3×3 convolutions, each followed by ReLU and
batch normalization; average pooling down, bilinear interpolation up, skip concatenation.
`filters` lists the blocks' widths from the top; its last entry is the bottleneck, e.g.
`(32, 64, 128, 512)` for the paper's three blocks of 32, 64, 128 and a 512 bottleneck.

Options of every module, to follow either the paper's text or its authors' code
(``ishaanb92/GeneralizedProbabilisticUNet``, README "Paper, code and this project"):

- ``norm``: 'paper', batch norm after every convolution's ReLU (none in the head); 'authors',
  one batch norm after each block's last ReLU, none after the U-Net's last decoder block nor
  after the latent nets' bottleneck block, and one before each hidden 1×1 layer of the head
  but its first (depth − 2 in all).
- ``init_scheme``: 'flax', Flax's defaults (LeCun normal kernels, zero biases); 'authors', He-normal
  convolutions with N(0, 0.001²) biases truncated at ±2σ, He-normal latent-parameter layers
  with N(0, 1) biases, PyTorch's default uniform init of the mixture-logit layer, orthogonal
  head layers with the same truncated biases.
- ``align_corners``: bilinear upsampling with half-pixel centres (``jax.image.resize``) or
  with the corners aligned (PyTorch's ``align_corners=True``, the authors' code).

Every convolution takes ``conv_slice_mib`` (`sliced_conv`): on the CPU a large batch is
convolved in cache-sized slices of images, the same map, faster (README "Performance").
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NORMS = ("paper", "authors")
INITS = ("flax", "authors")

# The authors' code: He-normal (fan in, not truncated) kernels, N(0, 0.001²) biases cut at ±2σ.
HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
SMALL_BIAS = nn.initializers.truncated_normal(stddev=1e-3, lower=-2.0, upper=2.0)


def check_options(norm: str, init_scheme: str) -> None:
    """Raises ValueError for an unknown ``norm`` or ``init_scheme`` option."""
    if norm not in NORMS:
        raise ValueError(f"Unknown norm {norm!r}; expected one of {NORMS}.")
    if init_scheme not in INITS:
        raise ValueError(f"Unknown init_scheme {init_scheme!r}; expected one of {INITS}.")


def batch_norm(train: bool | None = None) -> nn.BatchNorm:
    """PyTorch's BatchNorm2d defaults (momentum 0.1, eps 1e-5), as in the paper's code; the
    mode is given at each call if ``train`` is None."""
    use_running_average = None if train is None else not train
    return nn.BatchNorm(use_running_average=use_running_average, momentum=0.9, epsilon=1e-5)


def conv_inits(init_scheme: str) -> dict:
    """Keyword arguments of a 3×3 convolution under ``init_scheme``."""
    return dict(kernel_init=HE_NORMAL, bias_init=SMALL_BIAS) if init_scheme == "authors" else {}


def sliced_conv(slice_mib: float) -> Callable[..., jax.Array]:
    """``lax.conv_general_dilated`` that, on the CPU, convolves the batch in slices of images
    whose input and output activations take at most ``slice_mib`` MiB, and concatenates them:
    the same map (each image is convolved on its own; batch norm still sees the whole batch),
    but cache-sized. XLA:CPU runs each convolution on one core: on the paper network at batch
    32, 32 MiB slices (8 images at 128² × 32 channels) train 1.2× faster per image than one
    convolution, and independent slices share the two cores; on small maps slicing only adds
    work (README "Performance"). ``slice_mib`` 0, a batch within it, another backend, or several
    devices (slices would cut across the batch's sharding): one convolution."""
    if not slice_mib >= 0:
        raise ValueError(f"conv_slice_mib must be >= 0 (0: no slicing), got {slice_mib}.")
    return functools.partial(_sliced_conv, slice_mib)


def conv_slices(batch: int, image_bytes: int, slice_mib: float) -> int:
    """The number of slices of `_sliced_conv`: as few as keep each within ``slice_mib`` MiB
    (at least one image each), 1 for ``slice_mib`` 0."""
    if not slice_mib:
        return 1
    per_slice = max(1, int(slice_mib * 2**20 // image_bytes))
    return -(-batch // per_slice)


def _sliced_conv(slice_mib: float, lhs: jax.Array, rhs: jax.Array, *args, **kwargs) -> jax.Array:
    conv = jax.lax.conv_general_dilated
    batch = lhs.shape[0]  # Flax's convolutions are batch-first, NHWC, with HWIO kernels.
    image_values = np.prod(lhs.shape[1:]) + np.prod(lhs.shape[1:-1]) * rhs.shape[-1]
    slices = conv_slices(batch, int(image_values) * lhs.dtype.itemsize, slice_mib)
    if slices == 1 or jax.default_backend() != "cpu" or jax.device_count() > 1:
        return conv(lhs, rhs, *args, **kwargs)
    bounds = np.linspace(0, batch, slices + 1).round().astype(int).tolist()
    parts = [conv(lhs[a:b], rhs, *args, **kwargs) for a, b in itertools.pairwise(bounds)]
    return jnp.concatenate(parts, axis=0)


class ConvBlock(nn.Module):
    """`num_convs` × (3×3 conv → ReLU), batch norm after every ReLU (``norm`` 'every_conv'),
    after the last only ('end') or nowhere ('none'). `[B, H, W, C] → [B, H, W, features]`.
    Convolutions in slices of at most ``conv_slice_mib`` MiB (`sliced_conv`)."""

    features: int
    num_convs: int = 3
    norm: str = "every_conv"
    init_scheme: str = "flax"
    conv_slice_mib: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = sliced_conv(self.conv_slice_mib)
        for i in range(self.num_convs):
            x = nn.relu(
                nn.Conv(
                    self.features,
                    (3, 3),
                    padding="SAME",
                    conv_general_dilated=conv,
                    **conv_inits(self.init_scheme),
                )(x)
            )
            if self.norm == "every_conv" or (self.norm == "end" and i == self.num_convs - 1):
                x = batch_norm(train)(x)
        return x


def block_norm(norm: str, normalized: bool) -> str:
    """The ConvBlock ``norm`` of a block under the network option ``norm``: after every conv
    ('paper'), or once at its end where the authors' code normalizes it (``normalized``)."""
    if norm == "paper":
        return "every_conv"
    return "end" if normalized else "none"


def downsample(x: jax.Array) -> jax.Array:
    """2×2 average pooling, `[B, H, W, C] → [B, H/2, W/2, C]`."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


def align_corners_matrix(size_in: int, size_out: int) -> np.ndarray:
    """`[size_out, size_in]` weights of 1-D linear interpolation with the corners aligned:
    output i samples input position i·(size_in − 1)/(size_out − 1) (0 if size_out is 1)."""
    scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    position = np.arange(size_out) * scale
    low = np.minimum(np.floor(position).astype(int), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    frac = (position - low)[:, None]
    eye = np.eye(size_in)
    return eye[low] * (1.0 - frac) + eye[high] * frac


def upsample_to(x: jax.Array, like: jax.Array, *, align_corners: bool = False) -> jax.Array:
    """Bilinear upsampling of `x` `[B, h, w, C]` to the spatial size of `like` `[B, H, W, _]`,
    half-pixel centres (``jax.image.resize``) or corners aligned (PyTorch's
    ``align_corners=True``: two interpolation matrices, one per axis)."""
    b, h, w, c = x.shape
    height, width = like.shape[1], like.shape[2]
    if not align_corners:
        return jax.image.resize(x, (b, height, width, c), method="bilinear")
    rows = jnp.asarray(align_corners_matrix(h, height), x.dtype)
    cols = jnp.asarray(align_corners_matrix(w, width), x.dtype)
    return jnp.einsum("Hh,bhwc,Ww->bHWc", rows, x, cols)


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
    is the bottleneck (batch-normalized under ``norm`` 'authors' only if ``norm_bottleneck``).
    """

    filters: Sequence[int]
    num_convs: int = 3
    norm: str = "paper"
    init_scheme: str = "flax"
    norm_bottleneck: bool = True
    conv_slice_mib: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
        check_image(x, len(self.filters))
        levels = []
        for i, features in enumerate(self.filters):
            if i > 0:
                x = downsample(x)
            normalized = self.norm_bottleneck or i < len(self.filters) - 1
            norm = block_norm(self.norm, normalized)
            x = ConvBlock(features, self.num_convs, norm, self.init_scheme, self.conv_slice_mib)(
                x, train=train
            )
            levels.append(x)
        return levels


class UNet(nn.Module):
    """The U-Net without its last layer: `[B, H, W, C] → [B, H, W, filters[0]]` features."""

    filters: Sequence[int]
    num_convs: int = 3
    norm: str = "paper"
    init_scheme: str = "flax"
    align_corners: bool = False
    conv_slice_mib: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        levels = Encoder(
            self.filters,
            self.num_convs,
            self.norm,
            self.init_scheme,
            conv_slice_mib=self.conv_slice_mib,
            name="encoder",
        )(x, train=train)
        x = levels[-1]
        for i, (skip, features) in enumerate(
            zip(levels[-2::-1], self.filters[-2::-1], strict=True)
        ):
            up = upsample_to(x, skip, align_corners=self.align_corners)
            norm = block_norm(self.norm, i < len(self.filters) - 2)  # Not the last block.
            x = ConvBlock(features, self.num_convs, norm, self.init_scheme, self.conv_slice_mib)(
                jnp.concatenate([up, skip], axis=-1), train=train
            )
        return x


def torch_default_init(fan_in: int) -> dict:
    """PyTorch's default init of a layer: kernel and bias uniform in ±1/√fan_in."""
    bound = 1.0 / np.sqrt(fan_in)

    def bias_init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    return dict(kernel_init=kernel_init, bias_init=bias_init)


class LatentNet(nn.Module):
    """Prior or posterior net: a U-Net encoder, the spatial mean, 1×1 output layers.

    `[B, H, W, C] → [B, Σ widths]` raw parameters of the latent distribution, the outputs of
    the layers `(name, width)` of ``output_layers`` one after the other
    (`distributions.LatentSpec.output_layers`).
    """

    filters: Sequence[int]
    output_layers: Sequence[tuple[str, int]]
    num_convs: int = 3
    norm: str = "paper"
    init_scheme: str = "flax"
    conv_slice_mib: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        encoder = Encoder(
            self.filters,
            self.num_convs,
            self.norm,
            self.init_scheme,
            norm_bottleneck=False,
            conv_slice_mib=self.conv_slice_mib,
            name="encoder",
        )
        pooled = jnp.mean(encoder(x, train=train)[-1], axis=(1, 2))
        outputs = [
            nn.Dense(width, name=name, **self.inits(name))(pooled)
            for name, width in self.output_layers
        ]
        return jnp.concatenate(outputs, axis=-1)

    def inits(self, layer: str) -> dict:
        """The initializers of output layer ``layer`` under ``init_scheme``."""
        if self.init_scheme == "flax":
            return {}
        if layer == "mixture_logits":
            return torch_default_init(self.filters[-1])
        return dict(kernel_init=HE_NORMAL, bias_init=nn.initializers.normal(1.0))


class Head(nn.Module):
    """The "Fcomb" head: z tiled over H×W, concatenated with the U-Net features, 1×1 convs.

    `depth` 1×1 layers in all, ReLU between them, the last giving `num_classes` logits.
    The first layer on [features ⊕ z] is computed as W_f·features + W_z·z, which is the
    same map; `project` applies the per-image part once so that each sample of z only costs
    `combine`. Under ``init_scheme`` 'authors' the joint first kernel [W_f; W_z] is one orthogonal
    matrix (``latent_dim`` is the size of z).
    """

    features: int
    depth: int
    num_classes: int
    latent_dim: int = 0
    norm: str = "paper"
    init_scheme: str = "flax"

    def setup(self):
        if self.depth < 1:
            raise ValueError(f"head depth must be >= 1, got {self.depth}.")
        width = self.features if self.depth > 1 else self.num_classes
        first_features, first_latent = self.first_layer_inits(width)
        self.feature_projection = nn.Dense(width, name="feature_projection", **first_features)
        self.latent_projection = nn.Dense(
            width, use_bias=False, name="latent_projection", **first_latent
        )
        inits = dict(kernel_init=nn.initializers.orthogonal(), bias_init=SMALL_BIAS)
        self.layers = [
            nn.Dense(
                self.features if i < self.depth - 2 else self.num_classes,
                **(inits if self.init_scheme == "authors" else {}),
            )
            for i in range(self.depth - 1)
        ]
        hidden = self.depth - 2 if self.norm == "authors" else 0
        self.norms = [batch_norm() for _ in range(hidden)]

    def first_layer_inits(self, width: int) -> tuple[dict, dict]:
        """Initializers of the first layer's two parts: slices of one orthogonal
        `[features + latent_dim, width]` matrix under ``init_scheme`` 'authors'."""
        if self.init_scheme == "flax":
            return {}, {}
        shared = self.make_rng("params") if self.is_initializing() else None
        rows = self.features + self.latent_dim

        def part(start: int, stop: int):
            def init(key, shape, dtype=jnp.float32):  # Flax also calls it to check shapes.
                key = key if shared is None else shared
                return nn.initializers.orthogonal()(key, (rows, width), dtype)[start:stop]

            return init

        return (
            dict(kernel_init=part(0, self.features), bias_init=SMALL_BIAS),
            dict(kernel_init=part(self.features, rows)),
        )

    def project(self, features: jax.Array) -> jax.Array:
        """`[B, H, W, F] → [B, H, W, width]`: the per-image part of the first layer."""
        return self.feature_projection(features)

    def combine(self, projected: jax.Array, z: jax.Array, *, train: bool = False) -> jax.Array:
        """Logits `[B, H, W, num_classes]` from projected features and z `[B, d]`."""
        x = projected + self.latent_projection(z)[:, None, None, :]
        for i, layer in enumerate(self.layers):
            x = nn.relu(x)
            if i < len(self.norms):
                x = self.norms[i](x, use_running_average=not train)
            x = layer(x)
        return x

    def __call__(self, features: jax.Array, z: jax.Array, *, train: bool = False) -> jax.Array:
        return self.combine(self.project(features), z, train=train)
