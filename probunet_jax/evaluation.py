"""Test-set evaluation: S samples per image, every metric, the oracle on synthetic data.

:func:`evaluate_model` is what ``experiments/evaluate.py`` and ``train.train_and_evaluate``
call. Per batch of ``config.eval.batch_size`` images it

1. draws S samples z ~ p(z|x) per image with the jit-compiled sampler
   (:func:`probunet_jax.sampling.sample_logits`, vmapped over images so that image ``i`` gets
   the key ``fold_in(key, i)``: the results do not depend on the batch size),
2. turns the logits into hard masks and foreground probabilities (sigmoid; the NCC uses them),
3. computes every per-image metric of :func:`probunet_jax.metrics.evaluate_images` on device,
4. on the synthetic set also the GED of S fresh masks from each image's true annotation
   distribution (``oracle_*`` columns, see :func:`oracle_samples`): the best score attainable.

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

from probunet_jax import config as config_lib
from probunet_jax import data, metrics, reporting, sampling, sharding
from probunet_jax.data import synthetic
from probunet_jax.model import ProbabilisticUNet, model_from_config

NUM_EXAMPLES = 8  # Images kept with their samples for the sample grids (Fig. 4).
ORACLE_STREAM = 0x0AC1E  # Separates the oracle's numpy seeds from other uses of the key.
LOG_EVERY_S = 10.0


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
) -> np.ndarray:
    """S fresh masks per image from its true annotation distribution, uint8 `[B, S, H, W]`.

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
    return synthetic.render_masks(profiles, np.concatenate(choices), np.concatenate(levels))


def oracle_metrics(oracle: np.ndarray, annotations: np.ndarray) -> dict[str, np.ndarray]:
    """``oracle_ged`` and its break-up `[B]` of oracle masks `[B, S, H, W]` vs annotations."""
    result = metrics.generalized_energy_distance(oracle, annotations)
    return {
        reporting.ORACLE_GED: np.asarray(result.ged),
        "oracle_sample_annotation_distance": np.asarray(result.sample_annotation_distance),
        "oracle_sample_diversity": np.asarray(result.sample_diversity),
    }


def _stack_truth(examples: list[dict]) -> dict[str, np.ndarray]:
    return {name: np.stack([e["truth"][name] for e in examples]) for name in examples[0]["truth"]}


# --------------------------------------------------------------------------- evaluation


class _Collected(NamedTuple):
    per_image: dict[str, np.ndarray]
    examples: reporting.Examples


def _collect(
    config: ml_collections.ConfigDict,
    model: ProbabilisticUNet,
    variables: dict,
    split: str,
    num_samples: int,
    batch_size: int,
    key: jax.Array,
) -> _Collected:
    """Runs the model over ``split``; per-image columns (padding dropped) and the examples."""
    source = data.get_data_source(config.data, split)
    with_oracle = config.data.name == "synthetic" and "truth" in source[0]
    # Every process evaluates the whole split (process 0 writes): no cross-host gather needed.
    batches = data.make_eval_batches(
        config.data, split, batch_size, process_index=0, process_count=1
    )
    placement = place(variables, batch_size)
    sample_key, oracle_key = jax.random.split(key)
    columns: dict[str, list[np.ndarray]] = {}
    kept: list[tuple[np.ndarray, ...]] = []
    num_kept = done = first_done = 0
    start = last_log = time.perf_counter()
    first_time = None  # After the first batch: compilation is done.
    for batch in batches:
        valid = np.asarray(batch["valid"])
        indices = np.asarray(batch["index"])
        images, annotations, keys = jax.device_put(
            (batch["image"], batch["masks"], image_keys(sample_key, jnp.asarray(indices))),
            placement.batch,
        )
        samples = sample_batch(model, placement.variables, images, keys, num_samples)
        # The full (padded) batch keeps one compiled shape; padding rows are dropped after.
        values = metrics.evaluate_images(samples.masks, annotations, samples.probs)
        values = {name: v[valid] for name, v in values.items()}
        values["index"] = indices[valid]
        if with_oracle and valid.any():
            examples = source.__getitems__(indices[valid].tolist())
            image_size = batch["image"].shape[1]
            oracle = oracle_samples(
                _stack_truth(examples), indices[valid], image_size, num_samples, oracle_key
            )
            values.update(oracle_metrics(oracle, batch["masks"][valid]))
        for name, value in values.items():
            columns.setdefault(name, []).append(value)
        if num_kept < NUM_EXAMPLES:
            take = np.flatnonzero(valid)[: NUM_EXAMPLES - num_kept]
            masks = np.asarray(samples.masks)[take]
            kept.append((batch["image"][take, ..., 0], batch["masks"][take], masks, indices[take]))
            num_kept += len(take)
        done += int(valid.sum())
        now = time.perf_counter()
        if first_time is None:
            first_time, first_done = now, done
        if now - last_log > LOG_EVERY_S:
            logging.info("eval %s: %d images, %.1f images/s", split, done, done / (now - start))
            last_log = now
    end = time.perf_counter()
    steady = ""
    if done > first_done:
        steady = f", {(done - first_done) / max(end - first_time, 1e-9):.1f} after the first batch"
    logging.info(
        "eval %s: %d images x %d samples in %.1f s (%.1f images/s%s)",
        split,
        done,
        num_samples,
        end - start,
        done / max(end - start, 1e-9),
        steady,
    )
    per_image = {name: np.concatenate(parts) for name, parts in columns.items()}
    examples = reporting.Examples(*(np.concatenate(parts) for parts in zip(*kept, strict=True)))
    return _Collected(per_image, examples)


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
      model_name: the name in the summary and the comparison (default the variant name).
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
    model_name = config.model.variant if model_name is None else model_name
    model = model_from_config(config.model) if model is None else model
    collected = _collect(config, model, variables, split, num_samples, batch_size, key)
    if workdir is None or jax.process_index() != 0:
        return reporting.summarize(model_name, collected.per_image, num_samples=num_samples)
    folder = reporting.write_evaluation(
        workdir, model_name, collected.per_image, collected.examples, num_samples=num_samples
    )
    logging.info("wrote the evaluation to %s", folder)
    return json.loads((Path(folder) / reporting.SUMMARY_FILE).read_text())
