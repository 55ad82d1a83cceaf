"""Distribution metrics for stochastic segmentation (Bhat et al. 2022, §4.3).

All metrics are per image: inputs carry a leading batch axis ``B`` and return ``[B]`` arrays.
Masks are class labels ``0..K-1`` (``num_classes=K``, default 2); binary masks (``K = 2``) may be
any dtype, any nonzero value counting as foreground. Every metric takes an optional
``annotation_valid`` bool [B, A]: images with fewer raters than A carry padded annotations, and
only the valid ones are used (the result equals that on the unpadded annotations).

* Generalized energy distance (GED, Kohl et al. 2018, eq. 1 of the paper) with
  ``d(x, y) = 1 - IoU(x, y)``. Two empty masks have IoU 1 (distance 0); an empty and a
  non-empty mask IoU 0. With ``K > 2`` classes the IoU is averaged over the foreground classes
  1..K-1 present in either mask (Kohl et al. 2018's Cityscapes convention); two masks with no
  foreground class have distance 0. Expectations are means over *all* pairs, self-pairs
  included (the convention of PHiSeg's and the paper's code); ``unbiased=True`` drops the
  self-pairs from the two diversity terms. Pairwise intersections are int8 x int8 -> int32
  batched matrix products of class indicators (exact), one per foreground class.
* Per-class IoU (``K > 2``): :func:`per_class_iou`.
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


# A map whose std is below this fraction of its largest magnitude is constant (the rounding of
# its float32 mean, not a signal): its correlation is undefined.
CONSTANT_RTOL = 1e-5


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


def _class_rows(masks: jax.Array, label: int, num_classes: int) -> jax.Array:
    """[B, N, H, W] masks -> [B, N, H*W] int8 indicator of class ``label`` (binary: != 0)."""
    hit = masks != 0 if num_classes == 2 else masks == label
    return hit.astype(jnp.int8).reshape(masks.shape[0], masks.shape[1], -1)


def _overlaps(x: jax.Array, y: jax.Array) -> jax.Array:
    """Intersection counts of int8 rows: [B, N, P] x [B, M, P] -> [B, N, M] int32."""
    return lax.dot_general(x, y, _PIXEL_DOT, preferred_element_type=jnp.int32)


def _class_ious(x: jax.Array, y: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """Per foreground class IoUs of masks x [B,N,H,W] and y [B,M,H,W]: (iou, present), each
    [B, K-1, N, M]; ``present`` is whether the class is in either mask (else the IoU is 1)."""
    ious, present = [], []
    for label in range(1, num_classes):
        xc, yc = _class_rows(x, label, num_classes), _class_rows(y, label, num_classes)
        intersection = _overlaps(xc, yc)
        size_x, size_y = (jnp.sum(r, axis=-1, dtype=jnp.int32) for r in (xc, yc))
        union = size_x[:, :, None] + size_y[:, None, :] - intersection
        ratio = intersection.astype(jnp.float32) / jnp.maximum(union, 1).astype(jnp.float32)
        ious.append(jnp.where(union == 0, 1.0, ratio))
        present.append(union > 0)
    return jnp.stack(ious, axis=1), jnp.stack(present, axis=1)


def _mean_class_iou(x: jax.Array, y: jax.Array, num_classes: int) -> jax.Array:
    """IoU averaged over the classes present in either mask [B, N, M]; 1 if none is."""
    iou, present = _class_ious(x, y, num_classes)
    if num_classes == 2:  # One class: its IoU is the mean (and 1 where it is absent).
        return iou[:, 0]
    count = jnp.sum(present, axis=1)
    total = jnp.sum(jnp.where(present, iou, 0.0), axis=1)
    return jnp.where(count == 0, 1.0, total / jnp.maximum(count, 1).astype(jnp.float32))


def _invalid_to_nan(iou: jax.Array, row_valid, col_valid) -> jax.Array:
    """``iou`` [B, N, M] with NaN in the rows / columns that are not valid (None: all are)."""
    keep = jnp.ones(iou.shape, bool)
    if row_valid is not None:
        keep &= row_valid[:, :, None]
    if col_valid is not None:
        keep &= col_valid[:, None, :]
    return jnp.where(keep, iou, jnp.nan)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def pairwise_iou(
    samples: jax.Array,
    annotations: jax.Array,
    *,
    annotation_valid: jax.Array | None = None,
    num_classes: int = 2,
) -> PairwiseIoU:
    """All pairwise IoUs of samples [B,S,H,W] and annotations [B,A,H,W] (class labels).

    Binary (``num_classes=2``): the foreground (any nonzero value) IoU. ``K > 2``: the IoU
    averaged over the foreground classes 1..K-1 present in either mask. Entries of annotations
    that are not valid (``annotation_valid`` bool [B, A] False) are NaN.
    """
    _check_pair(samples, annotations)
    valid = None if annotation_valid is None else jnp.asarray(annotation_valid, bool)
    sy = _mean_class_iou(samples, annotations, num_classes)
    yy = _mean_class_iou(annotations, annotations, num_classes)
    return PairwiseIoU(
        _mean_class_iou(samples, samples, num_classes),
        _invalid_to_nan(sy, None, valid),
        _invalid_to_nan(yy, valid, valid),
    )


def _valid_weights(annotation_valid, shape: tuple[int, int] | None) -> jax.Array:
    """float32 [B, A] weights, 1 for valid annotations (all, of ``shape``, when None)."""
    if annotation_valid is None:
        return jnp.ones(shape, jnp.float32)
    return jnp.asarray(annotation_valid, bool).astype(jnp.float32)


def _mean_distance(
    iou: jax.Array,
    rows: jax.Array | None = None,
    cols: jax.Array | None = None,
    *,
    exclude_diagonal: bool = False,
) -> jax.Array:
    """Mean of 1 - IoU [B, N, M] over the pairs of valid rows and columns -> [B].

    ``rows`` [B, N] and ``cols`` [B, M] are 0 / 1 weights (None: all valid, the plain mean);
    NaN entries of invalid pairs are ignored. The diagonal of a self-IoU matrix is 1 (distance
    0), so leaving it out only changes the normaliser from n * m to n * (m - 1).
    """
    if rows is None and cols is None:
        n, m = iou.shape[-2:]
        pairs = n * (m - 1) if exclude_diagonal else n * m
        return jnp.sum(1.0 - iou, axis=(-2, -1)) / pairs
    rows = jnp.ones(iou.shape[:2], jnp.float32) if rows is None else rows
    cols = jnp.ones((iou.shape[0], iou.shape[2]), jnp.float32) if cols is None else cols
    weight = rows[:, :, None] * cols[:, None, :]
    total = jnp.sum(jnp.where(weight > 0, 1.0 - iou, 0.0), axis=(-2, -1))
    pairs = rows.sum(axis=-1) * (cols.sum(axis=-1) - (1.0 if exclude_diagonal else 0.0))
    return total / pairs


def ged_from_iou(
    ious: PairwiseIoU, *, annotation_valid: jax.Array | None = None, unbiased: bool = False
) -> GEDResult:
    """GED and its terms [B] from precomputed IoU matrices (see :func:`pairwise_iou`), using
    only the valid annotations (``annotation_valid`` bool [B, A]; None: all). An image with no
    valid annotation (or, unbiased, fewer than 2) gets NaN."""
    num_samples, num_annotations = ious.sample_annotation.shape[1:]
    if unbiased and min(num_samples, num_annotations) < 2:
        raise ValueError(
            "unbiased=True needs at least 2 samples and 2 annotations, got "
            f"S={num_samples}, A={num_annotations}"
        )
    valid = None if annotation_valid is None else _valid_weights(annotation_valid, None)
    cross = _mean_distance(ious.sample_annotation, None, valid)
    sample_div = _mean_distance(ious.sample_sample, exclude_diagonal=unbiased)
    annotation_div = _mean_distance(
        ious.annotation_annotation, valid, valid, exclude_diagonal=unbiased
    )
    return GEDResult(2.0 * cross - sample_div - annotation_div, cross, sample_div, annotation_div)


@functools.partial(jax.jit, static_argnames=("num_classes", "unbiased"))
def generalized_energy_distance(
    samples: jax.Array,
    annotations: jax.Array,
    *,
    annotation_valid: jax.Array | None = None,
    num_classes: int = 2,
    unbiased: bool = False,
) -> GEDResult:
    """Per-image GED of samples [B,S,H,W] against annotations [B,A,H,W] -> GEDResult of [B].

    ``d = 1 - IoU`` with the IoU of :func:`pairwise_iou` (for ``K > 2`` averaged over the
    classes present in either mask); only annotations with ``annotation_valid`` [B, A] count.
    """
    ious = pairwise_iou(
        samples, annotations, annotation_valid=annotation_valid, num_classes=num_classes
    )
    return ged_from_iou(ious, annotation_valid=annotation_valid, unbiased=unbiased)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def per_class_iou(
    samples: jax.Array,
    annotations: jax.Array,
    *,
    annotation_valid: jax.Array | None = None,
    num_classes: int = 2,
) -> jax.Array:
    """Mean IoU of class c over all (sample, valid annotation) pairs, float32 [B, K-1] for the
    foreground classes c = 1..K-1; a pair in which c is in neither mask has IoU 1."""
    _check_pair(samples, annotations)
    iou, _ = _class_ious(samples, annotations, num_classes)  # [B, K-1, S, A]
    valid = _valid_weights(annotation_valid, annotations.shape[:2])[:, None, None, :]
    return jnp.sum(iou * valid, axis=(2, 3)) / (samples.shape[1] * valid.sum(axis=(2, 3)))


def hungarian_matched_iou(
    sample_annotation_iou: np.ndarray, *, annotation_valid: np.ndarray | None = None
) -> np.ndarray:
    """Hungarian-matched IoU [B] from IoU matrices [B, S, A] (host-side, scipy).

    Convention (Kohl et al. 2019, HPU-Net; Monteiro et al. 2020, SSN): the matching needs
    sets of equal size, so the annotations are replicated to the number of samples (LIDC:
    16 samples vs 4 annotations -> each annotation appears 4 times). In general both sets
    are replicated to ``lcm(S, A)`` elements, which reduces to that rule when A divides S.
    The result is the mean IoU over the optimal (maximum total IoU) one-to-one matching.
    Only the valid annotations (``annotation_valid`` bool [B, A]; None: all) take part, so A
    is each image's own count; an image without a valid annotation gets NaN.
    """
    iou = np.asarray(sample_annotation_iou, dtype=np.float64)
    if iou.ndim != 3 or 0 in iou.shape[1:]:
        raise ValueError(f"expected IoU matrices [B, S, A] with S, A >= 1, got shape {iou.shape}")
    if annotation_valid is None:
        annotation_valid = np.ones((iou.shape[0], iou.shape[2]), bool)
    result = np.full(iou.shape[0], np.nan)
    for b, (matrix, valid) in enumerate(zip(iou, np.asarray(annotation_valid, bool), strict=True)):
        matrix = matrix[:, valid]
        if matrix.size:
            size = math.lcm(*matrix.shape)
            reps_s, reps_a = size // matrix.shape[0], size // matrix.shape[1]
            square = np.tile(np.repeat(matrix, reps_s, axis=0), (1, reps_a))
            rows, cols = linear_sum_assignment(square, maximize=True)
            result[b] = square[rows, cols].mean()
    return result


def _pearson(a: jax.Array, b: jax.Array) -> jax.Array:
    """Pearson correlation over the last axis (population std, as np.std); NaN if a map is
    constant, i.e. its std is within float32 rounding (``CONSTANT_RTOL``) of its magnitude."""

    def centered(x):
        scale = CONSTANT_RTOL * jnp.max(jnp.abs(x), axis=-1)
        x = x - x.mean(axis=-1, keepdims=True)
        std = jnp.sqrt(jnp.mean(jnp.square(x), axis=-1))
        return x, jnp.where(std > scale, std, jnp.nan)

    (a, std_a), (b, std_b) = centered(a), centered(b)
    return jnp.mean(a * b, axis=-1) / (std_a * std_b)


def _valid_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of values [B, A] over the valid (0 / 1 weights [B, A]) entries -> [B]."""
    return jnp.sum(jnp.where(valid > 0, values, 0.0), axis=1) / valid.sum(axis=1)


