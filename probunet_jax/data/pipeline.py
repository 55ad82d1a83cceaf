"""grain input pipelines over the TFDS data sources.

* :func:`train_iterator`: infinite, seeded shuffle and repeat, fixed per-process batch size
  ``B`` (remainder dropped), one annotation chosen among each image's valid raters
  (``'rater_valid'``), per example or per batch; batches are ``{'image': float32 [B, H, W, C],
  'mask': uint8 [B, H, W]}``. Records are sharded over
  processes with grain's ``ShardOptions``; the iterator has ``get_state()``/``set_state()``,
  so a run resumed from a saved state sees exactly the batches an uninterrupted run would.
* :func:`eval_batches`: one pass, in order, every example once over all processes, fixed
  batch size with the last batch padded; batches are ``{'image': float32 [B, H, W, C],
  'masks': uint8 [B, A, H, W], 'rater_valid': bool [B, A], 'index': int32 [B], 'valid': bool
  [B]}``.

Place batches on devices with :func:`probunet_jax.sharding.shard_batch`.
"""

import math

import grain
import jax
import ml_collections
import numpy as np

from probunet_jax.data.builders import get_data_source
from probunet_jax.data.config import ANNOTATOR_CHOICES


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"Need 0 <= process_index < process_count, got {index} and {count}.")
    return index, count


