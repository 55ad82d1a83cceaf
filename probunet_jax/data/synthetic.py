"""A synthetic LIDC-like data set whose annotation distribution is known exactly.

Every image is an ``S x S`` (default 128; 64 for fast CPU runs) single-channel float32 patch in
[0, 1] that looks like a CT lung patch centred on a candidate lesion, with ``A`` (default 4)
binary expert masks. The masks are i.i.d. draws from a per-image distribution whose parameters
are stored with the example (feature ``'truth'``), so :func:`sample_annotations` can draw fresh
masks from exactly the distribution the stored ones came from (an oracle that attains the best
possible score).

Generative process (lengths in pixels, ``U(a, b)`` uniform, all draws independent):

Image.
  1. Parenchyma: a base level ``U(0.10, 0.25)`` plus two Gaussian random fields, a coarse one
     (correlation length ``S / 10``, std 0.04) and a fine texture (correlation length 1 px,
     std 0.02).
  2. Vessels: each of 3 slots is present with probability 0.6: a straight bright line through
     the patch, Gaussian cross-section of width ``U(0.5, 1.2) * S / 64``, contrast
     ``U(0.04, 0.12)``. Never annotated.
  3. Chest wall, with probability 0.3: a bright (+0.45) slightly curved half-plane, blurred,
     at distance ``U(0.35, 0.45) * S`` from the centre. Never annotated.
  4. Candidate structures (0, 1 or 2, see scenarios): each a round-ish blob with radius
     ``r0 = max(U(0.04, 0.12) * S, 2)``, boundary ``r(theta) = r0 (1 + sum_m a_m cos(m theta +
     phi_m))`` for ``m = 2, 3, 4`` with ``a_m ~ U(0, 0.08)``, and a blurred edge of width
     ``sigma = U(0.06, 0.3) * r0``: the profile is ``g(x) = Phi((r(theta) - |x - c|) / sigma)``
     (``Phi`` the normal CDF), added to the image as ``contrast * g``.
  5. White noise of std ``U(0.01, 0.03)``; the result is clipped to [0, 1].

Scenarios (probabilities ``SCENARIO_PROBS``):
  * ``EMPTY`` (0.2): no structure, every mask is empty.
  * ``SINGLE`` (0.5): one lesion near the centre (jitter ``U(-0.15, 0.15) * S`` per axis),
    contrast ``U(0.05, 0.5)``. Presence ambiguity: each grader marks it with probability
    ``sigmoid((contrast - 0.12) / 0.025)``, so faint lesions are marked by only some graders;
    the cue is the visible contrast.
  * ``PAIR`` (0.3): two nearby lesions (centres ``U(1.3, 1.8) * (r1 + r2)`` apart, midpoint
    jittered by ``U(-0.1, 0.1) * S``), contrasts ``U(0.15, 0.5)``. Multimodality: a grader marks
    both with probability 0.25, else only lesion k with probability ``0.75 * contrast_k /
    (contrast_1 + contrast_2)``; the cue is the relative contrast.

Extent ambiguity: each grader draws an iso-level ``t ~ U(0.2, 0.8)`` and outlines
``{g >= t}`` of every lesion it marks, i.e. the radius ``r(theta) - sigma Phi^-1(t)``: looser or
tighter by up to ``0.84 sigma``; the cue is the edge blur. A marked lesion's mask is never empty.

Multi-class option (``num_classes=3``): the same masks split into two foreground classes, the
lesion core (label 2: ``{g >= (1 + t) / 2}``, halfway between the grader's level and 1) and the
rim (label 1: the rest of the grader's outline). ``num_classes=2`` gives binary masks (label 1).

The latent choice of each grader is one of ``CHOICES``: 0 marks nothing, 1 the first lesion,
2 the second, 3 both. Stored per example (all float32 unless noted, lesion axis of size 2):
``scenario`` (int32), ``center`` [2, 2] (row, column), ``radius`` [2], ``blur`` [2],
``amplitude`` [2, 3], ``phase`` [2, 3], ``contrast`` [2] (0 for absent lesions), and the latents
of the stored masks, ``choice`` (int32) [A] and ``level`` [A].
"""

