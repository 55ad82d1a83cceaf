"""Calibration and CI-score metrics on hand-computed cases, perfect and worst models."""

import numpy as np
import pytest

from probunet_jax import calibration


def _masks(*pixel_sets, size=4):
    """Masks [N, size, size] with the given flat pixel indices set."""
    masks = np.zeros((len(pixel_sets), size * size), np.uint8)
    for mask, pixels in zip(masks, pixel_sets, strict=True):
        mask[list(pixels)] = 1
    return masks.reshape(-1, size, size)


# --------------------------------------------------------------------------- binning


def test_reliability_bins_and_ece_by_hand():
    predicted = np.array([[0.05, 0.15, 0.95, 1.0]])
    observed = np.array([[0.0, 1.0, 1.0, 0.0]])
    bins = calibration.reliability_bins(predicted, observed, num_bins=10)
    expected_count = np.zeros(10)
    expected_count[[0, 1, 9]] = [1, 1, 2]  # 1.0 falls in the last, closed bin.
    np.testing.assert_array_equal(bins.count[0], expected_count)
    np.testing.assert_allclose(bins.predicted[0, [0, 1, 9]], [0.05, 0.15, 1.95])
    np.testing.assert_allclose(bins.observed[0, [0, 1, 9]], [0.0, 1.0, 1.0])
    # (|0.05 - 0| + |0.15 - 1| + |1.95 - 1|) / 4
    np.testing.assert_allclose(calibration.expected_calibration_error(bins), [0.4625])


def test_bins_add_up_over_batches_to_the_pooled_curve():
    rng = np.random.default_rng(0)
    predicted, observed = rng.random((5, 3, 3)), rng.random((5, 3, 3))
    parts = [
        calibration.reliability_bins(predicted[s], observed[s], 4)
        for s in (slice(0, 2), slice(2, 5))
    ]
    total = calibration.ReliabilityBins(*(np.concatenate(b) for b in zip(*parts, strict=True)))
    curve = calibration.reliability_curve(total)
    pooled = calibration.reliability_bins(predicted.reshape(1, -1), observed.reshape(1, -1), 4)
    np.testing.assert_allclose(curve.count, pooled.count[0])
    np.testing.assert_allclose(curve.predicted * curve.count, pooled.predicted[0])
    np.testing.assert_allclose(curve.observed * curve.count, pooled.observed[0])
    assert curve.ece == pytest.approx(float(calibration.expected_calibration_error(pooled)[0]))


def test_empty_bins_give_nan_means():
    curve = calibration.reliability_curve(calibration.reliability_bins([[0.9]], [[1.0]], 2))
    assert np.isnan(curve.predicted[0]) and curve.predicted[1] == pytest.approx(0.9)
    assert curve.ece == pytest.approx(0.1)


def test_pixel_calibration_perfect_and_worst():
    target = np.array([[[0.0, 1.0], [1.0, 0.0]]])
    perfect = calibration.pixel_calibration(target, target)
    worst = calibration.pixel_calibration(1 - target, target)
    np.testing.assert_allclose([perfect.ece[0], perfect.brier[0]], [0.0, 0.0])
    np.testing.assert_allclose([worst.ece[0], worst.brier[0]], [1.0, 1.0])


def test_reliability_bins_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        calibration.reliability_bins(np.zeros((2, 3)), np.zeros((2, 4)))


# --------------------------------------------------------------------------- probability maps


def test_mean_prediction_uses_probs_or_sample_frequency():
    masks = np.array([[[[1, 0]], [[1, 1]]]], np.uint8)  # [1, 2, 1, 2]
    probs = np.array([[[[0.8, 0.2]], [[0.6, 0.6]]]])
    np.testing.assert_allclose(calibration.mean_prediction(masks, None), [[[1.0, 0.5]]])
    np.testing.assert_allclose(calibration.mean_prediction(masks, probs), [[[0.7, 0.4]]])
    with pytest.raises(ValueError, match=r"\(1, 2, 1, 2\) and \(1, 2, 1, 3\)"):
        calibration.mean_prediction(masks, np.zeros((1, 2, 1, 3)))


