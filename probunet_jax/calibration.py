"""Pixel calibration and the Collective-Insight (CI) score of a model's samples, any data set.

Per-image columns ``[B]`` (float64) of :func:`calibration_metrics`, for samples ``s_1..s_S``
and the valid raters' masks ``y_1..y_A`` of an image:

* ``rater_ece``: expected calibration error of the mean prediction ``p`` against the raters'
  mean ``q``, both ``[H, W]`` (see :func:`mean_prediction`, :func:`rater_mean`): the pixels
  are put in ``NUM_BINS`` equal-width bins of ``p`` (``[k/K, (k+1)/K)``, the last closed) and
  ``ECE = sum_k (n_k / N) |mean_k p - mean_k q|``, i.e. ``sum_k |sum_k p - sum_k q| / N``.
  The target is a probability, not a 0/1 outcome: a perfect model has ``p = q``, ECE 0.
* ``rater_brier``: ``mean over pixels (p - q)^2``, the squared error to the target
  probability (0 for ``p = q``; the Brier score against a random rater's 0/1 mask is this plus
  the irreducible ``mean q (1 - q)``).
* The CI score of Rahman et al. 2023 ("Ambiguous medical image segmentation using diffusion
  models", CVPR) and its three parts. The authors did not publish code for it (their GitHub
  issue #2), so the conventions below are ours; Dice is ``2 |x & y| / (|x| + |y|)`` with
  Dice 1 for two empty masks (the IoU convention of :mod:`probunet_jax.metrics`):

  - ``combined_sensitivity``: ``TP / (TP + FN)`` of the union of the samples against the union
    of the raters' masks; 1 where the raters' union is empty (nothing to find).
  - ``max_dice``: for each rater the Dice of its best-matching sample, averaged over raters.
  - ``diversity_agreement``: ``1 - (|max d_Y - max d_S| + |min d_Y - min d_S|) / 2`` where
    ``d_Y`` are the pairwise ``1 - Dice`` distances between distinct raters and ``d_S`` those
    between distinct samples (the paper's "variance" of a set; ours is a distance in [0, 1]);
    the spread of a set with fewer than 2 masks is 0.
  - ``ci_score``: the harmonic mean of the three (0 if any of them is 0).

Padded raters: ``annotation_valid`` ``[B, A]`` bool marks the real ones; the others are
ignored everywhere (an image without a valid rater gets NaN).

Reliability diagrams: :func:`reliability_bins` gives per-image bin sums (counts, summed
prediction, summed target) that add up over images and batches; :func:`reliability_curve`
turns the total into the curve and the data-set ECE. :mod:`probunet_jax.truth` uses the same
binning against the true marginal of the synthetic set.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from probunet_jax import metrics

NUM_BINS = 10


class ReliabilityBins(NamedTuple):
    """Per-bin sums, each ``[..., K]`` float64; sums of these are again bins."""

    count: np.ndarray  # number of pixels (or images) whose prediction falls in the bin
    predicted: np.ndarray  # sum of their predicted probabilities
    observed: np.ndarray  # sum of their target probabilities


class ReliabilityCurve(NamedTuple):
    """A reliability diagram: bin means ``[K]`` (NaN for empty bins) and the ECE."""

    predicted: np.ndarray  # mean predicted probability per bin
    observed: np.ndarray  # mean target probability per bin
    count: np.ndarray  # number of pixels (or images) per bin
    ece: float  # sum_k |predicted_k - observed_k| count_k / sum_k count_k


class PixelCalibration(NamedTuple):
    """Per-image pixel calibration."""

    ece: np.ndarray  # [B]
    brier: np.ndarray  # [B]
    bins: ReliabilityBins  # each [B, K]


class CalibrationMetrics(NamedTuple):
    """:func:`calibration_metrics`: per-image columns and the per-image pixel bins."""

    columns: dict[str, np.ndarray]  # each [B]
    pixel_bins: ReliabilityBins  # each [B, K]; sum over images for the data-set diagram


# --------------------------------------------------------------------------- binning


def reliability_bins(
    predicted: np.ndarray, observed: np.ndarray, num_bins: int = NUM_BINS
) -> ReliabilityBins:
    """Bin sums per row: ``predicted`` and ``observed`` ``[B, ...]`` -> bins ``[B, K]``.

    Values are binned by ``predicted`` into ``[k/K, (k+1)/K)``, the last bin closed (values
    outside [0, 1] go to the end bins).
    """
    predicted, observed = np.asarray(predicted, np.float64), np.asarray(observed, np.float64)
    if predicted.shape != observed.shape or predicted.ndim < 1 or num_bins < 1:
        raise ValueError(
            f"need predicted and observed of one shape [B, ...] and num_bins >= 1, got shapes "
            f"{predicted.shape} and {observed.shape}, {num_bins=}"
        )
    rows = predicted.shape[0]
    p, q = predicted.reshape(rows, -1), observed.reshape(rows, -1)
    column = np.clip(np.floor(p * num_bins), 0, num_bins - 1).astype(np.int64)
    index = (column + num_bins * np.arange(rows)[:, None]).ravel()

    def total(weights: np.ndarray | None) -> np.ndarray:
        return np.bincount(index, weights, minlength=rows * num_bins).reshape(rows, num_bins)

    return ReliabilityBins(total(None).astype(np.float64), total(p.ravel()), total(q.ravel()))


def expected_calibration_error(bins: ReliabilityBins) -> np.ndarray:
    """ECE ``[...]`` of bins ``[..., K]``; NaN where the bins are empty."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(bins.predicted - bins.observed).sum(-1) / bins.count.sum(-1)


