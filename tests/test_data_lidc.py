"""Tests of the LIDC-IDRI readers and builders on small files in the two public formats."""

import os
import pickle

import h5py
import numpy as np
import pytest

from probunet_jax import data
from probunet_jax.data import lidc, splits

SIZE, GRADERS = lidc.IMAGE_SIZE, lidc.NUM_ANNOTATIONS
SPLITS = splits.SPLITS
PATIENTS, SLICES = 10, 3  # Slices per patient.


def fake_patch(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """A float32 image in [0, 1] and 4 masks; grader k marks a square of side 4 + 2 k."""
    image = rng.random((SIZE, SIZE), dtype=np.float32)
    masks = []
    for k in range(GRADERS):
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[10 : 14 + 2 * k, 20 : 24 + 2 * k] = 1
        masks.append(mask)
    return image, masks


def fake_pickle_data(patients: int = PATIENTS) -> dict:
    rng = np.random.default_rng(0)
    result = {}
    for p in range(patients):
        for s in range(SLICES):
            image, masks = fake_patch(rng)
            result[f"LIDC-IDRI-{p:04d}_slice{s}"] = {
                "image": image,
                "masks": masks,
                "series_uid": f"1.3.6.1.{p}",
            }
    return result


def write_pickle(folder, content) -> None:
    with open(os.path.join(folder, lidc.PICKLE_NAME), "wb") as f:
        pickle.dump(content, f)


def write_hdf5(folder, sizes=(6, 2, 3), drop=None) -> dict:
    """PHiSeg's layout (image - 0.5, labels N x 128 x 128 x 4); returns the groups' arrays."""
    rng = np.random.default_rng(1)
    groups = {}
    with h5py.File(os.path.join(folder, lidc.HDF5_NAME), "w") as f:
        for group, n in zip(("train", "val", "test"), sizes, strict=True):
            patches = [fake_patch(rng) for _ in range(n)]
            arrays = {
                "images": np.reshape([p[0] for p in patches], (n, SIZE, SIZE)).astype(float) - 0.5,
                "labels": np.moveaxis(
                    np.reshape([p[1] for p in patches], (n, GRADERS, SIZE, SIZE)), 1, -1
                ).astype(np.uint8),
                "uids": np.arange(n, dtype=np.int64) * 7919 + 13,
            }
            for key, value in arrays.items():
                if f"{group}/{key}" != drop:
                    f.create_dataset(f"{group}/{key}", data=value)
            groups[group] = arrays
    return groups


def lidc_config(tmp_path, lidc_split="patient"):
    config = data.default_data_config()
    config.update(
        name="lidc",
        data_dir=str(tmp_path / "built"),
        manual_dir=str(tmp_path),
        lidc_split=lidc_split,
    )
    return config


def sources(config):
    data.build(config)
    return {split: data.get_data_source(config, split) for split in SPLITS}


def test_patient_split(tmp_path):
    content = fake_pickle_data()
    write_pickle(tmp_path, content)
    built = sources(lidc_config(tmp_path))
    ids = {split: [s[i]["id"].decode() for i in range(len(s))] for split, s in built.items()}
    assert sorted(sum(ids.values(), [])) == sorted(content)
    assert [len(ids[s]) for s in SPLITS] == [18, 6, 6]  # Whole patients, 60:20:20.
    patients = {s: {content[i]["series_uid"] for i in ids[s]} for s in SPLITS}
    assert not patients["train"] & patients["validation"]
    assert not patients["train"] & patients["test"]
    assert not patients["validation"] & patients["test"]


def test_stored_example_keeps_image_and_mask_order(tmp_path):
    content = fake_pickle_data()
    write_pickle(tmp_path, content)
    example = sources(lidc_config(tmp_path))["test"][2]
    original = content[example["id"].decode()]
    assert example["image"].shape == (SIZE, SIZE, 1) and example["image"].dtype == np.float32
    np.testing.assert_array_equal(example["image"][..., 0], original["image"])
    assert example["masks"].shape == (GRADERS, SIZE, SIZE) and example["masks"].dtype == np.uint8
    np.testing.assert_array_equal(example["masks"], np.stack(original["masks"]))
    assert example["rater_valid"].dtype == bool and example["rater_valid"].all()


def test_slice_split_is_seeded_and_ignores_patients(tmp_path):
    write_pickle(tmp_path, fake_pickle_data())
    config = lidc_config(tmp_path, "slice")
    built = sources(config)
    assert [len(built[s]) for s in SPLITS] == [18, 6, 6]
    groups = list(fake_pickle_data())
    np.testing.assert_array_equal(
        splits.split_groups(groups)["test"], splits.split_groups(groups)["test"]
    )
    test_patients = {i.split("_")[0] for i in (built["test"][j]["id"].decode() for j in range(6))}
    assert len(test_patients) > 2  # Slices of one patient spread over splits.


def test_hdf5_keeps_its_split_and_adds_back_half(tmp_path):
    groups = write_hdf5(tmp_path)
    built = sources(lidc_config(tmp_path, "phiseg"))
    assert [len(built[s]) for s in SPLITS] == [6, 2, 3]
    example = built["validation"][1]
    assert example["id"] == b"val-00001-7932"
    np.testing.assert_allclose(example["image"][..., 0], groups["val"]["images"][1] + 0.5)
    np.testing.assert_array_equal(example["masks"], np.moveaxis(groups["val"]["labels"][1], -1, 0))


def test_unbuilt_lidc_says_to_run_prepare_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        data.get_data_source(lidc_config(tmp_path), "train")


def _bad(content_change):
    content = fake_pickle_data()
    content_change(content)
    return content


def _set_first(key, value):
    return lambda content: next(iter(content.values())).__setitem__(key, value)


_NAN_IMAGE = np.full((SIZE, SIZE), np.nan, np.float32)
BAD_PICKLES = {
    "wrong image shape": (_bad(_set_first("image", np.zeros((64, 64)))), "shape"),
    "three masks": (_bad(_set_first("masks", [np.zeros((SIZE, SIZE))] * 3)), "shape"),
    "masks not binary": (_bad(_set_first("masks", [np.full((SIZE, SIZE), 2)] * 4)), "0 or 1"),
    "NaN image": (_bad(_set_first("image", _NAN_IMAGE)), "NaN"),
    "out of range": (_bad(_set_first("image", np.full((SIZE, SIZE), 1.5))), r"\[0, 1\]"),
    "not a dict": ([1, 2, 3], "unknown format"),
    "missing key": ({"slice0": {"image": _NAN_IMAGE, "masks": []}}, "keys"),
    "empty split": (fake_pickle_data(patients=1), "empty"),
}


@pytest.mark.parametrize("case", list(BAD_PICKLES))
def test_bad_pickle_raises_and_writes_nothing(tmp_path, case):
    content, message = BAD_PICKLES[case]
    write_pickle(tmp_path, content)
    config = lidc_config(tmp_path)
    with pytest.raises(ValueError, match=message):
        data.build(config)
    assert not os.listdir(config.data_dir)


def test_garbage_file_is_unknown_format(tmp_path):
    (tmp_path / lidc.PICKLE_NAME).write_bytes(b"not a pickle at all")
    (tmp_path / lidc.HDF5_NAME).write_bytes(b"not an hdf5 file")
    for lidc_split in ("patient", "phiseg"):
        with pytest.raises(ValueError, match="not a readable"):
            data.build(lidc_config(tmp_path, lidc_split))


def test_hdf5_missing_dataset_or_wrong_shape(tmp_path):
    write_hdf5(tmp_path, drop="val/labels")
    with pytest.raises(ValueError, match="val/labels"):
        data.build(lidc_config(tmp_path, "phiseg"))
    write_hdf5(tmp_path, sizes=(3, 0, 1))
    with pytest.raises(ValueError, match="empty"):
        data.build(lidc_config(tmp_path, "phiseg"))
    assert not os.listdir(tmp_path / "built")


@pytest.mark.parametrize("lidc_split, name", [("patient", "data_lidc.pickle"), ("phiseg", "hdf5")])
def test_missing_file_says_where_to_get_it(tmp_path, lidc_split, name):
    config = lidc_config(tmp_path, lidc_split)
    with pytest.raises(FileNotFoundError, match=f"{name}.*github.com"):
        data.build(config)
    assert not os.path.exists(config.data_dir)


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", "my data/1"),
        ("annotator_choice", "all"),
        ("lidc_split", "random"),
        ("resize_mode", "stretch"),
        ("normalization", "zscore"),
        ("source", "hdf5"),
    ],
)
def test_config_rejects_unknown_values(field, value):
    config = data.default_data_config()
    config[field] = value
    with pytest.raises(ValueError, match=f"{value!r}.*expected one of"):
        data.validate_data_config(config)
