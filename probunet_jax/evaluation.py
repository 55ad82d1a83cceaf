"""Test-set evaluation: S samples per image, every metric, the oracle on synthetic data.

:func:`evaluate_model` is what ``experiments/evaluate.py`` and ``train.train_and_evaluate``
call. Per batch of ``config.eval.batch_size`` images it

1. draws S samples z ~ p(z|x) per image with the jit-compiled sampler
   (:func:`probunet_jax.sampling.sample_logits`, vmapped over images so that image ``i`` gets
   the key ``fold_in(key, i)``: the results do not depend on the batch size),
2. turns the logits into hard masks and foreground probabilities (sigmoid; the NCC uses them),
3. computes every per-image metric of :func:`probunet_jax.metrics.evaluate_images` on device,
4. computes in numpy, on the valid rows, the pixel calibration against the raters and the CI
   score (``calibration.calibration_metrics``, the rater validity ``batch['rater_valid']``
   where the data carries it), and on the synthetic set the metrics against the true
   annotation distribution (``truth.truth_metrics``) and the oracle: S fresh masks from each
   image's true annotation distribution (see :func:`oracle_samples`), its GED and its own
   truth columns (``oracle_*`` columns): the best scores attainable, the Monte Carlo floor,
   and whether the latent carries the graders' choices: each annotation's posterior
   reconstruction (:func:`posterior_masks`, ``truth.reconstruction_choice_accuracy``),
5. adds up the pixel reliability bins over batches (``rater_pixel``, ``truth_pixel``,
   ``oracle_truth_pixel``); with the presence curves of the per-image columns they are the
   ``reliability`` curves of ``summary.json``.

Padding rows of the last batch are dropped. Batches are sharded over this process's devices
(variables replicated); with several processes each evaluates the whole split and process 0
writes the files. The first few images with their samples are kept
for the sample grids (Fig. 4), and everything is written with
:func:`probunet_jax.reporting.write_evaluation` when a workdir is given.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from probunet_jax import calibration, data, metrics, presets, reporting, sampling, sharding
from probunet_jax import config as config_lib
from probunet_jax import truth as truth_lib
from probunet_jax.data import synthetic
from probunet_jax.metric_labels import ORACLE_PREFIX
from probunet_jax.model import ProbabilisticUNet, model_from_config

NUM_EXAMPLES = 8  # Images kept with their samples for the sample grids (Fig. 4).
ORACLE_STREAM = 0x0AC1E  # Separates the oracle's numpy seeds from other uses of the key.
LOG_EVERY_S = 10.0
ORACLE_TRUTH_COLUMNS = ("truth_ece", "truth_brier", "presence_rate", "mode_tvd")


class SampleBatch(NamedTuple):
    """S samples of each image of a batch."""

    masks: jax.Array  # [B, S, H, W] uint8, hard masks (foreground != 0)
    probs: jax.Array  # [B, S, H, W] float32, foreground probabilities


def foreground_probs(logits: jax.Array) -> jax.Array:
    """Foreground probability `[...]` from logits `[..., C]`: sigmoid if C = 1, else 1 − p(0)."""
    if logits.shape[-1] == 1:
        return jax.nn.sigmoid(logits[..., 0])
    return 1.0 - jax.nn.softmax(logits, axis=-1)[..., 0]


def image_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
    """One key per image `[B]`: ``fold_in(key, index)`` of its test-set index `[B]`."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


@functools.partial(jax.jit, static_argnames=("model", "num_samples"))
def sample_batch(
    model: ProbabilisticUNet,
    variables: dict,
    images: jax.Array,
    keys: jax.Array,
    num_samples: int,
) -> SampleBatch:
    """S samples for each image `[B, H, W, C]`, image ``b`` drawn with ``keys[b]``."""

    def one_image(image: jax.Array, key: jax.Array) -> jax.Array:
        logits = sampling.sample_logits(model, variables, image[None], key, num_samples)
        return logits[0]  # [S, H, W, C]

    logits = jax.vmap(one_image)(images, keys)  # [B, S, H, W, C]
    return SampleBatch(sampling.logits_to_masks(logits), foreground_probs(logits))