def reliability_curve(bins: ReliabilityBins) -> ReliabilityCurve:
    """The diagram of all bins ``[..., K]`` together (summed over the leading axes)."""
    total = ReliabilityBins(*(np.asarray(b).reshape(-1, b.shape[-1]).sum(0) for b in bins))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = total.predicted / total.count
        mean_observed = total.observed / total.count
    return ReliabilityCurve(
        mean_predicted, mean_observed, total.count, float(expected_calibration_error(total))
    )


def pixel_calibration(
    predicted: np.ndarray, target: np.ndarray, num_bins: int = NUM_BINS
) -> PixelCalibration:
    """ECE, Brier and bins of probability maps ``predicted`` vs ``target``, both ``[B, H, W]``."""
    bins = reliability_bins(predicted, target, num_bins)
    error = np.asarray(predicted, np.float64) - np.asarray(target, np.float64)
    brier = np.mean(error.reshape(error.shape[0], -1) ** 2, axis=1)
    return PixelCalibration(expected_calibration_error(bins), brier, bins)


# --------------------------------------------------------------------------- probability maps


def mean_prediction(sample_masks: np.ndarray, sample_probs: np.ndarray | None) -> np.ndarray:
    """The model's foreground probability ``[B, H, W]``: the mean over samples of
    ``sample_probs`` ``[B, S, H, W]``, or of the hard ``sample_masks`` when it is None."""
    masks = np.asarray(sample_masks)
    if masks.ndim != 4 or (sample_probs is not None and np.shape(sample_probs) != masks.shape):
        raise ValueError(
            "expected sample_masks [B, S, H, W] and sample_probs of the same shape or None, got "
            f"{masks.shape} and {None if sample_probs is None else np.shape(sample_probs)}"
        )
    values = masks != 0 if sample_probs is None else np.asarray(sample_probs)
    return values.mean(axis=1, dtype=np.float64)


def _valid_raters(annotations: np.ndarray, annotation_valid: np.ndarray | None) -> np.ndarray:
    """``annotation_valid`` ``[B, A]`` as bool, all True when None; ValueError on a bad shape."""
    shape = np.shape(annotations)[:2]
    if annotation_valid is None:
        return np.ones(shape, bool)
    if np.shape(annotation_valid) != shape:
        raise ValueError(
            f"annotation_valid must be [B, A] = {shape} for annotations {np.shape(annotations)}, "
            f"got {np.shape(annotation_valid)}"
        )
    return np.asarray(annotation_valid, bool)


