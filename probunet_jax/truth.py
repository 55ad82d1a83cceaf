"""Metrics against the known annotation distribution of the synthetic set.

The graders of :mod:`probunet_jax.data.synthetic` pick a choice ``c`` (nothing / first /
second / both lesions) with the probabilities of ``synthetic.choice_probabilities`` and an
iso-level ``t ~ U(0.2, 0.8)``, and mark a pixel ``x`` iff ``max_{k in c} g_k(x) >= t`` (``g_k``
the lesion profiles). So the true marginal foreground probability is exact:
``pi(x) = sum_c P(c) F(max_{k in c} g_k(x))`` with ``F(g) = clip((g - 0.2) / 0.6, 0, 1)``
(:func:`true_foreground_probability`).

Which lesions a mask marks (:func:`detected_choices`): lesion ``k`` counts as marked when the
mask covers at least ``COVER_FRACTION`` of its core ``{g_k >= min(0.8, max g_k)}``: the pixels
that every grader marking it includes (its peak pixels if none reaches 0.8). So a grader's mask
shows its own choice (the tests check this on oracle draws), and foreground away from the
lesions marks none of them.

Per-image columns ``[B]`` (float64) of :func:`truth_metrics`:

* ``scenario``: 0 empty, 1 single, 2 pair.
* ``truth_ece``, ``truth_brier``: pixel calibration of the mean prediction ``p``
  (``calibration.mean_prediction``: the mean of the samples' foreground probabilities, or the
  samples' frequency when those are not given) against ``pi``, as in
  :mod:`probunet_jax.calibration` (``ECE = sum_k |sum_k p - sum_k pi| / N`` over bins of ``p``;
  Brier ``= mean (p - pi)^2``). With the S-sample frequency of oracle masks ``E[Brier] = mean
  pi (1 - pi) / S``, the Monte Carlo floor.
* ``presence_rate``, ``presence_probability``: single-lesion images: the fraction of samples
  that mark the lesion and the true probability that a grader does; NaN elsewhere.
* ``mode_tvd``: two-lesion images: the total variation distance ``1/2 sum_c |f_c - P(c)|``
  between the samples' choice frequencies ``f`` and the true ones, in [0, 1]; NaN elsewhere.

:func:`reconstruction_choice_accuracy` (column ``posterior_choice_accuracy``) asks whether the
latent carries the choice at all: the fraction of an image's annotations whose posterior
reconstruction (the decoder at the posterior's representative z given that annotation) shows
the annotation's own choice; NaN on empty images. A model whose samples miss modes but whose
reconstructions are right has a prior that does not match its posterior; a model whose
reconstructions are wrong cannot represent the choice in z at all.

:func:`split_by_scenario` groups any per-image columns (e.g. the GED and its terms) by
scenario; :func:`presence_reliability` bins the presence columns into a reliability curve.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from probunet_jax import calibration
from probunet_jax.data import synthetic

SCENARIOS = {"empty": synthetic.EMPTY, "single": synthetic.SINGLE, "pair": synthetic.PAIR}
COVER_FRACTION = 0.5  # Share of a lesion's core a mask must cover to mark it.
# Lesions (columns) marked by each choice (rows): [CHOICES, 2] in {0, 1}.
CHOICE_LESIONS = (np.arange(synthetic.CHOICES)[:, None] >> np.arange(2)) & 1


class TruthMetrics(NamedTuple):
    """:func:`truth_metrics`: per-image columns and the per-image pixel bins."""

    columns: dict[str, np.ndarray]  # each [B]
    pixel_bins: calibration.ReliabilityBins  # each [B, K]; sum for the data-set diagram


def level_cdf(profile: np.ndarray) -> np.ndarray:
    """``P(t <= g)`` for a grader's iso-level ``t ~ U(LEVEL_RANGE)``, elementwise."""
    low, high = synthetic.LEVEL_RANGE
    return np.clip((np.asarray(profile, np.float64) - low) / (high - low), 0.0, 1.0)


def marginal_probability(profiles: np.ndarray, choice_probs: np.ndarray) -> np.ndarray:
    """``pi`` ``[B, S, S]`` from profiles ``[B, 2, S, S]`` and choice probabilities
    ``[B, CHOICES]``: ``sum_c P(c) F(max_{k in c} g_k)``."""
    outline = (profiles[:, None] * CHOICE_LESIONS[None, :, :, None, None]).max(axis=2)
    return np.einsum("bc,bchw->bhw", choice_probs, level_cdf(outline))


def true_foreground_probability(truth: Mapping[str, np.ndarray], image_size: int) -> np.ndarray:
    """Exact P(a random grader marks the pixel): truth batched ``[B, ...]`` -> ``[B, S, S]``."""
    profiles = synthetic.lesion_profiles(truth, image_size)
    return marginal_probability(profiles, synthetic.choice_probabilities(truth))


def lesion_cores(profiles: np.ndarray) -> np.ndarray:
    """Cores of the lesions (module docstring): profiles ``[B, 2, S, S]`` -> bool, empty for
    absent lesions."""
    peak = profiles.max(axis=(2, 3), keepdims=True)
    return (profiles >= np.minimum(synthetic.LEVEL_RANGE[1], peak)) & (peak > 0)