def _binary_ce_maps(probs: jax.Array, annotations: jax.Array, log_eps: float):
    """E_ss [B, H, W] and E_sy [B, A, H, W] for foreground probabilities [B, S, H, W]."""
    targets = (annotations != 0).astype(jnp.float32)
    # log(x + eps) as logaddexp(log x, log eps): XLA would fold (1 - p) + eps into 1 - p.
    mean_log_fg = jnp.mean(jnp.logaddexp(jnp.log(probs), log_eps), axis=1)  # [B, H, W]
    mean_log_bg = jnp.mean(jnp.logaddexp(jnp.log1p(-probs), log_eps), axis=1)
    mean_sample = jnp.mean(probs, axis=1)
    # CE is linear in the target, so the mean over samples moves onto the log terms.
    e_ss = -(mean_sample * mean_log_fg + (1.0 - mean_sample) * mean_log_bg)
    e_sy = -(targets * mean_log_fg[:, None] + (1.0 - targets) * mean_log_bg[:, None])
    return e_ss, e_sy


def _class_ce_maps(probs: jax.Array, annotations: jax.Array, log_eps: float):
    """E_ss [B, H, W] and E_sy [B, A, H, W] for class probabilities [B, S, H, W, K]."""
    mean_log = jnp.mean(jnp.logaddexp(jnp.log(probs), log_eps), axis=1)  # [B, H, W, K]
    e_ss = -jnp.sum(jnp.mean(probs, axis=1) * mean_log, axis=-1)
    labels = annotations.astype(jnp.int32)[..., None]  # [B, A, H, W, 1]
    e_sy = -jnp.take_along_axis(mean_log[:, None], labels, axis=-1)[..., 0]
    return e_ss, e_sy