def rater_mean(annotations: np.ndarray, annotation_valid: np.ndarray | None = None) -> np.ndarray:
    """Fraction of the valid raters marking each pixel: ``[B, A, H, W]`` -> ``[B, H, W]``."""
    valid = _valid_raters(annotations, annotation_valid)
    marked = (np.asarray(annotations) != 0) & valid[:, :, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return marked.sum(axis=1) / valid.sum(axis=1)[:, None, None]


# --------------------------------------------------------------------------- CI score


class DiceMatrices(NamedTuple):
    """Pairwise Dice of one image batch (float64; two empty masks have Dice 1)."""

    sample_sample: np.ndarray  # [B, S, S]
    sample_annotation: np.ndarray  # [B, S, A]
    annotation_annotation: np.ndarray  # [B, A, A]


def pairwise_dice(samples: np.ndarray, annotations: np.ndarray) -> DiceMatrices:
    """All pairwise Dice of samples ``[B, S, H, W]`` and annotations ``[B, A, H, W]``, from the
    IoU matrices of :func:`probunet_jax.metrics.pairwise_iou` (Dice = 2 IoU / (1 + IoU))."""
    ious = (np.asarray(m, np.float64) for m in metrics.pairwise_iou(samples, annotations))
    return DiceMatrices(*(2 * iou / (1 + iou) for iou in ious))


def combined_sensitivity(
    samples: np.ndarray, annotations: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """``TP / (TP + FN)`` ``[B]`` of the samples' union vs the valid raters' union (1 if empty).

    ``samples`` ``[B, S, H, W]``, ``annotations`` ``[B, A, H, W]``, ``valid`` ``[B, A]`` bool.
    """
    found = (np.asarray(samples) != 0).any(axis=1)
    marked = ((np.asarray(annotations) != 0) & valid[:, :, None, None]).any(axis=1)
    hits = (found & marked).sum(axis=(1, 2))
    positives = marked.sum(axis=(1, 2))
    return np.where(positives == 0, 1.0, hits / np.maximum(positives, 1))


def max_dice(sample_annotation_dice: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean over valid raters of their best sample's Dice: ``[B, S, A]``, ``[B, A]`` -> ``[B]``."""
    best = sample_annotation_dice.max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid, best, 0.0).sum(axis=1) / valid.sum(axis=1)


def _spread(dice: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest and smallest ``1 - Dice`` ``[B]`` over distinct valid pairs (0, 0 if none)."""
    n = dice.shape[-1]
    pair = valid[:, :, None] & valid[:, None, :] & ~np.eye(n, dtype=bool)
    distance = 1.0 - dice
    has_pair = pair.any(axis=(1, 2))
    high = np.where(pair, distance, -np.inf).max(axis=(1, 2))
    low = np.where(pair, distance, np.inf).min(axis=(1, 2))
    return np.where(has_pair, high, 0.0), np.where(has_pair, low, 0.0)


def diversity_agreement(dice: DiceMatrices, valid: np.ndarray) -> np.ndarray:
    """``1 - (|max d_Y - max d_S| + |min d_Y - min d_S|) / 2`` ``[B]`` (module docstring)."""
    every_sample = np.ones(dice.sample_sample.shape[:2], bool)
    sample_high, sample_low = _spread(dice.sample_sample, every_sample)
    rater_high, rater_low = _spread(dice.annotation_annotation, valid)
    return 1.0 - (np.abs(rater_high - sample_high) + np.abs(rater_low - sample_low)) / 2


def ci_score(*parts: np.ndarray) -> np.ndarray:
    """Harmonic mean of the parts (each ``[B]`` in [0, 1]); 0 where any part is 0."""
    with np.errstate(divide="ignore"):
        return len(parts) / sum(1.0 / np.asarray(p, np.float64) for p in parts)


def calibration_metrics(
    sample_masks: np.ndarray,
    annotations: np.ndarray,
    sample_probs: np.ndarray | None = None,
    annotation_valid: np.ndarray | None = None,
    num_bins: int = NUM_BINS,
) -> CalibrationMetrics:
    """The per-image columns of the module docstring and the pixel reliability bins.

    Args:
      sample_masks: ``[B, S, H, W]`` hard samples (nonzero is foreground).
      annotations: ``[B, A, H, W]`` raters' masks.
      sample_probs: ``[B, S, H, W]`` foreground probabilities of the samples, or None to use
        the sample frequency of the hard masks as the prediction.
      annotation_valid: ``[B, A]`` bool, the real raters (None: all).
      num_bins: reliability bins.
    """
    dice = pairwise_dice(sample_masks, annotations)  # Checks the shapes.
    valid = _valid_raters(annotations, annotation_valid)
    predicted = mean_prediction(sample_masks, sample_probs)
    pixels = pixel_calibration(predicted, rater_mean(annotations, valid), num_bins)
    parts = {
        "combined_sensitivity": combined_sensitivity(sample_masks, annotations, valid),
        "max_dice": max_dice(dice.sample_annotation, valid),
        "diversity_agreement": diversity_agreement(dice, valid),
    }
    columns = {"rater_ece": pixels.ece, "rater_brier": pixels.brier, **parts}
    columns["ci_score"] = ci_score(*parts.values())
    has_rater = valid.any(axis=1)
    return CalibrationMetrics(
        {name: np.where(has_rater, value, np.nan) for name, value in columns.items()}, pixels.bins
    )