def detected_choices(masks: np.ndarray, profiles: np.ndarray) -> np.ndarray:
    """The choice each mask shows: masks ``[B, N, S, S]``, profiles ``[B, 2, S, S]`` -> int
    ``[B, N]`` in ``range(CHOICES)`` (bit k set iff lesion k is marked)."""
    masks = np.asarray(masks)
    if masks.ndim != 4 or np.shape(profiles) != (masks.shape[0], 2, *masks.shape[2:]):
        raise ValueError(
            f"expected masks [B, N, H, W] and profiles [B, 2, H, W], got {masks.shape} and "
            f"{profiles.shape}"
        )
    foreground, cores = masks != 0, lesion_cores(profiles)
    covered = np.stack(
        [(foreground & core[:, None]).sum(axis=(2, 3)) for core in cores.swapaxes(0, 1)], -1
    )
    size = cores.sum(axis=(2, 3))[:, None, :]  # [B, 1, 2]
    marked = (size > 0) & (covered >= COVER_FRACTION * size)  # [B, N, 2]
    return marked[..., 0] + 2 * marked[..., 1]


def choice_frequencies(choices: np.ndarray) -> np.ndarray:
    """Frequencies ``[B, CHOICES]`` of the choices ``[B, N]``."""
    return np.eye(synthetic.CHOICES)[np.asarray(choices)].mean(axis=1)


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``1/2 sum |p - q|`` over the last axis."""
    return 0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum(axis=-1)


def truth_metrics(
    sample_masks: np.ndarray,
    sample_probs: np.ndarray | None,
    truth: Mapping[str, np.ndarray],
    num_bins: int = calibration.NUM_BINS,
) -> TruthMetrics:
    """The per-image columns of the module docstring and the pixel reliability bins.

    Args:
      sample_masks: ``[B, S, H, W]`` hard samples (nonzero is foreground), ``H = W``.
      sample_probs: ``[B, S, H, W]`` their foreground probabilities, or None to use the
        sample frequency of the hard masks as the prediction.
      truth: the batched ``'truth'`` features ``[B, ...]`` of the images.
      num_bins: reliability bins.
    """
    masks = np.asarray(sample_masks)
    scenario = np.asarray(truth["scenario"])
    if masks.ndim != 4 or masks.shape[2] != masks.shape[3] or scenario.shape != masks.shape[:1]:
        raise ValueError(
            "expected square sample_masks [B, S, H, H] and truth['scenario'] [B], got shapes "
            f"{masks.shape} and {scenario.shape}"
        )
    profiles = synthetic.lesion_profiles(truth, masks.shape[-1])
    probs = synthetic.choice_probabilities(truth)
    predicted = calibration.mean_prediction(masks, sample_probs)
    pixels = calibration.pixel_calibration(
        predicted, marginal_probability(profiles, probs), num_bins
    )
    frequencies = choice_frequencies(detected_choices(masks, profiles))
    single, pair = scenario == synthetic.SINGLE, scenario == synthetic.PAIR
    columns = {
        "scenario": scenario.astype(np.float64),
        "truth_ece": pixels.ece,
        "truth_brier": pixels.brier,
        "presence_rate": np.where(single, frequencies[:, 1], np.nan),
        "presence_probability": np.where(single, probs[:, 1], np.nan),
        "mode_tvd": np.where(pair, total_variation(frequencies, probs), np.nan),
    }
    return TruthMetrics(columns, pixels.bins)


def reconstruction_choice_accuracy(
    reconstructions: np.ndarray,
    annotations: np.ndarray,
    truth: Mapping[str, np.ndarray],
    annotation_valid: np.ndarray | None = None,
) -> np.ndarray:
    """``posterior_choice_accuracy`` ``[B]`` (module docstring): reconstructions and the
    annotations they were given, ``[B, A, H, W]`` each, ``annotation_valid`` ``[B, A]`` (None:
    all valid); NaN on empty images."""
    reconstructions, annotations = np.asarray(reconstructions), np.asarray(annotations)
    if reconstructions.shape != annotations.shape or reconstructions.ndim != 4:
        raise ValueError(
            "expected reconstructions and annotations of one shape [B, A, H, W], got "
            f"{reconstructions.shape} and {annotations.shape}"
        )
    profiles = synthetic.lesion_profiles(truth, annotations.shape[-1])
    same = detected_choices(reconstructions, profiles) == detected_choices(annotations, profiles)
    valid = np.ones(same.shape, bool) if annotation_valid is None else np.asarray(annotation_valid)
    accuracy = (same & valid).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    return np.where(np.asarray(truth["scenario"]) == synthetic.EMPTY, np.nan, accuracy)


def split_by_scenario(per_image: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Per scenario name (``SCENARIOS``) the rows of per-image columns ``[N]`` (with a
    ``scenario`` column) that belong to it, e.g. to summarise the GED per scenario."""
    columns = {name: np.asarray(values) for name, values in per_image.items()}
    shapes = {name: values.shape for name, values in columns.items()}
    if "scenario" not in columns or len(set(shapes.values())) != 1:
        raise ValueError(f"need 1-D columns of one length including 'scenario', got {shapes}")
    return {
        name: {column: values[columns["scenario"] == code] for column, values in columns.items()}
        for name, code in SCENARIOS.items()
    }


def presence_reliability(
    pred_rates: np.ndarray, true_probs: np.ndarray, num_bins: int = calibration.NUM_BINS
) -> calibration.ReliabilityCurve:
    """Reliability curve of per-image presence rates ``[N]`` against the true probabilities
    ``[N]``, binned by rate; images where either is NaN (not single-lesion) are left out."""
    rates, probs = np.asarray(pred_rates, np.float64), np.asarray(true_probs, np.float64)
    if rates.shape != probs.shape or rates.ndim != 1:
        raise ValueError(f"need two [N] arrays, got shapes {rates.shape} and {probs.shape}")
    keep = np.isfinite(rates) & np.isfinite(probs)
    bins = calibration.reliability_bins(rates[keep][None], probs[keep][None], num_bins)
    return calibration.reliability_curve(bins)