@functools.partial(jax.jit, static_argnames=("num_classes", "eps"))
def variance_ncc(
    sample_probs: jax.Array,
    annotations: jax.Array,
    *,
    annotation_valid: jax.Array | None = None,
    num_classes: int = 2,
    eps: float = 1e-8,
) -> jax.Array:
    """PHiSeg's NCC (``variance_ncc_dist``) per image -> [B].

    Binary (``num_classes=2``): ``sample_probs`` [B,S,H,W] are foreground probabilities of the
    two-class softmax (binary samples are valid too); ``annotations`` [B,A,H,W] are binary.
    ``K > 2``: ``sample_probs`` [B,S,H,W,K] class probabilities, or [B,S,H,W] hard labels
    (one-hot); ``annotations`` labels. With the pixel-wise cross-entropy ``CE(q, p) = -sum_k
    q_k log(p_k + eps)`` of a prediction ``p`` against a target ``q`` and the mean sample
    ``s_bar``:

    * ``E_ss = mean_s CE(s_bar, s)``            -- the model's own expected CE map,
    * ``E_sy[a] = mean_s CE(y_a, s)``           -- expected CE against annotation a,
    * ``NCC = mean_a corr(E_ss, E_sy[a])``      -- Pearson correlation over pixels, over the
      valid annotations (``annotation_valid`` bool [B, A]; None: all).

    This is PHiSeg's definition (for two classes with the class sum written out). The NCC is
    undefined (NaN) where a map is constant, e.g. when all samples are identical hard masks.
    """
    probs = sample_probs.astype(jnp.float32)
    if num_classes > 2 and probs.ndim == 4:
        probs = jax.nn.one_hot(sample_probs, num_classes, dtype=jnp.float32)
    _check_pair(probs[..., 0] if probs.ndim == 5 else probs, annotations)
    ce_maps = _binary_ce_maps if num_classes == 2 else _class_ce_maps
    e_ss, e_sy = ce_maps(probs, annotations, math.log(eps))
    batch, num_annotations = annotations.shape[:2]
    flat_ss = e_ss.reshape(batch, 1, -1)
    flat_sy = e_sy.reshape(batch, num_annotations, -1)
    valid = _valid_weights(annotation_valid, (batch, num_annotations))
    return _valid_mean(_pearson(flat_ss, flat_sy), valid)


