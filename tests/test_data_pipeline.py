"""Tests of the grain pipelines and of device sharding."""

import itertools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from probunet_jax import data, sharding
from probunet_jax.data import pipeline

NUM, SIZE, GRADERS, BATCH = 30, 8, 3, 4


def fake_source(num: int = NUM) -> list[dict]:
    """Example i has image value i and grader k's mask holds exactly k + 1 ones."""
    masks = np.zeros((GRADERS, SIZE * SIZE), np.uint8)
    for k in range(GRADERS):
        masks[k, : k + 1] = 1
    return [
        {
            "image": np.full((SIZE, SIZE, 1), i, np.float32),
            "masks": masks.reshape(GRADERS, SIZE, SIZE),
            "rater_valid": np.ones(GRADERS, bool),
            "id": f"ex{i}".encode(),
        }
        for i in range(num)
    ]


def examples_of(batch) -> np.ndarray:
    return batch["image"][:, 0, 0, 0].astype(int)


def graders_of(batch) -> np.ndarray:
    return batch["mask"].sum(axis=(1, 2)) - 1


def take(iterator, n: int) -> list[dict]:
    return list(itertools.islice(iterator, n))


def test_train_batches_shapes_and_epochs():
    batches = take(pipeline.train_iterator(fake_source(), BATCH, seed=0), 14)  # ~2 epochs.
    for batch in batches:
        assert batch["image"].shape == (BATCH, SIZE, SIZE, 1) and batch["image"].dtype == np.float32
        assert batch["mask"].shape == (BATCH, SIZE, SIZE) and batch["mask"].dtype == np.uint8
    first_epoch = np.concatenate([examples_of(b) for b in batches[:7]])[: NUM - NUM % BATCH]
    assert len(set(first_epoch)) == len(first_epoch)  # Without replacement within an epoch.
    assert not np.array_equal(first_epoch[:8], np.arange(8))  # Shuffled.


def test_per_example_choice_covers_all_annotators():
    batches = take(pipeline.train_iterator(fake_source(), BATCH, seed=0), 30)
    graders = np.concatenate([graders_of(b) for b in batches])
    counts = np.bincount(graders, minlength=GRADERS)
    assert counts.size == GRADERS and counts.min() > 20  # 120 draws, about 40 each.
    assert any(len(set(graders_of(b))) > 1 for b in batches)


def test_per_batch_choice_is_shared_within_a_batch():
    iterator = pipeline.train_iterator(fake_source(), BATCH, seed=0, annotator_choice="per_batch")
    graders = [graders_of(b) for b in take(iterator, 30)]
    assert all(len(set(g)) == 1 for g in graders)
    assert {g[0] for g in graders} == set(range(GRADERS))


def test_same_seed_same_batches_and_other_seed_differs():
    def first(seed):
        return np.stack(
            [
                examples_of(b)
                for b in take(pipeline.train_iterator(fake_source(), BATCH, seed=seed), 5)
            ]
        )

    np.testing.assert_array_equal(first(3), first(3))
    assert not np.array_equal(first(3), first(4))


@pytest.mark.parametrize("annotator_choice", ["per_example", "per_batch"])
def test_resume_from_state_reproduces_next_batches(annotator_choice):
    def make():
        return pipeline.train_iterator(
            fake_source(), BATCH, seed=1, annotator_choice=annotator_choice
        )

    iterator = make()
    take(iterator, 9)  # Past the first epoch.
    state = iterator.get_state()
    expected = take(iterator, 5)
    resumed = make()
    resumed.set_state(state)
    for want, got in zip(expected, take(resumed, 5), strict=True):
        np.testing.assert_array_equal(want["image"], got["image"])
        np.testing.assert_array_equal(want["mask"], got["mask"])


def test_processes_read_disjoint_shards():
    seen = []
    for index in range(2):
        iterator = pipeline.train_iterator(
            fake_source(), BATCH, seed=0, process_index=index, process_count=2
        )
        seen.append(set(np.concatenate([examples_of(b) for b in take(iterator, 10)])))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == NUM


def test_train_iterator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'one'"):
        pipeline.train_iterator(fake_source(), BATCH, annotator_choice="one")
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.train_iterator(fake_source(), 16, process_index=0, process_count=2)


def test_eval_batches_cover_every_example_once_with_padding():
    source = fake_source(NUM)
    indices, valid = [], []
    for index in range(2):
        batches = pipeline.eval_batches(source, BATCH, process_index=index, process_count=2)
        assert len(batches) == 4  # ceil(30 / 8) * 8 = 32 = 2 processes x 4 batches x 4.
        for batch in batches:
            assert batch["image"].shape == (BATCH, SIZE, SIZE, 1)
            assert batch["masks"].shape == (BATCH, GRADERS, SIZE, SIZE)
            assert batch["index"].dtype == np.int32 and batch["valid"].dtype == bool
            real = batch["index"][batch["valid"]]
            np.testing.assert_array_equal(examples_of(batch)[batch["valid"]], real)
            indices.append(real)
            valid.append(batch["valid"])
    np.testing.assert_array_equal(np.sort(np.concatenate(indices)), np.arange(NUM))
    assert np.concatenate(valid).sum() == NUM and not np.concatenate(valid)[-2:].any()


def test_pipelines_over_built_synthetic_set(tmp_path):
    config = data.default_data_config()
    config.update(data_dir=str(tmp_path), image_size=16, num_train=12, num_validation=5)
    config.update(num_test=5, annotator_choice="per_batch")
    batch = next(pipeline.make_train_iterator(config, 4))
    assert batch["image"].shape == (4, 16, 16, 1) and batch["mask"].shape == (4, 16, 16)
    batches = list(pipeline.make_eval_batches(config, "validation", 4))
    assert [b["valid"].sum() for b in batches] == [4, 1]
    assert batches[0]["masks"].shape == (4, 4, 16, 16)


def test_shard_batch_places_leading_axis_on_data_axis():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    batch = next(iter(pipeline.eval_batches(fake_source(), BATCH * jax.local_device_count())))
    sharded = sharding.shard_batch(batch, mesh)
    for key, value in sharded.items():
        assert isinstance(value, jax.Array) and value.shape == batch[key].shape
        assert value.sharding.spec == PartitionSpec("data")
        np.testing.assert_array_equal(np.asarray(value), batch[key])
    with pytest.raises(ValueError, match="leading"):
        sharding.shard_batch({"scalar": np.float32(1)}, mesh)
