"""Tests of the synthetic ambiguous data set: layout, determinism, ambiguity rates, oracle."""

import numpy as np
import pytest

from probunet_jax import data
from probunet_jax.data import synthetic

NUM, SIZE, ANNOTATIONS = 3000, 24, 4
Z = 5.0  # Tolerance in standard errors.


@pytest.fixture(scope="module")
def batch():
    """NUM examples at SIZE x SIZE, concatenated over chunks."""
    chunks = list(synthetic.generate(NUM, SIZE, ANNOTATIONS, seed=(1, 0)))
    return {
        "image": np.concatenate([c["image"] for c in chunks]),
        "masks": np.concatenate([c["masks"] for c in chunks]),
        "truth": {k: np.concatenate([c["truth"][k] for c in chunks]) for k in chunks[0]["truth"]},
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    config = data.default_data_config()
    config.update(
        data_dir=str(tmp_path_factory.mktemp("synthetic")),
        image_size=16,
        num_annotations=3,
        num_train=20,
        num_validation=6,
        num_test=48,
    )
    return data.get_data_source(config, "test")


def assert_count(observed: float, expected: float, variance: float):
    """|observed - expected| within Z standard errors (sum of independent Bernoullis)."""
    assert abs(observed - expected) <= Z * np.sqrt(variance) + 1e-9, (observed, expected)


def test_layout(batch):
    image, masks = batch["image"], batch["masks"]
    assert image.shape == (NUM, SIZE, SIZE, 1) and image.dtype == np.float32
    assert masks.shape == (NUM, ANNOTATIONS, SIZE, SIZE) and masks.dtype == np.uint8
    assert 0 <= image.min() and image.max() <= 1 and np.ptp(image) > 0.5
    assert set(np.unique(masks)) == {0, 1}


def test_built_examples(source):
    assert len(source) == 48
    example = source[5]
    assert example["image"].shape == (16, 16, 1) and example["image"].dtype == np.float32
    assert example["masks"].shape == (3, 16, 16) and example["masks"].dtype == np.uint8
    assert example["id"] == b"test-000005"
    assert example["truth"]["choice"].shape == (3,)
    assert example["rater_valid"].dtype == bool and example["rater_valid"].all()


def test_deterministic_in_seed():
    first, again, other = (next(synthetic.generate(5, 16, 2, seed)) for seed in (3, 3, 4))
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["masks"], again["masks"])
    assert not np.array_equal(first["image"], other["image"])


def test_masks_are_rendered_from_stored_latents(batch):
    truth = batch["truth"]
    profiles = synthetic.lesion_profiles(truth, SIZE)
    rendered = synthetic.render_masks(profiles, truth["choice"], truth["level"])
    np.testing.assert_array_equal(rendered, batch["masks"])
    nonempty = batch["masks"].any(axis=(2, 3))
    np.testing.assert_array_equal(nonempty, truth["choice"] != 0)  # Marked lesions show.
    assert not nonempty[truth["scenario"] == synthetic.EMPTY].any()


def test_scenario_rates(batch):
    counts = np.bincount(batch["truth"]["scenario"], minlength=3)
    for count, p in zip(counts, synthetic.SCENARIO_PROBS, strict=True):
        assert_count(count, NUM * p, NUM * p * (1 - p))


def test_presence_rate_follows_contrast(batch):
    truth = batch["truth"]
    single = truth["scenario"] == synthetic.SINGLE
    p = np.repeat(synthetic.presence_probability(truth["contrast"][single, 0]), ANNOTATIONS)
    marked = (truth["choice"][single] != 0).ravel()
    assert_count(marked.sum(), p.sum(), (p * (1 - p)).sum())
    faint = p < 0.5
    assert 0.1 < faint.mean() < 0.5 and marked[faint].mean() < 0.3 < 0.9 < marked[~faint].mean()
    # Disagreement on presence: some but not all graders mark the lesion.
    p_image = synthetic.presence_probability(truth["contrast"][single, 0])
    split = 1 - p_image**ANNOTATIONS - (1 - p_image) ** ANNOTATIONS
    n_marked = (truth["choice"][single] != 0).sum(axis=1)
    disagree = (n_marked > 0) & (n_marked < ANNOTATIONS)
    assert_count(disagree.sum(), split.sum(), (split * (1 - split)).sum())
    assert disagree.mean() > 0.05


def test_pair_choice_rates(batch):
    truth = batch["truth"]
    pair = truth["scenario"] == synthetic.PAIR
    probs = np.repeat(synthetic.choice_probabilities({k: v[pair] for k, v in truth.items()}), 4, 0)
    choice = truth["choice"][pair].ravel()
    for c in range(synthetic.CHOICES):
        p = probs[:, c]
        assert_count((choice == c).sum(), p.sum(), (p * (1 - p)).sum())
    assert (choice == 0).sum() == 0 and min((choice == c).sum() for c in (1, 2, 3)) > 100