def valid_rater(rater_valid: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The valid rater ``floor(u * n_valid)`` of each row: bool [..., A], u in [0, 1) [...]."""
    num_valid = rater_valid.sum(axis=-1)
    rank = np.minimum((u * num_valid).astype(np.int64), num_valid - 1)  # Rank among valid ones.
    return np.argmax(np.cumsum(rater_valid, axis=-1) > rank[..., None], axis=-1)


class _ChooseAnnotatorPerExample(grain.transforms.RandomMap):
    """Stored example -> ``{'image', 'mask'}``: a uniformly drawn valid rater's mask."""

    def random_map(self, element, rng: np.random.Generator):
        rater = valid_rater(element["rater_valid"], rng.random())
        return {"image": element["image"], "mask": element["masks"][rater]}


class _ImageMasksValid(grain.transforms.Map):
    """Stored example -> ``{'image', 'masks', 'rater_valid'}``."""

    def map(self, element):
        return {key: element[key] for key in ("image", "masks", "rater_valid")}


class _ChooseAnnotatorPerBatch(grain.transforms.RandomMap):
    """Batched ``{'image', 'masks' [B, A, H, W], 'rater_valid'}`` -> ``{'image', 'mask'}``: one
    uniform ``u`` for the batch, example ``b`` takes its valid rater ``floor(u * n_valid_b)``."""

    def random_map(self, element, rng: np.random.Generator):
        raters = valid_rater(element["rater_valid"], np.full(len(element["masks"]), rng.random()))
        masks = np.take_along_axis(element["masks"], raters[:, None, None, None], axis=1)[:, 0]
        return {"image": element["image"], "mask": masks}


def train_iterator(
    source,
    batch_size: int,
    *,
    seed: int = 0,
    annotator_choice: str = "per_example",
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
) -> grain.DataLoaderIterator:
    """Infinite training batches ``{'image': [B, H, W, C], 'mask': uint8 [B, H, W]}``.

    Args:
      source: a random-access source of stored examples (``get_data_source(config, 'train')``).
      batch_size: per-process batch size ``B``.
      seed: seed of the shuffle (reshuffled every epoch) and of the annotator choice.
      annotator_choice: 'per_example' (each example's rater uniform among its valid raters) or
        'per_batch' (one uniform ``u`` in [0, 1) per batch; example ``b`` takes its valid rater
        number ``floor(u * n_valid_b)``, so with equal rater counts one rater for the batch).
      process_index, process_count: this process's shard; default ``jax.process_index()`` and
        ``jax.process_count()``. Each process reads a disjoint ``1 / process_count`` of records.
      worker_count: grain worker processes (0 reads in this process).

    Returns:
      grain's iterator, with ``get_state()`` and ``set_state(state)`` for checkpointing.
    """
    if annotator_choice not in ANNOTATOR_CHOICES:
        raise ValueError(
            f"Unknown annotator_choice {annotator_choice!r}; expected one of {ANNOTATOR_CHOICES}."
        )
    index, count = _process(process_index, process_count)
    if not 1 <= batch_size <= len(source) // count:
        raise ValueError(
            f"batch_size must be in [1, {len(source) // count}] ({len(source)} examples over "
            f"{count} processes), got {batch_size}."
        )
    sampler = grain.samplers.IndexSampler(
        num_records=len(source),
        shard_options=grain.sharding.ShardOptions(index, count, drop_remainder=True),
        shuffle=True,
        num_epochs=None,
        seed=seed,
    )
    batch = grain.transforms.Batch(batch_size, drop_remainder=True)
    if annotator_choice == "per_example":
        operations = [_ChooseAnnotatorPerExample(), batch]
    else:
        operations = [_ImageMasksValid(), batch, _ChooseAnnotatorPerBatch()]
    loader = grain.DataLoader(
        data_source=source, sampler=sampler, operations=operations, worker_count=worker_count
    )
    return iter(loader)


class _PaddedExample(grain.transforms.Map):
    """Index -> ``{'image', 'masks', 'rater_valid', 'index', 'valid'}``; indices past the end
    are padding: zero images and masks, all raters valid (so metrics stay finite)."""

    def __init__(self, source):
        self._source = source
        first = source[0]
        self._padding = {
            "image": np.zeros_like(first["image"]),
            "masks": np.zeros_like(first["masks"]),
            "rater_valid": np.ones_like(first["rater_valid"]),
            "index": np.int32(-1),
            "valid": np.False_,
        }

    def map(self, element):
        if element >= len(self._source):
            return self._padding
        example = self._source[element]
        return {
            "image": example["image"],
            "masks": example["masks"],
            "rater_valid": example["rater_valid"],
            "index": np.int32(element),
            "valid": np.True_,
        }


def eval_batches(
    source, batch_size: int, *, process_index: int | None = None, process_count: int | None = None
) -> grain.MapDataset:
    """One pass over ``source`` in batches ``{'image', 'masks', 'rater_valid', 'index', 'valid'}``
    of size ``B``.

    The split is padded to a multiple of ``B * process_count`` and cut into contiguous
    per-process blocks, so all processes get the same number of batches. Padding entries have
    zero images and masks, all raters valid, ``index`` -1 and ``valid`` False.

    Returns:
      a grain ``MapDataset`` of batches (iterate it; ``len`` is the number of batches).
    """
    index, count = _process(process_index, process_count)
    if batch_size < 1 or len(source) < 1:
        raise ValueError(f"Need batch_size >= 1 and a non-empty source, got {batch_size=}.")
    per_process = math.ceil(len(source) / (batch_size * count)) * batch_size
    start = index * per_process
    indices = grain.MapDataset.range(start, start + per_process)
    return indices.map(_PaddedExample(source)).batch(batch_size)


def make_train_iterator(
    config: ml_collections.ConfigDict,
    batch_size: int,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DataLoaderIterator:
    """:func:`train_iterator` over the training split of the data ``config``."""
    return train_iterator(
        get_data_source(config, "train"),
        batch_size,
        seed=config.shuffle_seed,
        annotator_choice=config.annotator_choice,
        process_index=process_index,
        process_count=process_count,
        worker_count=config.worker_count,
    )


def make_eval_batches(
    config: ml_collections.ConfigDict,
    split: str,
    batch_size: int,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """:func:`eval_batches` over ``split`` ('validation' or 'test') of the data ``config``."""
    return eval_batches(
        get_data_source(config, split),
        batch_size,
        process_index=process_index,
        process_count=process_count,
    )
