"""Distribution metrics for stochastic segmentation (Bhat et al. 2022, §4.3).

All metrics are per image: inputs carry a leading batch axis ``B`` and return ``[B]`` arrays.
Masks are binary; any nonzero value (bool, int or float) counts as foreground.

* Generalized energy distance (GED, Kohl et al. 2018, eq. 1 of the paper) with
  ``d(x, y) = 1 - IoU(x, y)``. Two empty masks have IoU 1 (distance 0); an empty and a
  non-empty mask IoU 0. Expectations are means over *all* pairs, self-pairs included (the
  convention of PHiSeg's and the paper's code); ``unbiased=True`` drops the self-pairs from
  the two diversity terms. Pairwise intersections are int8 x int8 -> int32 batched matrix
  products (exact for 0/1 masks), the mask sizes are the Gram diagonals.
* Hungarian-matched IoU (Kohl et al. 2019; Monteiro et al. 2020): optimal one-to-one matching
  of samples to annotations; see :func:`hungarian_matched_iou` for the ``S != A`` convention.
* PHiSeg's NCC (Baumgartner et al. 2019, ``variance_ncc_dist``); see :func:`variance_ncc`.
* Soft Dice between the mean prediction and the mean annotation; see :func:`mean_mask_dice`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy.optimize import linear_sum_assignment

# Contract the pixel axis, batch over images: [B, N, P] x [B, M, P] -> [B, N, M].
_PIXEL_DOT = (((2,), (2,)), ((0,), (0,)))


class PairwiseIoU(NamedTuple):
    """IoU matrices of one image batch (float32)."""

    sample_sample: jax.Array  # [B, S, S]
    sample_annotation: jax.Array  # [B, S, A]
    annotation_annotation: jax.Array  # [B, A, A]


class GEDResult(NamedTuple):
    """Per-image GED and its terms, each ``[B]`` float32."""

    ged: jax.Array  # 2 E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')]
    sample_annotation_distance: jax.Array  # E[d(S,Y)]
    sample_diversity: jax.Array  # E[d(S,S')]
    annotation_diversity: jax.Array  # E[d(Y,Y')]


def _check_pair(samples: jax.Array, annotations: jax.Array) -> None:
    """Raises ValueError unless samples [B,S,H,W] and annotations [B,A,H,W] agree."""
    if samples.ndim != 4 or annotations.ndim != 4:
        raise ValueError(
            "expected samples [B, S, H, W] and annotations [B, A, H, W], got shapes "
            f"{tuple(samples.shape)} and {tuple(annotations.shape)}"
        )
    if samples.shape[0] != annotations.shape[0] or samples.shape[2:] != annotations.shape[2:]:
        raise ValueError(
            "samples and annotations must share batch and spatial dims, got shapes "
            f"{tuple(samples.shape)} and {tuple(annotations.shape)}"
        )
    if samples.shape[1] == 0 or annotations.shape[1] == 0:
        raise ValueError(
            "need at least one sample and one annotation, got shapes "
            f"{tuple(samples.shape)} and {tuple(annotations.shape)}"
        )


def _binary_rows(masks: jax.Array) -> jax.Array:
    """[B, N, H, W] masks -> [B, N, H*W] int8 in {0, 1}."""
    return (masks != 0).astype(jnp.int8).reshape(masks.shape[0], masks.shape[1], -1)


def _overlaps(x: jax.Array, y: jax.Array) -> jax.Array:
    """Intersection counts of int8 rows: [B, N, P] x [B, M, P] -> [B, N, M] int32."""
    return lax.dot_general(x, y, _PIXEL_DOT, preferred_element_type=jnp.int32)


def _iou(intersection: jax.Array, size_x: jax.Array, size_y: jax.Array) -> jax.Array:
    """IoU from int32 counts [B, N, M], [B, N], [B, M]; empty vs empty is 1."""
    union = size_x[:, :, None] + size_y[:, None, :] - intersection
    ratio = intersection.astype(jnp.float32) / jnp.maximum(union, 1).astype(jnp.float32)
    return jnp.where(union == 0, 1.0, ratio)


@jax.jit
def pairwise_iou(samples: jax.Array, annotations: jax.Array) -> PairwiseIoU:
    """All pairwise foreground IoUs of samples [B,S,H,W] and annotations [B,A,H,W]."""
    _check_pair(samples, annotations)
    s, y = _binary_rows(samples), _binary_rows(annotations)
    ss, sy, yy = _overlaps(s, s), _overlaps(s, y), _overlaps(y, y)
    size_s = jnp.diagonal(ss, axis1=1, axis2=2)
    size_y = jnp.diagonal(yy, axis1=1, axis2=2)
    return PairwiseIoU(_iou(ss, size_s, size_s), _iou(sy, size_s, size_y), _iou(yy, size_y, size_y))


def _mean_distance(iou: jax.Array, *, exclude_diagonal: bool = False) -> jax.Array:
    """Mean of 1 - IoU over the last two axes [B, N, M] -> [B].

    The diagonal of a self-IoU matrix is 1 (distance 0), so leaving it out only changes the
    normaliser from N*N to N*(N-1).
    """
    n, m = iou.shape[-2:]
    pairs = n * (m - 1) if exclude_diagonal else n * m
    return jnp.sum(1.0 - iou, axis=(-2, -1)) / pairs


def ged_from_iou(ious: PairwiseIoU, *, unbiased: bool = False) -> GEDResult:
    """GED and its terms [B] from precomputed IoU matrices (see :func:`pairwise_iou`)."""
    num_samples, num_annotations = ious.sample_annotation.shape[-2:]
    if unbiased and min(num_samples, num_annotations) < 2:
        raise ValueError(
            "unbiased=True needs at least 2 samples and 2 annotations, got "
            f"S={num_samples}, A={num_annotations}"
        )
    cross = _mean_distance(ious.sample_annotation)
    sample_div = _mean_distance(ious.sample_sample, exclude_diagonal=unbiased)
    annotation_div = _mean_distance(ious.annotation_annotation, exclude_diagonal=unbiased)
    return GEDResult(2.0 * cross - sample_div - annotation_div, cross, sample_div, annotation_div)


@functools.partial(jax.jit, static_argnames=("unbiased",))
def generalized_energy_distance(
    samples: jax.Array, annotations: jax.Array, *, unbiased: bool = False
) -> GEDResult:
    """Per-image GED of samples [B,S,H,W] against annotations [B,A,H,W] -> GEDResult of [B]."""
    return ged_from_iou(pairwise_iou(samples, annotations), unbiased=unbiased)


def hungarian_matched_iou(sample_annotation_iou: np.ndarray) -> np.ndarray:
    """Hungarian-matched IoU [B] from IoU matrices [B, S, A] (host-side, scipy).

    Convention (Kohl et al. 2019, HPU-Net; Monteiro et al. 2020, SSN): the matching needs
    sets of equal size, so the annotations are replicated to the number of samples (LIDC:
    16 samples vs 4 annotations -> each annotation appears 4 times). In general both sets
    are replicated to ``lcm(S, A)`` elements, which reduces to that rule when A divides S.
    The result is the mean IoU over the optimal (maximum total IoU) one-to-one matching.
    """
    iou = np.asarray(sample_annotation_iou, dtype=np.float64)
    if iou.ndim != 3 or 0 in iou.shape[1:]:
        raise ValueError(f"expected IoU matrices [B, S, A] with S, A >= 1, got shape {iou.shape}")
    num_samples, num_annotations = iou.shape[1:]
    size = math.lcm(num_samples, num_annotations)
    reps_s, reps_a = size // num_samples, size // num_annotations
    result = np.empty(iou.shape[0])
    for b, matrix in enumerate(iou):
        square = np.tile(np.repeat(matrix, reps_s, axis=0), (1, reps_a))
        rows, cols = linear_sum_assignment(square, maximize=True)
        result[b] = square[rows, cols].mean()
    return result


def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pearson correlation over the last axis (population std, as np.std); NaN if constant."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    return jnp.mean(a * b, axis=-1) / (a.std(axis=-1) * b.std(axis=-1))


@functools.partial(jax.jit, static_argnames=("eps",))
def variance_ncc(
    sample_probs: jax.Array, annotations: jax.Array, *, eps: float = 1e-8
) -> jax.Array:
    """PHiSeg's NCC (``variance_ncc_dist``) per image -> [B].

    ``sample_probs`` [B,S,H,W] are foreground probabilities of the two-class softmax (binary
    samples are valid too); ``annotations`` [B,A,H,W] are binary. With the pixel-wise
    cross-entropy ``CE(q, p) = -(q log(p + eps) + (1 - q) log(1 - p + eps))`` of a
    prediction ``p`` against a target ``q`` and the mean sample ``s_bar``:

    * ``E_ss = mean_s CE(s_bar, s)``            -- the model's own expected CE map,
    * ``E_sy[a] = mean_s CE(y_a, s)``           -- expected CE against annotation a,
    * ``NCC = mean_a corr(E_ss, E_sy[a])``      -- Pearson correlation over pixels.

    This is PHiSeg's definition with the class sum written out for two classes. The NCC is
    undefined (NaN) where a map is constant, e.g. when all samples are identical hard masks.
    """
    _check_pair(sample_probs, annotations)
    probs = sample_probs.astype(jnp.float32)
    targets = (annotations != 0).astype(jnp.float32)
    # log(x + eps) as logaddexp(log x, log eps): XLA would fold (1 - p) + eps into 1 - p.
    log_eps = math.log(eps)
    mean_log_fg = jnp.mean(jnp.logaddexp(jnp.log(probs), log_eps), axis=1)  # [B, H, W]
    mean_log_bg = jnp.mean(jnp.logaddexp(jnp.log1p(-probs), log_eps), axis=1)
    mean_sample = jnp.mean(probs, axis=1)
    # CE is linear in the target, so the mean over samples moves onto the log terms.
    e_ss = -(mean_sample * mean_log_fg + (1.0 - mean_sample) * mean_log_bg)
    e_sy = -(targets * mean_log_fg[:, None] + (1.0 - targets) * mean_log_bg[:, None])
    batch, num_annotations = targets.shape[:2]
    flat_ss = e_ss.reshape(batch, 1, -1)
    flat_sy = e_sy.reshape(batch, num_annotations, -1)
    return jnp.mean(_pearson(flat_ss, flat_sy), axis=1)


@jax.jit
def mean_mask_dice(samples: jax.Array, annotations: jax.Array) -> jax.Array:
    """Soft Dice of the pixel-wise mean sample vs the mean annotation -> [B].

    ``p = mean_s 1[s != 0]``, ``q = mean_a 1[y_a != 0]``, Dice ``= 2 sum(p q) / (sum p + sum q)``.
    When both means are empty everywhere (no sample and no annotation has foreground) the two
    agree perfectly and the Dice is 1, matching the IoU convention of the GED.
    """
    _check_pair(samples, annotations)
    p = jnp.mean((samples != 0).astype(jnp.float32), axis=1)
    q = jnp.mean((annotations != 0).astype(jnp.float32), axis=1)
    overlap = jnp.sum(p * q, axis=(1, 2))
    total = jnp.sum(p, axis=(1, 2)) + jnp.sum(q, axis=(1, 2))
    return jnp.where(total == 0, 1.0, 2.0 * overlap / jnp.where(total == 0, 1.0, total))


def evaluate_images(
    samples: jax.Array,
    annotations: jax.Array,
    sample_probs: jax.Array | None = None,
    *,
    unbiased: bool = False,
) -> dict[str, np.ndarray]:
    """All per-image metrics [B] as numpy, keyed like the columns of ``per_image.csv``.

    ``samples`` [B,S,H,W] binary, ``annotations`` [B,A,H,W] binary, ``sample_probs``
    [B,S,H,W] the foreground probabilities the samples came from (for the NCC; the binary
    samples are used when omitted).
    """
    ious = pairwise_iou(samples, annotations)
    ged = ged_from_iou(ious, unbiased=unbiased)
    probs = samples if sample_probs is None else sample_probs
    metrics = {name: np.asarray(value) for name, value in ged._asdict().items()}
    metrics["hungarian_iou"] = hungarian_matched_iou(np.asarray(ious.sample_annotation))
    metrics["ncc"] = np.asarray(variance_ncc(probs, annotations))
    metrics["dice"] = np.asarray(mean_mask_dice(samples, annotations))
    return metrics