@functools.partial(jax.jit, static_argnames=("model",))
def posterior_masks(
    model: ProbabilisticUNet, variables: dict, images: jax.Array, annotations: jax.Array
) -> jax.Array:
    """The posterior reconstruction of every annotation (``sampling.posterior_reconstruction``),
    hard masks `[B, A, H, W]` uint8 from images `[B, H, W, C]` and annotations `[B, A, H, W]`."""
    num_images, num_raters = annotations.shape[:2]
    logits = sampling.posterior_reconstruction(
        model,
        variables,
        jnp.repeat(images, num_raters, axis=0),
        annotations.reshape(num_images * num_raters, *annotations.shape[2:]),
    )
    return sampling.logits_to_masks(logits).reshape(annotations.shape)


class Placement(NamedTuple):
    """Where evaluation runs: this process's devices, images sharded over them if > 1."""

    variables: dict  # replicated over ``batch`` devices
    batch: NamedSharding  # sharding of per-image arrays `[B, ...]`


def _local_replica(x):
    """A fully addressable copy of a replicated array (e.g. from a multi-host training mesh)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return x
    if not x.sharding.is_fully_replicated:
        raise ValueError(
            f"evaluation needs replicated variables, got an array sharded as {x.sharding}."
        )
    return x.addressable_data(0)


def place(variables: dict, batch_size: int) -> Placement:
    """Replicates ``variables`` over this process's devices and shards batches over them; a
    single device if the batch size is not divisible by the local device count."""
    devices = jax.local_devices()
    if batch_size % len(devices):
        logging.info(
            "eval batch size %d is not divisible by %d local devices: evaluating on one device.",
            batch_size,
            len(devices),
        )
        devices = devices[:1]
    mesh = sharding.make_mesh(devices)
    replicated = NamedSharding(mesh, PartitionSpec())
    variables = jax.device_put(jax.tree.map(_local_replica, variables), replicated)
    return Placement(variables, NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS)))


# --------------------------------------------------------------------------- oracle


def _numpy_seed(key: jax.Array) -> tuple[int, ...]:
    """The words of a JAX key as a numpy seed sequence."""
    return tuple(int(w) for w in np.asarray(jax.random.key_data(key)).ravel())


def oracle_samples(
    truth: Mapping[str, np.ndarray],
    indices: np.ndarray,
    image_size: int,
    num_samples: int,
    key: jax.Array,
    num_classes: int = 2,
) -> np.ndarray:
    """S fresh masks per image from its true annotation distribution, uint8 `[B, S, H, W]`
    (labels 0..``num_classes`` − 1, as the data set's).

    ``truth`` holds the batched ``'truth'`` features `[B, ...]` of synthetic examples and
    ``indices`` `[B]` their test-set indices: image ``i``'s graders' latents are drawn from
    ``numpy.random.default_rng((*key words, ORACLE_STREAM, i))``, so the oracle does not
    depend on the batch size, and all models evaluated with the same key share it.
    """
    seed = _numpy_seed(key)
    choices, levels = [], []
    for b, index in enumerate(np.asarray(indices)):  # Only S latents per image here.
        rng = np.random.default_rng((*seed, ORACLE_STREAM, int(index)))
        one = {name: np.asarray(value)[b : b + 1] for name, value in truth.items()}
        choice, level = synthetic.sample_latents(one, num_samples, rng)
        choices.append(choice)
        levels.append(level)
    profiles = synthetic.lesion_profiles(truth, image_size)  # Rendering is batched.
    choice, level = np.concatenate(choices), np.concatenate(levels)
    return synthetic.render_masks(profiles, choice, level, num_classes)


def oracle_metrics(
    oracle: np.ndarray, annotations: np.ndarray, num_classes: int = 2
) -> dict[str, np.ndarray]:
    """``oracle_ged`` and its break-up `[B]` of oracle masks `[B, S, H, W]` vs annotations."""
    result = metrics.generalized_energy_distance(oracle, annotations, num_classes=num_classes)
    return {
        ORACLE_PREFIX + "ged": np.asarray(result.ged),
        ORACLE_PREFIX + "sample_annotation_distance": np.asarray(result.sample_annotation_distance),
        ORACLE_PREFIX + "sample_diversity": np.asarray(result.sample_diversity),
    }


def _stack_truth(examples: list[dict]) -> dict[str, np.ndarray]:
    return {name: np.stack([e["truth"][name] for e in examples]) for name in examples[0]["truth"]}


# --------------------------------------------------------------------------- host metrics


class BatchMetrics(NamedTuple):
    """Per-image columns of a batch's valid rows and their pixel reliability bins."""

    columns: dict[str, np.ndarray]  # each [B]
    pixel_bins: dict[str, calibration.ReliabilityBins]  # by curve name, each [B, K]


def rater_calibration(
    samples: SampleBatch, annotations: np.ndarray, annotation_valid: np.ndarray | None
) -> BatchMetrics:
    """``calibration.calibration_metrics`` of samples `[B, S, H, W]` against the raters'
    masks `[B, A, H, W]` (``annotation_valid`` `[B, A]`, None: all), bins ``rater_pixel``."""
    result = calibration.calibration_metrics(
        samples.masks, annotations, samples.probs, annotation_valid
    )
    return BatchMetrics(result.columns, {"rater_pixel": result.pixel_bins})


def truth_and_oracle(
    samples: SampleBatch,
    oracle: np.ndarray,
    annotations: np.ndarray,
    truth: Mapping,
    num_classes: int = 2,
) -> BatchMetrics:
    """Synthetic set: ``truth.truth_metrics`` of the samples `[B, S, H, W]` and, prefixed
    ``oracle_``, the oracle's GED against the annotations `[B, A, H, W]` and its own truth
    columns ORACLE_TRUTH_COLUMNS (its masks `[B, S, H, W]`, frequency as prediction: the
    Monte Carlo floor); bins ``truth_pixel`` and ``oracle_truth_pixel``."""
    model = truth_lib.truth_metrics(samples.masks, samples.probs, truth)
    own = truth_lib.truth_metrics(oracle, None, truth)
    columns = {**model.columns, **oracle_metrics(oracle, annotations, num_classes)}
    columns |= {ORACLE_PREFIX + name: own.columns[name] for name in ORACLE_TRUTH_COLUMNS}
    bins = {"truth_pixel": model.pixel_bins, ORACLE_PREFIX + "truth_pixel": own.pixel_bins}
    return BatchMetrics(columns, bins)


def reliability(
    per_image: Mapping[str, np.ndarray], pixel_bins: Mapping[str, calibration.ReliabilityBins]
) -> dict[str, calibration.ReliabilityCurve]:
    """The curves of ``summary.json``: the pixel curves of the bins `[N, K]` summed over
    images, and on the synthetic set the presence curves of the model and the oracle."""
    curves = {name: calibration.reliability_curve(bins) for name, bins in pixel_bins.items()}
    for prefix in ("", ORACLE_PREFIX):
        if prefix + "presence_rate" in per_image:
            curves[prefix + "presence"] = truth_lib.presence_reliability(
                per_image[prefix + "presence_rate"], per_image["presence_probability"]
            )
    return curves


# --------------------------------------------------------------------------- evaluation


class _Collected(NamedTuple):
    per_image: dict[str, np.ndarray]
    examples: reporting.Examples
    reliability: dict[str, calibration.ReliabilityCurve]


class _Throughput:
    """Logs images/s every LOG_EVERY_S and at the end (also after the first, compiling batch)."""

    def __init__(self, split: str, num_samples: int):
        self.split, self.num_samples = split, num_samples
        self.start = self.last_log = time.perf_counter()
        self.done, self.first = 0, None  # first: (time, images) after the first batch

    def update(self, images: int) -> None:
        self.done += images
        now = time.perf_counter()
        self.first = self.first or (now, self.done)
        if now - self.last_log > LOG_EVERY_S:
            rate = self.done / (now - self.start)
            logging.info("eval %s: %d images, %.1f images/s", self.split, self.done, rate)
            self.last_log = now

    def finish(self) -> None:
        end = time.perf_counter()
        steady = ""
        if self.first and self.done > self.first[1]:
            rate = (self.done - self.first[1]) / max(end - self.first[0], 1e-9)
            steady = f", {rate:.1f} after the first batch"
        logging.info(
            "eval %s: %d images x %d samples in %.1f s (%.1f images/s%s)",
            self.split,
            self.done,
            self.num_samples,
            end - self.start,
            self.done / max(end - self.start, 1e-9),
            steady,
        )


class _Oracle(NamedTuple):
    """What the oracle of the synthetic set needs: the data source (for ``'truth'``), its key
    and the number of classes of its masks."""

    source: object
    key: jax.Array
    num_classes: int


def _host_metrics(
    batch: Mapping, samples: SampleBatch, oracle: _Oracle | None, reconstructions: np.ndarray
) -> list:
    """The :class:`BatchMetrics` computed in numpy for the valid rows of a batch (``samples``
    `[B, S, H, W]` and the posterior ``reconstructions`` `[B, A, H, W]` already restricted to
    them): rater calibration; truth, oracle and posterior choice accuracy if given an oracle."""
    valid = np.asarray(batch["valid"])
    if not valid.any():
        return []
    annotations = np.asarray(batch["masks"])[valid]
    rater_valid = np.asarray(batch["rater_valid"])[valid]
    parts = [rater_calibration(samples, annotations, rater_valid)]
    if oracle is not None:
        indices = np.asarray(batch["index"])[valid]
        truth = _stack_truth(oracle.source.__getitems__(indices.tolist()))
        size, num_samples = annotations.shape[-1], samples.masks.shape[1]
        masks = oracle_samples(truth, indices, size, num_samples, oracle.key, oracle.num_classes)
        parts.append(truth_and_oracle(samples, masks, annotations, truth, oracle.num_classes))
        accuracy = truth_lib.reconstruction_choice_accuracy(
            reconstructions, annotations, truth, rater_valid
        )
        parts.append(BatchMetrics({"posterior_choice_accuracy": accuracy}, {}))
    return parts


def _append(store: dict[str, list], values: Mapping) -> None:
    for name, value in values.items():
        store.setdefault(name, []).append(value)


def _collect(
    config: ml_collections.ConfigDict,
    model: ProbabilisticUNet,
    variables: dict,
    split: str,
    num_samples: int,
    batch_size: int,
    key: jax.Array,
) -> _Collected:
    """Runs the model over ``split``: per-image columns (padding dropped), the examples and
    the reliability curves."""
    source = data.get_data_source(config.data, split)
    num_classes = data.dataset_info(config.data).num_classes
    sample_key, oracle_key = jax.random.split(key)
    with_oracle = config.data.name == "synthetic" and "truth" in source[0]
    oracle = _Oracle(source, oracle_key, num_classes) if with_oracle else None
    # Every process evaluates the whole split (process 0 writes): no cross-host gather needed.
    batches = data.make_eval_batches(
        config.data, split, batch_size, process_index=0, process_count=1
    )
    placement = place(variables, batch_size)
    columns: dict[str, list[np.ndarray]] = {}
    bins: dict[str, list[calibration.ReliabilityBins]] = {}
    kept: list[tuple[np.ndarray, ...]] = []
    throughput = _Throughput(split, num_samples)
    for batch in batches:
        valid, indices = np.asarray(batch["valid"]), np.asarray(batch["index"])
        images, annotations, rater_valid, keys = jax.device_put(
            (
                batch["image"],
                batch["masks"],
                batch["rater_valid"],
                image_keys(sample_key, jnp.asarray(indices)),
            ),
            placement.batch,
        )
        samples = sample_batch(model, placement.variables, images, keys, num_samples)
        # The full (padded) batch keeps one compiled shape; padding rows are dropped after.
        values = metrics.evaluate_images(
            samples.masks,
            annotations,
            samples.probs if num_classes == 2 else None,  # K > 2: the NCC of the labels.
            annotation_valid=rater_valid,
            num_classes=num_classes,
        )
        _append(columns, {name: v[valid] for name, v in values.items()} | {"index": indices[valid]})
        samples = SampleBatch(*(np.asarray(x)[valid] for x in samples))
        reconstructions = None
        if oracle is not None:
            reconstructions = posterior_masks(model, placement.variables, images, annotations)
            reconstructions = np.asarray(reconstructions)[valid]
        for part in _host_metrics(batch, samples, oracle, reconstructions):
            _append(columns, part.columns)
            _append(bins, part.pixel_bins)
        if sum(len(k[-1]) for k in kept) < NUM_EXAMPLES:
            shown = (batch["image"][valid], batch["masks"][valid], samples.masks)
            kept.append((*shown, indices[valid]))
        throughput.update(int(valid.sum()))
    throughput.finish()
    per_image = {name: np.concatenate(parts) for name, parts in columns.items()}
    pixel_bins = {
        name: calibration.ReliabilityBins(*(np.concatenate(b) for b in zip(*parts, strict=True)))
        for name, parts in bins.items()
    }
    shown = (np.concatenate(part)[:NUM_EXAMPLES] for part in zip(*kept, strict=True))
    examples = reporting.Examples(*shown)
    return _Collected(per_image, examples, reliability(per_image, pixel_bins))


def evaluate_model(
    config: ml_collections.ConfigDict,
    variables: dict,
    *,
    workdir: str | os.PathLike | None = None,
    split: str | None = None,
    num_samples: int | None = None,
    key: jax.Array | None = None,
    batch_size: int | None = None,
    model_name: str | None = None,
    model: ProbabilisticUNet | None = None,
) -> dict:
    """Evaluates the model of ``config.model`` with ``variables`` on a split of ``config.data``.

    Args:
      config: the run's config (``model``, ``data``, ``eval``: ``num_samples``, ``batch_size``,
        ``split``; ``seed``).
      variables: the model's ``{'params', 'batch_stats'}``.
      workdir: if given, ``workdir/eval/{per_image.csv,samples.npz,summary.json}`` are written.
      split: 'test' (default ``config.eval.split``), 'validation' or 'train'.
      num_samples: samples per image (default ``config.eval.num_samples``; the paper's 16).
      key: sampling key (default ``jax.random.key(config.seed)``); results are a deterministic
        function of it, whatever the batch size.
      batch_size: images per batch (default ``config.eval.batch_size``).
      model_name: the name in the summary and the comparison (default
        ``presets.model_name``: the variant, and its preset_name in brackets if set).
      model: the model of ``config.model`` if the caller has it already.

    Returns:
      the summary (the content of ``summary.json``): ``summary['metrics'][column]`` holds the
      ``mean``, ``std``, ``median`` and ``count`` of each per-image column, e.g. ``'ged'``
      and, on synthetic data, ``'oracle_ged'``.
    """
    split = config.eval.split if split is None else split
    num_samples = config.eval.num_samples if num_samples is None else num_samples
    batch_size = config.eval.batch_size if batch_size is None else batch_size
    config_lib.check_eval_arguments(split, num_samples, batch_size, 1)
    num_samples, batch_size = int(num_samples), int(batch_size)
    key = jax.random.key(config.seed) if key is None else key
    model_name = presets.model_name(config.model) if model_name is None else model_name
    model = model_from_config(config.model) if model is None else model
    collected = _collect(config, model, variables, split, num_samples, batch_size, key)
    per_image, curves = collected.per_image, collected.reliability
    if workdir is None or jax.process_index() != 0:
        return reporting.summarize(
            model_name, per_image, num_samples=num_samples, reliability=curves
        )
    folder = reporting.write_evaluation(
        workdir,
        model_name,
        per_image,
        collected.examples,
        num_samples=num_samples,
        reliability=curves,
    )
    logging.info("wrote the evaluation to %s", folder)
    return json.loads((Path(folder) / reporting.SUMMARY_FILE).read_text())
