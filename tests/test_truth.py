"""Truth-based metrics of the synthetic set: hand-computed cases, Monte Carlo, oracle, worst."""

import numpy as np
import pytest

from probunet_jax import truth
from probunet_jax.data import synthetic

SIZE = 32


def _hand_truth():
    """Three 32 x 32 images: empty, single (grader probability 0.5), pair (contrasts 0.3, 0.1)
    with round lesions of radius 4 and blur 0.8 centred on pixels (10, 10) and (22, 22)."""
    lesion = {
        "center": np.array([[10.0, 10.0], [22.0, 22.0]]),
        "radius": np.array([4.0, 4.0]),
        "blur": np.array([0.8, 0.8]),
        "amplitude": np.zeros((2, 3)),
        "phase": np.zeros((2, 3)),
    }
    batched = {k: np.stack([v] * 3).astype(np.float32) for k, v in lesion.items()}
    contrast = np.array([[0, 0], [synthetic.PRESENCE_MIDPOINT, 0], [0.3, 0.1]], np.float32)
    return {"scenario": np.array([0, 1, 2], np.int32), "contrast": contrast, **batched}


def _generated(num, size, seed):
    return synthetic.generate_batch(num, size, 4, np.random.default_rng(seed))


# --------------------------------------------------------------------------- true marginal


def test_true_probability_by_hand():
    pi = truth.true_foreground_probability(_hand_truth(), SIZE)
    assert pi.shape == (3, SIZE, SIZE)
    assert np.all(pi[0] == 0)
    # Lesion centres have profile sigmoid(4 / 0.8) >= 0.8: every grader marking it covers them.
    assert pi[1, 10, 10] == pytest.approx(0.5)
    assert pi[2, 10, 10] == pytest.approx(0.75 * 0.75 + 0.25)  # first or both
    assert pi[2, 22, 22] == pytest.approx(0.75 * 0.25 + 0.25)  # second or both
    assert pi[1, 0, 31] == 0 and pi[2, 0, 31] == 0  # far from the lesions


def test_true_probability_matches_monte_carlo():
    batch = _generated(12, SIZE, seed=3)
    assert set(batch["truth"]["scenario"].tolist()) == {0, 1, 2}
    num = 2000
    draws = synthetic.sample_annotations_batch(batch, num, np.random.default_rng(4))
    estimate = draws.mean(axis=1, dtype=np.float64)
    pi = truth.true_foreground_probability(batch["truth"], SIZE)
    sigma = np.sqrt(np.maximum(pi * (1 - pi), 1 / num) / num)
    assert np.all(np.abs(estimate - pi) <= 5 * sigma)
    assert estimate.mean() == pytest.approx(pi.mean(), rel=0.01)


# --------------------------------------------------------------------------- lesion detection


def test_detected_choices_recover_the_graders_choices():
    batch = _generated(48, SIZE, seed=5)
    profiles = synthetic.lesion_profiles(batch["truth"], SIZE)
    choice, level = synthetic.sample_latents(batch["truth"], 40, np.random.default_rng(6))
    masks = synthetic.render_masks(profiles, choice, level)
    np.testing.assert_array_equal(truth.detected_choices(masks, profiles), choice)


def test_detected_choices_by_hand():
    profiles = synthetic.lesion_profiles(_hand_truth(), SIZE)[2:]  # The pair.
    cores = truth.lesion_cores(profiles)[0]
    speck = np.zeros((SIZE, SIZE), np.uint8)
    speck[10, 10] = 1  # One core pixel of the first lesion: less than half of its core.
    masks = np.stack([cores[0], cores[1], cores[0] | cores[1], speck, np.ones_like(speck)])
    detected = truth.detected_choices(masks[None].astype(np.uint8), profiles)
    np.testing.assert_array_equal(detected, [[1, 2, 3, 0, 3]])
    with pytest.raises(ValueError, match=r"\(1, 5, 32, 31\) and \(1, 2, 32, 32\)"):
        truth.detected_choices(masks[None, :, :, :31], profiles)


# --------------------------------------------------------------------------- truth_metrics


def test_mode_tvd_and_presence_by_hand():
    hand = _hand_truth()
    profiles = synthetic.lesion_profiles(hand, SIZE)
    choice = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 2, 3]])
    masks = synthetic.render_masks(profiles, choice, np.full((3, 4), 0.5, np.float32))
    columns = truth.truth_metrics(masks, None, hand).columns
    np.testing.assert_array_equal(columns["scenario"], [0, 1, 2])
    # Frequencies (0, .5, .25, .25) vs truth (0, .5625, .1875, .25).
    np.testing.assert_allclose(columns["mode_tvd"], [np.nan, np.nan, 0.0625])
    np.testing.assert_allclose(columns["presence_rate"], [np.nan, 0.25, np.nan])
    np.testing.assert_allclose(columns["presence_probability"], [np.nan, 0.5, np.nan])