from collections.abc import Iterator, Mapping

import numpy as np
from scipy import special

EMPTY, SINGLE, PAIR = 0, 1, 2
SCENARIO_PROBS = (0.2, 0.5, 0.3)
CHOICES = 4  # 0: nothing, 1: first lesion, 2: second lesion, 3: both.
_SHAPE_KEYS = ("center", "radius", "blur", "amplitude", "phase")

RADIUS_RANGE = (0.04, 0.12)  # Lesion radius, fraction of the image size.
MIN_RADIUS = 2.0  # Pixels.
BLUR_RANGE = (0.06, 0.3)  # Edge blur, fraction of the radius.
NUM_HARMONICS = 3  # Boundary harmonics m = 2, 3, 4.
MAX_HARMONIC = 0.08
SINGLE_JITTER = 0.15  # Lesion centre jitter, fraction of the image size.
PAIR_JITTER = 0.1
PAIR_SEPARATION = (1.3, 1.8)  # Centre distance, in units of r1 + r2.
SINGLE_CONTRAST = (0.05, 0.5)
PAIR_CONTRAST = (0.15, 0.5)
PRESENCE_MIDPOINT = 0.12  # Contrast marked by half of the graders.
PRESENCE_SCALE = 0.025
PAIR_BOTH_PROB = 0.25
LEVEL_RANGE = (0.2, 0.8)  # Graders' iso-levels.

BASE_LEVEL = (0.10, 0.25)
COARSE_STD, COARSE_LENGTH = 0.04, 0.1  # Length as a fraction of the image size.
FINE_STD, FINE_LENGTH = 0.02, 1.0  # Length in pixels.
NUM_VESSELS, VESSEL_PROB = 3, 0.6
VESSEL_WIDTH = (0.5, 1.2)  # Pixels at 64 x 64, scaled with the image size.
VESSEL_CONTRAST = (0.04, 0.12)
WALL_PROB, WALL_CONTRAST = 0.3, 0.45
WALL_DISTANCE = (0.35, 0.45)  # Fraction of the image size.
NOISE_STD = (0.01, 0.03)

CHUNK_SIZE = 256  # Examples generated per random stream; fixed so that data are reproducible.


def presence_probability(contrast: np.ndarray) -> np.ndarray:
    """Probability that a grader marks a single lesion of this contrast (any shape)."""
    return special.expit((np.asarray(contrast) - PRESENCE_MIDPOINT) / PRESENCE_SCALE)


def choice_probabilities(truth: Mapping[str, np.ndarray]) -> np.ndarray:
    """Distribution of a grader's choice; ``truth`` batched [B, ...] -> float64 [B, CHOICES]."""
    scenario = np.asarray(truth["scenario"])
    contrast = np.asarray(truth["contrast"], np.float64)
    p_mark = presence_probability(contrast[:, 0])
    share = contrast[:, 0] / np.maximum(contrast.sum(axis=1), 1e-12)
    zero = np.zeros_like(p_mark)
    probs = {
        EMPTY: np.stack([1.0 + zero, zero, zero, zero], axis=1),
        SINGLE: np.stack([1.0 - p_mark, p_mark, zero, zero], axis=1),
        PAIR: np.stack(
            [
                zero,
                (1 - PAIR_BOTH_PROB) * share,
                (1 - PAIR_BOTH_PROB) * (1 - share),
                zero + PAIR_BOTH_PROB,
            ],
            axis=1,
        ),
    }
    return np.select([(scenario == s)[:, None] for s in probs], list(probs.values()), np.nan)