def test_extent_varies_with_level(batch):
    truth, masks = batch["truth"], batch["masks"].astype(bool)
    level = truth["level"]
    assert_count(level.mean() * level.size, 0.5 * level.size, level.size * 0.6**2 / 12)
    assert level.min() >= synthetic.LEVEL_RANGE[0] and level.max() <= synthetic.LEVEL_RANGE[1]
    # Two graders that mark the same lesion: the lower iso-level gives the larger, nested mask.
    same = (truth["choice"][:, 0] == truth["choice"][:, 1]) & (truth["choice"][:, 0] > 0)
    loose = np.where((level[:, 0] <= level[:, 1])[:, None, None], masks[:, 0], masks[:, 1])
    tight = np.where((level[:, 0] <= level[:, 1])[:, None, None], masks[:, 1], masks[:, 0])
    assert np.all((tight & ~loose)[same] == 0)
    areas_differ = (masks[same, 0].sum(axis=(1, 2)) != masks[same, 1].sum(axis=(1, 2))).mean()
    assert areas_differ > 0.5


def test_oracle_matches_stored_distribution(batch):
    truth = batch["truth"]
    examples = {"image": batch["image"][:500], "truth": {k: v[:500] for k, v in truth.items()}}
    samples = synthetic.sample_annotations_batch(examples, 8, np.random.default_rng(0))
    assert samples.shape == (500, 8, SIZE, SIZE) and samples.dtype == np.uint8
    # Rate of empty masks: oracle samples vs stored annotations of the same images.
    probs = synthetic.choice_probabilities(examples["truth"])[:, 0]
    for masks in (samples, batch["masks"][:500]):
        empty = ~masks.any(axis=(2, 3))
        p = np.repeat(probs, masks.shape[1])
        assert_count(empty.sum(), p.sum(), (p * (1 - p)).sum())


def _ged(samples: np.ndarray, annotations: np.ndarray) -> float:
    """GED of one image, d = 1 - IoU (empty vs empty: 0), means over all pairs."""

    def distance(x, y):
        x, y = x.reshape(len(x), 1, -1).astype(bool), y.reshape(1, len(y), -1).astype(bool)
        union = (x | y).sum(-1)
        return np.where(union == 0, 0.0, 1 - (x & y).sum(-1) / np.maximum(union, 1)).mean()

    return (
        2 * distance(samples, annotations)
        - distance(samples, samples)
        - distance(annotations, annotations)
    )


def test_oracle_ged_beats_constant_predictors(source):
    rng = np.random.default_rng(0)
    oracle, empty, union = [], [], []
    for i in range(len(source)):
        example = source[i]
        masks = example["masks"]
        samples = synthetic.sample_annotations(example, 16, rng)
        assert samples.shape == (16, 16, 16) and samples.dtype == np.uint8
        oracle.append(_ged(samples, masks))
        empty.append(_ged(np.zeros_like(masks[:1]), masks))
        union.append(_ged(masks.max(axis=0, keepdims=True), masks))
    best_constant = min(np.mean(empty), np.mean(union))
    assert np.mean(oracle) < 0.8 * best_constant, (np.mean(oracle), np.mean(empty), np.mean(union))


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="image_size"):
        next(synthetic.generate(3, 4, 2, 0))


def test_three_classes_split_the_binary_masks_into_rim_and_core(tmp_path):
    binary = next(synthetic.generate(200, SIZE, ANNOTATIONS, seed=(2, 0)))["masks"]
    masks = next(synthetic.generate(200, SIZE, ANNOTATIONS, seed=(2, 0), num_classes=3))["masks"]
    np.testing.assert_array_equal(masks > 0, binary)
    marked = binary.any(axis=(2, 3))
    has_core, has_rim = (masks == 2).any(axis=(2, 3)), (masks == 1).any(axis=(2, 3))
    assert has_core[marked].mean() > 0.9 and has_rim[marked].mean() > 0.9
    config = data.default_data_config()
    config.update(data_dir=str(tmp_path), image_size=16, num_classes=3, num_train=6)
    config.update(num_validation=3, num_test=3)
    assert data.dataset_info(config) == data.DatasetInfo("synthetic", (16, 16, 1), 3, 4)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # Known without building.
    stored = data.get_data_source(config, "train")
    assert max(stored[i]["masks"].max() for i in range(6)) == 2
    config.num_classes = 4
    with pytest.raises(ValueError, match="num_classes 4"):
        data.dataset_info(config)