def _class_means(masks: jax.Array, weights: jax.Array, num_classes: int) -> jax.Array:
    """Weighted mean over axis 1 of the class indicators: [B, N, H, W] -> [B, K-1, H, W]."""
    weights = weights[:, :, None, None]
    means = [
        jnp.sum((masks != 0 if num_classes == 2 else masks == c) * weights, axis=1)
        for c in range(1, num_classes)
    ]
    return jnp.stack(means, axis=1) / weights.sum(axis=1)[:, None]


@functools.partial(jax.jit, static_argnames=("num_classes",))
def mean_mask_dice(
    samples: jax.Array,
    annotations: jax.Array,
    *,
    annotation_valid: jax.Array | None = None,
    num_classes: int = 2,
) -> jax.Array:
    """Soft Dice of the pixel-wise mean sample vs the mean annotation -> [B].

    Per foreground class c: ``p = mean_s 1[s = c]``, ``q = mean_a 1[y_a = c]`` over the valid
    annotations, Dice ``= 2 sum(p q) / (sum p + sum q)``; binary masks use ``!= 0``. The result
    is the mean over the classes present in some sample or annotation. When none is (no
    foreground anywhere) the two agree perfectly and the Dice is 1, as the IoU of the GED.
    """
    _check_pair(samples, annotations)
    every = jnp.ones(samples.shape[:2], jnp.float32)
    p = _class_means(samples, every, num_classes)
    q = _class_means(
        annotations, _valid_weights(annotation_valid, annotations.shape[:2]), num_classes
    )
    overlap = jnp.sum(p * q, axis=(2, 3))
    total = jnp.sum(p, axis=(2, 3)) + jnp.sum(q, axis=(2, 3))  # [B, K-1]
    dice = 2.0 * overlap / jnp.where(total == 0, 1.0, total)
    count = jnp.sum(total > 0, axis=1)
    mean = jnp.sum(jnp.where(total > 0, dice, 0.0), axis=1) / jnp.maximum(count, 1)
    return jnp.where(count == 0, 1.0, mean)