def _coordinates(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, rows and columns, each [S, S]."""
    grid = np.arange(image_size, dtype=np.float32)
    return np.meshgrid(grid, grid, indexing="ij")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, via tanh (fast in float32)."""
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def lesion_profiles(truth: Mapping[str, np.ndarray], image_size: int) -> np.ndarray:
    """Soft lesion profiles ``g`` in [0, 1]: truth batched [B, ...] -> float32 [B, 2, S, S].

    Absent lesions (contrast 0) have a profile of 0; only present ones are computed.
    """
    present = np.asarray(truth["contrast"]) > 0  # [B, 2]
    lesion = {k: np.asarray(truth[k], np.float32)[present] for k in _SHAPE_KEYS}  # [K, ...]
    rows, cols = _coordinates(image_size)
    center = lesion["center"][:, :, None, None]
    offset = (cols - center[:, 1]) + 1j * (rows - center[:, 0])  # complex64 [K, S, S]
    distance = np.abs(offset)
    direction = offset / np.maximum(distance, 1e-6)  # exp(i theta)
    harmonics = (lesion["amplitude"] * np.exp(1j * lesion["phase"])).astype(np.complex64)
    wobble, power = np.zeros_like(distance), direction
    for m in range(NUM_HARMONICS):  # Orders 2, 3, 4: Re(c_m exp(i m theta)).
        power = power * direction
        wobble += (harmonics[:, m, None, None] * power).real
    radius = lesion["radius"][:, None, None] * (1 + wobble)
    profiles = np.zeros((*present.shape, image_size, image_size), np.float32)
    profiles[present] = _sigmoid((radius - distance) / lesion["blur"][:, None, None])
    return profiles


def render_masks(
    profiles: np.ndarray, choice: np.ndarray, level: np.ndarray, num_classes: int = 2
) -> np.ndarray:
    """Masks of graders with the given latents.

    Args:
      profiles: float [B, 2, S, S] lesion profiles.
      choice: int [B, N] in ``range(CHOICES)``, a bit mask of the lesions marked.
      level: float [B, N] iso-levels in (0, 1).
      num_classes: 2 (binary) or 3 (rim 1, core 2; see the module doc).

    Returns:
      uint8 [B, N, S, S]: 1 on the union over marked lesions of ``profile >= level``; with 3
      classes, 2 where also ``profile >= (1 + level) / 2``.
    """
    marked = ((np.asarray(choice)[..., None] >> np.arange(2)) & 1 == 1)[..., None, None]
    level = np.asarray(level)[:, :, None, None, None]  # [B, N, 1, 1, 1]
    masks = ((profiles[:, None] >= level) & marked).any(axis=2).astype(np.uint8)
    if num_classes == 3:
        masks += ((profiles[:, None] >= (1 + level) / 2) & marked).any(axis=2)
    elif num_classes != 2:
        raise ValueError(f"The synthetic set has 2 or 3 classes, got {num_classes=}.")
    return masks


def sample_latents(
    truth: Mapping[str, np.ndarray], num_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draws graders' latents: truth batched [B, ...] -> (choice int32 [B, N], level float32)."""
    probs = choice_probabilities(truth)
    uniform = rng.random((probs.shape[0], num_samples, 1))
    choice = (uniform > np.cumsum(probs, axis=1)[:, None, :-1]).sum(axis=-1).astype(np.int32)
    level = rng.uniform(*LEVEL_RANGE, size=choice.shape).astype(np.float32)
    return choice, level


def sample_annotations_batch(
    examples: Mapping[str, np.ndarray],
    num_samples: int,
    rng: np.random.Generator,
    num_classes: int = 2,
) -> np.ndarray:
    """Oracle for a batch: fresh masks from each image's true distribution, uint8 [B, N, H, W].

    ``examples`` holds batched stored features: ``'image'`` [B, H, W, 1] and ``'truth'``;
    ``num_classes`` must be the data set's.
    """
    image_size = np.shape(examples["image"])[1]
    truth = examples["truth"]
    choice, level = sample_latents(truth, num_samples, rng)
    return render_masks(lesion_profiles(truth, image_size), choice, level, num_classes)


def sample_annotations(
    example: Mapping[str, np.ndarray],
    num_samples: int,
    rng: np.random.Generator,
    num_classes: int = 2,
) -> np.ndarray:
    """Oracle: ``num_samples`` fresh masks from one stored example's distribution.

    Returns uint8 [N, H, W]; ``example`` is a stored example (``'image'`` and ``'truth'``).
    """
    batched = {
        "image": np.asarray(example["image"])[None],
        "truth": {k: np.asarray(v)[None] for k, v in example["truth"].items()},
    }
    return sample_annotations_batch(batched, num_samples, rng, num_classes)[0]


def _lesion_shapes(num: int, image_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Radius, blur and boundary harmonics of 2 lesion slots, each [num, 2, ...]."""
    radius = np.maximum(rng.uniform(*RADIUS_RANGE, (num, 2)) * image_size, MIN_RADIUS)
    return {
        "radius": radius,
        "blur": rng.uniform(*BLUR_RANGE, (num, 2)) * radius,
        "amplitude": rng.uniform(0, MAX_HARMONIC, (num, 2, NUM_HARMONICS)),
        "phase": rng.uniform(0, 2 * np.pi, (num, 2, NUM_HARMONICS)),
    }


def sample_truth(num: int, image_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draws the per-image generative parameters (no grader latents), each batched [num, ...]."""
    scenario = rng.choice(len(SCENARIO_PROBS), size=num, p=SCENARIO_PROBS).astype(np.int32)
    truth = _lesion_shapes(num, image_size, rng)
    radius = truth["radius"]
    middle = image_size / 2 - 0.5
    single_center = middle + rng.uniform(-SINGLE_JITTER, SINGLE_JITTER, (num, 2)) * image_size
    pair_middle = middle + rng.uniform(-PAIR_JITTER, PAIR_JITTER, (num, 2)) * image_size
    half_gap = rng.uniform(*PAIR_SEPARATION, num) * radius.sum(axis=1) / 2
    direction = rng.uniform(0, 2 * np.pi, num)
    offset = half_gap[:, None] * np.stack([np.sin(direction), np.cos(direction)], axis=1)
    pair_center = np.stack([pair_middle - offset, pair_middle + offset], axis=1)
    is_pair = (scenario == PAIR)[:, None, None]
    truth["center"] = np.where(is_pair, pair_center, single_center[:, None, :])
    contrast = np.where(
        (scenario == PAIR)[:, None],
        rng.uniform(*PAIR_CONTRAST, (num, 2)),
        rng.uniform(*SINGLE_CONTRAST, (num, 2)) * [1, 0],
    )
    truth["contrast"] = contrast * (scenario != EMPTY)[:, None]
    truth = {k: v.astype(np.float32) for k, v in truth.items()}
    return {"scenario": scenario, **truth}


def _parenchyma(num: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean Gaussian texture: coarse plus fine Gaussian-correlated fields, [num, S, S]."""
    squared = np.fft.fftfreq(image_size)[:, None] ** 2 + np.fft.rfftfreq(image_size) ** 2
    filters = []
    for std, length in ((COARSE_STD, COARSE_LENGTH * image_size), (FINE_STD, FINE_LENGTH)):
        gain = np.exp(-2 * (np.pi * length) ** 2 * squared)
        full = np.concatenate([gain, gain[:, 1 : (image_size + 1) // 2]], axis=1)
        filters.append(std * gain / np.sqrt(np.mean(full**2)))  # Unit variance, then std.
    noise = rng.standard_normal((num, image_size, image_size), dtype=np.float32)
    transfer = sum(filters).astype(np.float32)
    return np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=(image_size, image_size))


def _uniform(rng: np.random.Generator, low: float, high: float, shape: tuple[int, ...]):
    """float32 uniform draws."""
    return rng.uniform(low, high, shape).astype(np.float32)


def _vessels(num: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Thin straight bright lines, never annotated, [num, S, S]."""
    rows, cols = _coordinates(image_size)
    shape = (num, NUM_VESSELS, 1, 1)
    point = _uniform(rng, 0, image_size, (2, *shape))
    angle = _uniform(rng, 0, np.pi, shape)
    distance = (rows - point[0]) * np.cos(angle) - (cols - point[1]) * np.sin(angle)
    width = _uniform(rng, *VESSEL_WIDTH, shape) * np.float32(image_size / 64)
    contrast = _uniform(rng, *VESSEL_CONTRAST, shape) * (rng.random(shape) < VESSEL_PROB)
    return (contrast * np.exp(-0.5 * (distance / width) ** 2)).sum(axis=1)


def _chest_wall(num: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """A bright blurred, slightly curved half-plane away from the centre, [num, S, S]."""
    rows, cols = _coordinates(image_size)
    rows, cols = rows - image_size / 2, cols - image_size / 2
    shape = (num, 1, 1)
    angle = _uniform(rng, 0, 2 * np.pi, shape)
    along = rows * np.cos(angle) + cols * np.sin(angle)
    across = cols * np.cos(angle) - rows * np.sin(angle)
    bend = _uniform(rng, -0.5, 0.5, shape) * across**2 / image_size
    depth = along + bend - _uniform(rng, *WALL_DISTANCE, shape) * image_size
    present = rng.random(shape) < WALL_PROB
    return present * WALL_CONTRAST * _sigmoid(depth / np.float32(1 + 0.01 * image_size))


def render_images(
    truth: Mapping[str, np.ndarray], profiles: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Images of the given lesions on random backgrounds, float32 [B, S, S, 1] in [0, 1]."""
    num, image_size = profiles.shape[0], profiles.shape[-1]
    image = (
        rng.uniform(*BASE_LEVEL, (num, 1, 1))
        + _parenchyma(num, image_size, rng)
        + _vessels(num, image_size, rng)
        + _chest_wall(num, image_size, rng)
        + (np.asarray(truth["contrast"])[..., None, None] * profiles).sum(axis=1)
        + rng.uniform(*NOISE_STD, (num, 1, 1)) * rng.standard_normal((num, image_size, image_size))
    )
    return np.clip(image, 0, 1).astype(np.float32)[..., None]


def generate_batch(
    num: int,
    image_size: int,
    num_annotations: int,
    rng: np.random.Generator,
    num_classes: int = 2,
) -> dict[str, np.ndarray | dict[str, np.ndarray]]:
    """``num`` examples: ``'image'`` float32 [num, S, S, 1], ``'masks'`` uint8 [num, A, S, S]
    (labels ``0..num_classes-1``) and ``'truth'`` (the generative parameters and the stored
    masks' latents)."""
    truth = sample_truth(num, image_size, rng)
    profiles = lesion_profiles(truth, image_size)
    choice, level = sample_latents(truth, num_annotations, rng)
    return {
        "image": render_images(truth, profiles, rng),
        "masks": render_masks(profiles, choice, level, num_classes),
        "truth": {**truth, "choice": choice, "level": level},
    }


def generate(
    num: int,
    image_size: int,
    num_annotations: int,
    seed: int | tuple[int, ...],
    num_classes: int = 2,
) -> Iterator[dict[str, np.ndarray | dict[str, np.ndarray]]]:
    """Yields ``num`` examples in batches of at most ``CHUNK_SIZE`` (see :func:`generate_batch`).

    Deterministic in ``seed`` (an int or a tuple of ints, e.g. ``(seed, split_index)``): chunk
    ``k`` uses ``numpy.random.default_rng((*seed, k))``.
    """
    if image_size < 8 or num_annotations < 1 or num < 0:
        raise ValueError(
            f"Need image_size >= 8, num_annotations >= 1 and num >= 0, got {image_size=}, "
            f"{num_annotations=}, {num=}."
        )
    seed = tuple(np.atleast_1d(seed).tolist())
    for chunk, start in enumerate(range(0, num, CHUNK_SIZE)):
        rng = np.random.default_rng((*seed, chunk))
        size = min(CHUNK_SIZE, num - start)
        yield generate_batch(size, image_size, num_annotations, rng, num_classes)