def test_rater_mean_ignores_padded_raters():
    annotations = np.stack([_masks({0}, {0, 1}, set(range(16)))])  # Third rater is padding.
    valid = np.array([[True, True, False]])
    q = calibration.rater_mean(annotations, valid)
    assert q[0, 0, 0] == 1.0 and q[0, 0, 1] == 0.5 and q[0].sum() == 1.5
    with pytest.raises(ValueError, match=r"\(1, 3\).*\(1, 2\)"):
        calibration.rater_mean(annotations, valid[:, :2])


# --------------------------------------------------------------------------- CI score


def test_ci_parts_by_hand():
    # Raters: {0,1} and {0,1,2,3}; samples: {0,1} and {8}.
    annotations = _masks({0, 1}, {0, 1, 2, 3})[None]
    samples = _masks({0, 1}, {8})[None]
    valid = np.ones((1, 2), bool)
    # Union of raters {0..3}; the samples' union {0, 1, 8} finds 2 of 4.
    sensitivity = calibration.combined_sensitivity(samples, annotations, valid)
    np.testing.assert_allclose(sensitivity, [0.5])
    dice = calibration.pairwise_dice(samples, annotations)
    # Rater 1 is matched exactly, rater 2 best by sample 1: 2 * 2 / (2 + 4) = 2/3.
    np.testing.assert_allclose(calibration.max_dice(dice.sample_annotation, valid), [5 / 6])
    # Raters' distance 1 - 2/3 = 1/3 (max = min); samples' distance 1 (disjoint).
    agreement = calibration.diversity_agreement(dice, valid)
    np.testing.assert_allclose(agreement, [1 - (2 / 3 + 2 / 3) / 2])
    np.testing.assert_allclose(
        calibration.ci_score(sensitivity, np.array([5 / 6]), agreement),
        [3 / (1 / 0.5 + 6 / 5 + 3)],
    )


def test_ci_score_of_a_perfect_and_a_worst_model():
    annotations = np.stack([_masks({0, 1}, {0, 1, 2}, {5, 6}, {5})])
    valid = np.ones((1, 4), bool)
    perfect = calibration.calibration_metrics(annotations, annotations).columns
    for name in ("combined_sensitivity", "max_dice", "diversity_agreement", "ci_score"):
        assert perfect[name][0] == pytest.approx(1.0), name
    assert perfect["rater_ece"][0] == 0.0 and perfect["rater_brier"][0] == 0.0
    worst = _masks({15}, {15}, {15}, {15})[None]  # Misses everything, no diversity.
    assert calibration.combined_sensitivity(worst, annotations, valid)[0] == 0.0
    assert calibration.calibration_metrics(worst, annotations).columns["ci_score"][0] == 0.0


def test_empty_mask_conventions():
    empty = _masks(set(), set())[None]
    valid = np.ones((1, 2), bool)
    # Nothing to find and nothing found: sensitivity 1, Dice 1.
    assert calibration.combined_sensitivity(empty, empty, valid)[0] == 1.0
    dice = calibration.pairwise_dice(empty, empty)
    assert calibration.max_dice(dice.sample_annotation, valid)[0] == 1.0
    # A false positive on an empty image keeps sensitivity 1 but has Dice 0.
    false_positive = _masks({3}, {3})[None]
    assert calibration.combined_sensitivity(false_positive, empty, valid)[0] == 1.0
    dice = calibration.pairwise_dice(false_positive, empty)
    assert calibration.max_dice(dice.sample_annotation, valid)[0] == 0.0


def test_padded_raters_are_ignored_and_imageless_rows_are_nan():
    annotations = np.stack([_masks({0}, {0}, {9}), _masks({0}, {0}, {9})])
    samples = np.stack([_masks({0}, {0}), _masks({0}, {0})])
    valid = np.array([[True, True, False], [False, False, False]])
    columns = calibration.calibration_metrics(samples, annotations, None, valid).columns
    for name, values in columns.items():
        assert values.shape == (2,), name
        assert values[0] == pytest.approx(0.0 if name.startswith("rater_") else 1.0), name
        assert np.isnan(values[1]), name


def test_calibration_metrics_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(1, 2, 4, 4\) and \(2, 2, 4, 4\)"):
        calibration.calibration_metrics(np.zeros((1, 2, 4, 4)), np.zeros((2, 2, 4, 4)))