def evaluate_images(
    samples: jax.Array,
    annotations: jax.Array,
    sample_probs: jax.Array | None = None,
    *,
    annotation_valid: jax.Array | None = None,
    num_classes: int = 2,
    unbiased: bool = False,
) -> dict[str, np.ndarray]:
    """All per-image metrics [B] as numpy, keyed like the columns of ``per_image.csv``.

    ``samples`` [B,S,H,W] and ``annotations`` [B,A,H,W] class labels (binary: nonzero is
    foreground), ``sample_probs`` the probabilities the samples came from (for the NCC:
    [B,S,H,W] foreground probabilities when binary, [B,S,H,W,K] otherwise; the samples are used
    when omitted), ``annotation_valid`` bool [B, A] the annotations that count (None: all).
    With ``K > 2`` the columns ``iou_class{c}`` (c = 1..K-1, see :func:`per_class_iou`) follow.
    """
    kwargs = {"annotation_valid": annotation_valid, "num_classes": num_classes}
    ious = pairwise_iou(samples, annotations, **kwargs)
    ged = ged_from_iou(ious, annotation_valid=annotation_valid, unbiased=unbiased)
    probs = samples if sample_probs is None else sample_probs
    metrics = {name: np.asarray(value) for name, value in ged._asdict().items()}
    metrics["hungarian_iou"] = hungarian_matched_iou(
        np.asarray(ious.sample_annotation), annotation_valid=annotation_valid
    )
    metrics["ncc"] = np.asarray(variance_ncc(probs, annotations, **kwargs))
    metrics["dice"] = np.asarray(mean_mask_dice(samples, annotations, **kwargs))
    if num_classes > 2:
        per_class = np.asarray(per_class_iou(samples, annotations, **kwargs))
        metrics.update({f"iou_class{c}": per_class[:, c - 1] for c in range(1, num_classes)})
    return metrics