def test_a_model_predicting_the_true_marginal_is_perfectly_calibrated():
    hand = _hand_truth()
    pi = truth.true_foreground_probability(hand, SIZE)
    probs = np.repeat(pi[:, None], 2, axis=1)
    result = truth.truth_metrics((probs > 0.5).astype(np.uint8), probs, hand)
    np.testing.assert_allclose(result.columns["truth_ece"], 0, atol=1e-12)
    np.testing.assert_allclose(result.columns["truth_brier"], 0, atol=1e-12)
    assert result.pixel_bins.count.shape == (3, 10)
    np.testing.assert_array_equal(result.pixel_bins.count.sum(axis=1), SIZE * SIZE)


def test_oracle_samples_are_perfect_up_to_monte_carlo_error():
    batch = _generated(96, 16, seed=7)
    num = 400
    samples = synthetic.sample_annotations_batch(batch, num, np.random.default_rng(8))
    columns = truth.truth_metrics(samples, None, batch["truth"]).columns
    pi = truth.true_foreground_probability(batch["truth"], 16)
    floor = np.mean(pi * (1 - pi), axis=(1, 2)) / num  # E[Brier] of an S-sample frequency
    # Over 20 seeds the ratio was 1.01 +- 0.10.
    assert columns["truth_brier"].mean() == pytest.approx(floor.mean(), rel=0.35)
    assert np.all(columns["truth_ece"] < 0.01)
    pair = columns["scenario"] == synthetic.PAIR
    assert pair.sum() >= 10 and np.all(columns["mode_tvd"][pair] < 0.1)
    single = columns["scenario"] == synthetic.SINGLE
    p = columns["presence_probability"][single]
    sigma = np.sqrt(np.maximum(p * (1 - p), 1 / num) / num)
    assert single.sum() >= 10
    assert np.all(np.abs(columns["presence_rate"][single] - p) <= 5 * sigma)


def test_worst_models_reach_the_known_maxima():
    hand = _hand_truth()
    full = np.ones((3, 4, SIZE, SIZE), np.uint8)
    columns = truth.truth_metrics(full, None, hand).columns
    # Empty image, every pixel marked with certainty: ECE = Brier = 1.
    assert columns["truth_ece"][0] == 1.0 and columns["truth_brier"][0] == 1.0
    assert columns["presence_rate"][1] == 1.0
    assert columns["mode_tvd"][2] == pytest.approx(0.75)  # always both, truth 0.25
    nothing = truth.truth_metrics(np.zeros_like(full), None, hand).columns
    assert nothing["mode_tvd"][2] == 1.0  # a pair always has a marked lesion
    assert nothing["presence_rate"][1] == 0.0


def test_truth_metrics_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(2, 4, 32, 32\) and \(3,\)"):
        truth.truth_metrics(np.zeros((2, 4, SIZE, SIZE)), None, _hand_truth())


# --------------------------------------------------------------------------- aggregation


def test_split_by_scenario():
    per_image = {"scenario": np.array([2.0, 0, 1, 2]), "ged": np.array([1.0, 2, 3, 4])}
    groups = truth.split_by_scenario(per_image)
    assert list(groups) == ["empty", "single", "pair"]
    np.testing.assert_array_equal(groups["pair"]["ged"], [1, 4])
    np.testing.assert_array_equal(groups["empty"]["ged"], [2])
    np.testing.assert_array_equal(groups["single"]["ged"], [3])
    with pytest.raises(ValueError, match="'scenario'"):
        truth.split_by_scenario({"ged": np.zeros(3)})


def test_presence_reliability_by_hand():
    rates = np.array([0.1, 0.15, np.nan, 0.9])
    probs = np.array([0.2, 0.0, np.nan, 1.0])
    curve = truth.presence_reliability(rates, probs, num_bins=2)
    np.testing.assert_array_equal(curve.count, [2, 1])
    np.testing.assert_allclose(curve.predicted, [0.125, 0.9])
    np.testing.assert_allclose(curve.observed, [0.1, 1.0])
    assert curve.ece == pytest.approx((0.05 + 0.1) / 3)


def test_posterior_choice_accuracy_by_hand():
    hand = _hand_truth()
    profiles = synthetic.lesion_profiles(hand, SIZE)
    levels = np.full((3, 4), 0.5, np.float32)
    annotated = synthetic.render_masks(
        profiles, np.array([[0] * 4, [1, 0, 1, 0], [1, 2, 3, 3]]), levels
    )
    # Reconstructions: right, right (single), and on the pair 'both' for every annotation.
    shown = synthetic.render_masks(
        profiles, np.array([[0] * 4, [1, 0, 1, 0], [3, 3, 3, 3]]), levels
    )
    accuracy = truth.reconstruction_choice_accuracy(shown, annotated, hand)
    np.testing.assert_allclose(accuracy, [np.nan, 1.0, 0.5])
    valid = np.array([[True] * 4, [True] * 4, [True, False, True, True]])
    accuracy = truth.reconstruction_choice_accuracy(shown, annotated, hand, valid)
    np.testing.assert_allclose(accuracy, [np.nan, 1.0, 2 / 3])
    assert truth.reconstruction_choice_accuracy(np.zeros_like(shown), annotated, hand)[2] == 0.0
    with pytest.raises(ValueError, match=r"\[B, A, H, W\]"):
        truth.reconstruction_choice_accuracy(shown[:, :2], annotated, hand)
