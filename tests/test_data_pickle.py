"""Tests of pickle data sets (the PyTorch port's layout) with any raters, sizes and channels."""

import os
import pickle

import numpy as np
import pytest

from probunet_jax import data
from probunet_jax.data import splits


def fake_entries(num: int, rng, raters=(1, 4), channels=1, dtype=np.float32) -> dict:
    """``num`` entries of 3 per series uid; entry i has ``raters[i % len(raters)]`` masks."""
    entries = {}
    for i in range(num):
        image = rng.random((12, 10, channels) if channels > 1 else (12, 10))
        masks = [(rng.random((12, 10)) < 0.5).astype(np.uint8) for _ in range(raters[i % 2])]
        entries[f"slice{i:03d}"] = {
            "image": (image * (255 if dtype == np.uint8 else 1)).astype(dtype),
            "masks": masks,
            "series_uid": f"uid{i // 3}",
        }
    return entries


def write(path, entries) -> None:
    with open(path, "wb") as f:
        pickle.dump(entries, f)


def pickle_config(tmp_path, manual_dir, **overrides):
    config = data.default_data_config()
    config.update(
        name="pick", source="pickle", manual_dir=str(manual_dir), data_dir=str(tmp_path / "out")
    )
    config.update(**overrides)
    return config


def test_pickle_folder_is_merged_split_by_uid_and_padded(tmp_path):
    rng = np.random.default_rng(0)
    entries = fake_entries(30, rng, channels=3, dtype=np.uint8)
    (tmp_path / "src").mkdir()
    first = dict(list(entries.items())[:12])
    write(tmp_path / "src" / "a.pickle", first)
    write(tmp_path / "src" / "b.pkl", {k: v for k, v in entries.items() if k not in first})
    config = pickle_config(tmp_path, tmp_path / "src", image_size=0)
    data.build(config)
    assert data.dataset_info(config) == data.DatasetInfo("pick", (12, 10, 3), 2, 4)
    uids = {}
    for split in splits.SPLITS:
        source = data.get_data_source(config, split)
        for example in source:
            original = entries[example["id"].decode()]
            count = len(original["masks"])
            np.testing.assert_array_equal(example["masks"][:count], np.stack(original["masks"]))
            np.testing.assert_array_equal(example["rater_valid"], np.arange(4) < count)
            np.testing.assert_allclose(example["image"], original["image"] / 255, rtol=1e-6)
            uids.setdefault(original["series_uid"], set()).add(split)
    assert len(uids) == 10 and all(len(s) == 1 for s in uids.values())


def test_pickle_crop_keeps_the_centre(tmp_path):
    entries = fake_entries(15, np.random.default_rng(1))
    write(tmp_path / "one.pickle", entries)
    config = pickle_config(tmp_path, tmp_path / "one.pickle", image_size=8, resize_mode="crop")
    data.build(config)
    example = data.get_data_source(config, "train")[0]
    original = entries[example["id"].decode()]
    np.testing.assert_array_equal(example["image"][:, :, 0], original["image"][2:10, 1:9])
    np.testing.assert_array_equal(example["masks"][0], original["masks"][0][2:10, 1:9])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e["slice004"].update(image=np.full((12, 10), 2.0)), r"'slice004'.*\[0, 1\]"),
        (lambda e: e["slice004"].update(masks=[]), r"'slice004'\] image: 0 masks"),
        (lambda e: e["slice004"]["masks"].append(np.ones((12, 11))), r"'slice004'\] mask 1"),
        (lambda e: e["slice004"].pop("series_uid"), "unknown format"),
    ],
)
def test_bad_entry_names_it_and_leaves_nothing(tmp_path, change, message):
    entries = fake_entries(15, np.random.default_rng(2), raters=(1, 1))
    change(entries)
    write(tmp_path / "bad.pickle", entries)
    config = pickle_config(tmp_path, tmp_path / "bad.pickle")
    with pytest.raises(ValueError, match=message):
        data.build(config)
    assert not os.path.exists(config.data_dir) or not os.listdir(config.data_dir)
