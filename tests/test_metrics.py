"""Metrics against brute-force pure-Python / numpy references on tiny random cases."""

import itertools

import jax
import numpy as np
import pytest

from probunet_jax import benchmarking, metrics

SHAPES = [(2, 5, 3, 6, 7), (3, 1, 4, 4, 5), (1, 4, 1, 5, 5)]  # (B, S, A, H, W)


def _masks(rng, shape, density=0.3):
    return (rng.random(shape) < density).astype(np.uint8)


def _pixels(mask):
    return {(i, j) for i, row in enumerate(mask.tolist()) for j, v in enumerate(row) if v}


def _brute_iou(x, y):
    px, py = _pixels(x), _pixels(y)
    union = len(px | py)
    return 1.0 if union == 0 else len(px & py) / union


def _brute_ged(samples, annotations, unbiased=False):
    """(ged, E[d(S,Y)], E[d(S,S')], E[d(Y,Y')]) per image, as [B, 4]: the paper code's loop."""
    return _stack(benchmarking.loop_ged(samples, annotations, unbiased=unbiased))


def _stack(result):
    return np.stack([np.asarray(v) for v in result], axis=1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("unbiased", [False, True])
def test_ged_matches_brute_force(shape, unbiased):
    b, s, a, h, w = shape
    rng = np.random.default_rng(sum(shape))
    samples, annotations = _masks(rng, (b, s, h, w)), _masks(rng, (b, a, h, w))
    if unbiased and min(s, a) < 2:
        with pytest.raises(ValueError, match=rf"S={s}, A={a}"):
            metrics.generalized_energy_distance(samples, annotations, unbiased=True)
        return
    got = metrics.generalized_energy_distance(samples, annotations, unbiased=unbiased)
    np.testing.assert_allclose(
        _stack(got), _brute_ged(samples, annotations, unbiased), rtol=1e-6, atol=1e-6
    )


def test_iou_matrices_are_exact():
    rng = np.random.default_rng(1)
    samples, annotations = _masks(rng, (2, 3, 5, 6)), _masks(rng, (2, 2, 5, 6))
    ious = metrics.pairwise_iou(samples, annotations)
    for got, xs, ys in [
        (ious.sample_sample, samples, samples),
        (ious.sample_annotation, samples, annotations),
        (ious.annotation_annotation, annotations, annotations),
    ]:
        for b in range(2):
            want = np.array([[np.float32(_brute_iou(x, y)) for y in ys[b]] for x in xs[b]])
            np.testing.assert_array_equal(np.asarray(got[b]), want)


def _with_empty(rng, which):
    samples, annotations = _masks(rng, (1, 4, 5, 5), 0.4), _masks(rng, (1, 3, 5, 5), 0.4)
    if which in ("samples", "both"):
        samples[:] = 0
    if which in ("annotations", "both"):
        annotations[:] = 0
    if which == "mixed":
        samples[0, [0, 2]] = 0
        annotations[0, 1] = 0
    return samples, annotations


@pytest.mark.parametrize("which", ["samples", "annotations", "both", "mixed"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_empty_mask_combinations(which, unbiased):
    samples, annotations = _with_empty(np.random.default_rng(2), which)
    got = _stack(metrics.generalized_energy_distance(samples, annotations, unbiased=unbiased))
    want = _brute_ged(samples, annotations, unbiased)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    if which == "both":
        np.testing.assert_array_equal(got, 0.0)
    if which == "samples":  # empty vs non-empty has distance 1, empty vs empty 0
        np.testing.assert_allclose(got[0, 1:3], [1.0, 0.0])
        np.testing.assert_allclose(got[0, 0], 2.0 - got[0, 3], rtol=1e-6)


def test_input_dtypes_agree():
    rng = np.random.default_rng(3)
    samples, annotations = _masks(rng, (2, 3, 4, 4)), _masks(rng, (2, 2, 4, 4))
    want = _stack(metrics.generalized_energy_distance(samples, annotations))
    for dtype in (bool, np.int32, np.float32):
        got = metrics.generalized_energy_distance(samples.astype(dtype), annotations.astype(dtype))
        np.testing.assert_array_equal(_stack(got), want)


def test_jit_eager_and_batching_agree():
    rng = np.random.default_rng(4)
    samples, annotations = _masks(rng, (3, 4, 6, 6)), _masks(rng, (3, 2, 6, 6))
    jitted = _stack(metrics.generalized_energy_distance(samples, annotations))
    with jax.disable_jit():
        eager = _stack(metrics.generalized_energy_distance(samples, annotations))
    single = np.concatenate(
        [
            _stack(metrics.generalized_energy_distance(samples[b : b + 1], annotations[b : b + 1]))
            for b in range(3)
        ]
    )
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(single, jitted, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "samples_shape, annotations_shape",
    [
        ((2, 3, 4, 4), (3, 2, 4, 4)),
        ((2, 3, 4, 4), (2, 2, 4, 5)),
        ((3, 4, 4), (2, 4, 4)),
        ((2, 0, 4, 4), (2, 2, 4, 4)),
    ],
)
@pytest.mark.parametrize(
    "fn", [metrics.generalized_energy_distance, metrics.variance_ncc, metrics.mean_mask_dice]
)
def test_bad_shapes_raise(fn, samples_shape, annotations_shape):
    with pytest.raises(ValueError, match=r"\(2, \d, 4, 4\)|\(3, 4, 4\)|\(2, 0, 4, 4\)"):
        fn(np.zeros(samples_shape), np.zeros(annotations_shape))


def _brute_hungarian(iou):
    """Best mean IoU over all matchings of S samples to annotations replicated to S."""
    s, a = iou.shape
    columns = [j for j in range(a) for _ in range(s // a)]
    return max(
        np.mean([iou[i, columns[p]] for i, p in enumerate(perm)])
        for perm in itertools.permutations(range(s))
    )


@pytest.mark.parametrize("num_samples, num_annotations", [(4, 4), (6, 2), (4, 1)])
def test_hungarian_matches_exhaustive_search(num_samples, num_annotations):
    iou = np.random.default_rng(5).random((3, num_samples, num_annotations))
    want = [_brute_hungarian(m) for m in iou]
    np.testing.assert_allclose(metrics.hungarian_matched_iou(iou), want, rtol=1e-12)


def test_hungarian_lcm_convention_and_errors():
    # S=2, A=3 -> 6 slots: 3 copies of each sample, 2 of each annotation. Best: sample i takes
    # both copies of annotation i and one copy of the shared annotation 2.
    iou = np.array([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]])
    np.testing.assert_allclose(metrics.hungarian_matched_iou(iou), [(1 + 1 + 0.5) * 2 / 6])
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        metrics.hungarian_matched_iou(np.ones((2, 3)))


def _phiseg_ncc(probs, annotations, eps=1e-8):
    """Independent per-image NCC following PHiSeg's loop structure, two classes stacked."""

    def onehot(p):
        return np.stack([1.0 - p, p], axis=-1)

    def xent(pred, target):
        return -np.sum(target * np.log(pred + eps), axis=-1)

    def ncc(a, v):
        a, v = a.ravel(), v.ravel()
        a = (a - a.mean()) / (a.std() * a.size)
        v = (v - v.mean()) / v.std()
        return np.correlate(a, v)[0]

    out = []
    for s, y in zip(probs.astype(np.float64), annotations.astype(np.float64), strict=True):
        mean_seg = onehot(s.mean(axis=0))
        e_ss = np.mean([xent(onehot(si), mean_seg) for si in s], axis=0)
        e_sy = [np.mean([xent(onehot(si), onehot(yj)) for si in s], axis=0) for yj in y]
        out.append(np.mean([ncc(e_ss, e) for e in e_sy]))
    return np.array(out)


@pytest.mark.parametrize("binary", [False, True])
def test_ncc_matches_phiseg_definition(binary):
    rng = np.random.default_rng(6)
    probs = rng.random((2, 5, 6, 6)).astype(np.float32)
    if binary:
        probs = (probs < 0.4).astype(np.float32)
    annotations = _masks(rng, (2, 3, 6, 6), 0.4)
    got = np.asarray(metrics.variance_ncc(probs, annotations))
    np.testing.assert_allclose(got, _phiseg_ncc(probs, annotations), rtol=2e-5, atol=2e-6)


def test_ncc_is_nan_for_constant_maps():
    samples = np.ones((1, 3, 4, 4), np.float32)  # identical hard samples -> E_ss constant
    annotations = _masks(np.random.default_rng(7), (1, 2, 4, 4), 0.5)
    assert np.isnan(np.asarray(metrics.variance_ncc(samples, annotations))).all()


def test_mean_mask_dice():
    rng = np.random.default_rng(8)
    samples, annotations = _masks(rng, (3, 4, 5, 5)), _masks(rng, (3, 2, 5, 5))
    samples[1] = 0
    samples[2] = 0
    annotations[2] = 0
    p, q = samples.mean(axis=1), annotations.mean(axis=1)
    total = p.sum(axis=(1, 2)) + q.sum(axis=(1, 2))
    want = 2 * (p * q).sum(axis=(1, 2)) / np.where(total == 0, 1, total)
    want[2] = 1.0  # both empty
    got = np.asarray(metrics.mean_mask_dice(samples, annotations))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[1] == 0.0


def test_evaluate_images_collects_all_metrics():
    rng = np.random.default_rng(9)
    probs = rng.random((2, 4, 5, 5)).astype(np.float32)
    samples, annotations = (probs < 0.5).astype(np.uint8), _masks(rng, (2, 2, 5, 5))
    got = metrics.evaluate_images(samples, annotations, probs)
    assert list(got) == [
        "ged",
        "sample_annotation_distance",
        "sample_diversity",
        "annotation_diversity",
        "hungarian_iou",
        "ncc",
        "dice",
    ]
    assert all(isinstance(v, np.ndarray) and v.shape == (2,) for v in got.values())
    np.testing.assert_allclose(got["ged"], _brute_ged(samples, annotations)[:, 0], rtol=1e-6)
    np.testing.assert_allclose(got["ncc"], metrics.variance_ncc(probs, annotations))


# ------------------------------------------------------------- classes and padded raters


def _brute_class_iou(x, y, num_classes):
    """Mean IoU over the foreground classes present in x or y; 1 if none is."""
    ious = [
        _brute_iou(x == c, y == c)
        for c in range(1, num_classes)
        if (x == c).any() or (y == c).any()
    ]
    return 1.0 if not ious else sum(ious) / len(ious)


def test_multiclass_ged_matches_brute_force():
    rng = np.random.default_rng(10)
    samples, annotations = rng.integers(0, 4, (2, 3, 5, 6)), rng.integers(0, 4, (2, 4, 5, 6))
    annotations[0, :2] = 0  # No foreground at all.
    annotations[1, 0] = np.where(annotations[1, 0] == 3, 0, annotations[1, 0])  # Class 3 absent.
    got = _stack(metrics.generalized_energy_distance(samples, annotations, num_classes=4))
    for b in range(2):

        def mean_d(xs, ys):
            return np.mean([1 - _brute_class_iou(x, y, 4) for x in xs for y in ys])

        cross = mean_d(samples[b], annotations[b])
        ss, yy = mean_d(samples[b], samples[b]), mean_d(annotations[b], annotations[b])
        np.testing.assert_allclose(got[b], [2 * cross - ss - yy, cross, ss, yy], rtol=1e-6)


def test_one_foreground_class_of_many_is_the_binary_metric():
    rng = np.random.default_rng(11)
    samples, annotations = _masks(rng, (2, 4, 6, 6)), _masks(rng, (2, 3, 6, 6))
    binary = metrics.evaluate_images(samples, annotations)
    multi = metrics.evaluate_images(2 * samples, 2 * annotations, num_classes=3)
    for name in ("ged", "hungarian_iou", "dice"):
        np.testing.assert_allclose(multi[name], binary[name], rtol=1e-6)
    np.testing.assert_array_equal(multi["iou_class1"], 1.0)  # Absent everywhere.


def test_per_class_iou_and_dice_match_brute_force():
    rng = np.random.default_rng(12)
    samples, annotations = rng.integers(0, 3, (2, 3, 5, 5)), rng.integers(0, 3, (2, 2, 5, 5))
    got = metrics.evaluate_images(samples, annotations, num_classes=3)
    for c in (1, 2):
        want = [
            np.mean([_brute_iou(s == c, y == c) for s in samples[b] for y in annotations[b]])
            for b in range(2)
        ]
        np.testing.assert_allclose(got[f"iou_class{c}"], want, rtol=1e-6)
    dice = []
    for b in range(2):
        p = np.stack([(samples[b] == c).mean(axis=0) for c in (1, 2)])
        q = np.stack([(annotations[b] == c).mean(axis=0) for c in (1, 2)])
        dice.append(
            np.mean(2 * (p * q).sum(axis=(1, 2)) / (p.sum(axis=(1, 2)) + q.sum(axis=(1, 2))))
        )
    np.testing.assert_allclose(got["dice"], dice, rtol=1e-6)


def _phiseg_ncc_classes(probs, annotations, num_classes, eps=1e-8):
    """PHiSeg's loop with K stacked classes: probs [B, S, H, W, K], annotations labels."""
    out = []
    for s, y in zip(probs.astype(np.float64), annotations, strict=True):
        mean_seg = s.mean(axis=0)

        def xent(pred, target):
            return -np.sum(target * np.log(pred + eps), axis=-1)

        e_ss = np.mean([xent(si, mean_seg) for si in s], axis=0).ravel()
        corrs = []
        for yj in y:
            e_sy = np.mean([xent(si, np.eye(num_classes)[yj]) for si in s], axis=0).ravel()
            corrs.append(np.corrcoef(e_ss, e_sy)[0, 1])
        out.append(np.mean(corrs))
    return np.array(out)


def test_multiclass_ncc_matches_phiseg_definition():
    rng = np.random.default_rng(13)
    logits = rng.normal(size=(2, 4, 6, 6, 3))
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    annotations = rng.integers(0, 3, (2, 3, 6, 6))
    got = np.asarray(metrics.variance_ncc(probs, annotations, num_classes=3))
    np.testing.assert_allclose(got, _phiseg_ncc_classes(probs, annotations, 3), rtol=2e-4)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_padded_raters_give_the_unpadded_metrics(num_classes):
    rng = np.random.default_rng(14)
    counts = [1, 2]  # Raters per image; padded to 3 with random junk.
    samples = rng.integers(0, num_classes, (2, 3, 6, 6))
    annotations = rng.integers(0, num_classes, (2, 3, 6, 6))
    probs = rng.random((2, 3, 6, 6)).astype(np.float32)
    if num_classes > 2:
        probs = rng.dirichlet(np.ones(num_classes), (2, 3, 6, 6)).astype(np.float32)
    valid = np.arange(3)[None, :] < np.array(counts)[:, None]
    got = metrics.evaluate_images(
        samples, annotations, probs, annotation_valid=valid, num_classes=num_classes
    )
    for b, count in enumerate(counts):
        one = metrics.evaluate_images(
            samples[b : b + 1],
            annotations[b : b + 1, :count],
            probs[b : b + 1],
            num_classes=num_classes,
        )
        for name, value in one.items():
            np.testing.assert_allclose(got[name][b], value[0], rtol=2e-6, err_msg=name)
    unbiased = metrics.generalized_energy_distance(
        samples, annotations, annotation_valid=valid, num_classes=num_classes, unbiased=True
    )
    assert np.isnan(unbiased.annotation_diversity[0])  # One rater: no pair.
    ious = metrics.pairwise_iou(samples, annotations, annotation_valid=valid)
    assert np.isnan(ious.sample_annotation[0, :, 1:]).all()
    assert not np.isnan(ious.sample_annotation[0, :, 0]).any()
