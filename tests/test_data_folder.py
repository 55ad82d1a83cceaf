"""Tests of folder data sets: formats, channels, classes, rater counts, resizing, splits, errors."""

import os
import subprocess
import sys

import nibabel
import numpy as np
import pytest
from PIL import Image

from probunet_jax import data
from probunet_jax.data import image_files, pipeline, resize, splits

HEIGHT, WIDTH = 20, 24  # Native size; the sets below are stored at SIZE (a resize).
SIZE = 16


def write_array(path, array: np.ndarray) -> None:
    """``array`` [H, W] or [H, W, C] in the format of ``path``'s suffix."""
    if path.endswith(".npy"):
        np.save(path, array)
    elif path.endswith((".nii", ".nii.gz")):
        nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), path)
    else:
        Image.fromarray(array).save(path)


def fake_case(rng, channels: int, num_classes: int, raters: int):
    """A uint8 image and ``raters`` label maps, rater k labelling a box grown by k pixels."""
    shape = (HEIGHT, WIDTH, channels) if channels > 1 else (HEIGHT, WIDTH)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    masks = []
    for k in range(raters):
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        mask[4 : 9 + k, 5 : 11 + k] = 1
        if num_classes > 2:
            mask[6 : 8 + k, 7 : 9 + k] = num_classes - 1
        masks.append(mask)
    return image, masks


def write_folder(root, suffix=".png", channels=1, num_classes=2, raters=(3,), num=10, seed=0):
    """``num`` cases ``case{i:02d}`` with ``raters[i % len(raters)]`` masks; returns them."""
    rng = np.random.default_rng(seed)
    cases = {}
    for i in range(num):
        image, masks = fake_case(rng, channels, num_classes, raters[i % len(raters)])
        folder = os.path.join(root, f"case{i:02d}")
        os.makedirs(folder, exist_ok=True)
        write_array(os.path.join(folder, "image" + suffix), image)
        for k, mask in enumerate(masks):
            write_array(os.path.join(folder, f"mask{k}{suffix}"), mask)
        cases[f"case{i:02d}"] = (image, masks)
    return cases


def folder_config(tmp_path, name="mine", **overrides):
    config = data.default_data_config()
    config.update(
        name=name, source="folder", manual_dir=str(tmp_path / "src"), data_dir=str(tmp_path / "out")
    )
    config.update(**overrides)
    return config


def all_examples(config) -> dict[str, dict]:
    examples = {}
    for split in splits.SPLITS:
        source = data.get_data_source(config, split)
        examples.update({source[i]["id"].decode(): source[i] for i in range(len(source))})
    return examples


@pytest.mark.parametrize(
    "suffix, channels, num_classes, raters",
    [
        (".png", 1, 2, (1,)),
        (".png", 3, 3, (3,)),
        (".npy", 3, 2, (7,)),
        (".npy", 1, 3, (1, 3, 7)),
        (".nii.gz", 1, 2, (3,)),
        (".nii", 1, 3, (2, 3)),
        (".tif", 1, 2, (3,)),
    ],
)
def test_folder_set_is_resized_and_padded(tmp_path, suffix, channels, num_classes, raters):
    cases = write_folder(tmp_path / "src", suffix, channels, num_classes, raters)
    config = folder_config(tmp_path, image_size=SIZE, num_classes=num_classes)
    data.build(config)
    info = data.dataset_info(config)
    assert info == data.DatasetInfo("mine", (SIZE, SIZE, channels), num_classes, max(raters))
    examples = all_examples(config)
    assert sorted(examples) == sorted(cases)
    for name, (image, masks) in cases.items():
        example = examples[name]
        assert example["image"].shape == (SIZE, SIZE, channels)
        assert example["image"].dtype == np.float32
        want_image = resize.resize_image(image.reshape(HEIGHT, WIDTH, -1) / 255.0, SIZE, SIZE)
        np.testing.assert_allclose(example["image"], want_image, atol=1e-6)
        np.testing.assert_array_equal(example["rater_valid"], np.arange(max(raters)) < len(masks))
        want_masks = resize.resize_masks(np.stack(masks), SIZE, SIZE)
        np.testing.assert_array_equal(example["masks"][: len(masks)], want_masks)
        assert not example["masks"][len(masks) :].any()


@pytest.mark.parametrize("suffix", [".png", ".npy", ".nii.gz", ".tif"])
def test_native_size_round_trip_is_exact(tmp_path, suffix):
    cases = write_folder(tmp_path / "src", suffix, num_classes=3, raters=(2,), num=5)
    config = folder_config(tmp_path, image_size=0, num_classes=3)
    data.build(config)
    for name, example in all_examples(config).items():
        image, masks = cases[name]
        np.testing.assert_array_equal(example["masks"], np.stack(masks))
        np.testing.assert_array_equal(example["image"][..., 0], image.astype(np.float32) / 255)


def test_qubiq_layout_with_patterns(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(5):
        folder = tmp_path / "src" / f"case{i:02d}"
        folder.mkdir(parents=True)
        image = rng.random((HEIGHT, WIDTH, 1)).astype(np.float32) * 300  # A single-slice volume.
        write_array(str(folder / "image.nii.gz"), image)
        for k in range(3):
            mask = (rng.random((HEIGHT, WIDTH)) < 0.3).astype(np.float32)  # Float 0 / 1 masks.
            write_array(str(folder / f"task01_seg0{k + 1}.nii.gz"), mask)
        write_array(str(folder / "task02_seg01.nii.gz"), mask)  # Another task: not matched.
    config = folder_config(
        tmp_path,
        image_pattern="image.nii.gz",
        mask_pattern="task01_seg*.nii.gz",
        image_size=0,
        normalization="image",
    )
    data.build(config)
    assert data.dataset_info(config).num_raters == 3
    example = data.get_data_source(config, "train")[0]
    assert example["image"].min() == 0 and example["image"].max() == 1


def test_split_file_by_case_and_by_group(tmp_path):
    write_folder(tmp_path / "src", num=10)
    rows = [f"case{i:02d},{['train', 'val', 'test'][i % 3]}" for i in range(10)]
    (tmp_path / "src" / "splits.csv").write_text("case,split\n" + "\n".join(rows) + "\n")
    config = folder_config(tmp_path)
    data.build(config)
    test_ids = [e["id"].decode() for e in data.get_data_source(config, "test")]
    assert test_ids == ["case02", "case05", "case08"]
    rows = [f"case{i:02d},patient{i // 2}" for i in range(10)]
    (tmp_path / "src" / "splits.csv").write_text("case,group\n" + "\n".join(rows) + "\n")
    config = folder_config(tmp_path, name="grouped")
    data.build(config)
    patients = {
        split: {int(e["id"].decode()[4:]) // 2 for e in data.get_data_source(config, split)}
        for split in splits.SPLITS
    }
    assert sum(len(p) for p in patients.values()) == 5  # No patient in two splits.
    assert data.dataset_info(folder_config(tmp_path)).name == "mine"  # Both sets coexist.


def test_unbuilt_name_lists_the_built_ones(tmp_path):
    write_folder(tmp_path / "src", num=5)
    data.build(folder_config(tmp_path))
    for call in (data.dataset_info, lambda c: data.get_data_source(c, "train")):
        with pytest.raises(FileNotFoundError, match=r"'other'.*out.*\['mine'\].*prepare_data"):
            call(folder_config(tmp_path, name="other"))


def test_train_picks_only_valid_raters_and_eval_carries_validity(tmp_path):
    write_folder(tmp_path / "src", ".npy", raters=(1, 3), num=20)
    config = folder_config(tmp_path, image_size=0)
    data.build(config)
    for annotator_choice in pipeline.ANNOTATOR_CHOICES:
        config.annotator_choice = annotator_choice
        iterator = data.make_train_iterator(config, 4)
        for _ in range(20):
            batch = next(iterator)
            sizes = batch["mask"].sum(axis=(1, 2))
            assert sizes.min() > 0  # A padded rater would give an empty mask.
    batch = next(iter(data.make_eval_batches(config, "validation", 8)))
    assert batch["rater_valid"].shape == (8, 3) and batch["rater_valid"].dtype == bool
    np.testing.assert_array_equal(batch["rater_valid"].sum(axis=1) > 0, True)


def test_dataset_normalisation_uses_the_global_range(tmp_path):
    rng = np.random.default_rng(4)
    images = []
    for i in range(5):
        folder = tmp_path / "src" / f"c{i}"
        folder.mkdir(parents=True)
        images.append(rng.integers(100, 4000, (HEIGHT, WIDTH), dtype=np.uint16))
        write_array(str(folder / "image.png"), images[-1])
        write_array(str(folder / "mask.png"), np.zeros((HEIGHT, WIDTH), np.uint8))
    low, high = min(i.min() for i in images), max(i.max() for i in images)
    for normalization, scale in (("dtype", (0, 65535)), ("dataset", (low, high))):
        config = folder_config(tmp_path, name=normalization, image_size=0)
        config.update(normalization=normalization)
        data.build(config)
        for name, example in all_examples(config).items():
            want = (images[int(name[1:])] - np.float32(scale[0])) / np.float32(np.ptp(scale))
            np.testing.assert_allclose(example["image"][..., 0], want, rtol=1e-6)


def _break(root, what: str):
    """Makes one problem in the folder set at ``root`` (written by write_folder)."""
    case = os.path.join(root, "case03")
    if what == "size mismatch":
        write_array(os.path.join(case, "mask1.png"), np.zeros((HEIGHT, WIDTH + 1), np.uint8))
    elif what == "no image":
        os.remove(os.path.join(case, "image.png"))
    elif what == "no mask":
        for name in os.listdir(case):
            if name.startswith("mask"):
                os.remove(os.path.join(case, name))
    elif what == "truncated":
        path = os.path.join(case, "image.png")
        content = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(content[: len(content) // 2])
    elif what == "not binary":
        write_array(os.path.join(case, "mask0.png"), np.full((HEIGHT, WIDTH), 2, np.uint8))
    elif what == "NaN":
        os.remove(os.path.join(case, "image.png"))
        np.save(os.path.join(case, "image.npy"), np.full((HEIGHT, WIDTH), np.nan, np.float32))
    elif what == "volume":
        os.remove(os.path.join(case, "image.png"))
        volume = np.zeros((HEIGHT, WIDTH, 2), np.float32)
        write_array(os.path.join(case, "image.nii"), volume)
    elif what == "unknown case in splits":
        rows = [f"case{i:02d},train" for i in range(10)] + ["ghost,test"]
        with open(os.path.join(root, "splits.csv"), "w") as f:
            f.write("case,split\n" + "\n".join(rows) + "\n")
    elif what == "empty split":
        with open(os.path.join(root, "splits.csv"), "w") as f:
            f.write("case,split\n" + "".join(f"case{i:02d},train\n" for i in range(10)))


BROKEN = {
    "size mismatch": r"case03/mask1.png: mask of size \(20, 25\).*image",
    "no image": r"case03: no image matching 'image\.\*'",
    "no mask": r"case03: no mask matching 'mask\*'",
    "truncated": r"case03/image.png: unreadable or truncated",
    "not binary": r"case03/mask0.png: mask values \[2\], expected 0 or 1",
    "NaN": r"case03/image.npy: the image has NaN",
    "volume": r"case03/image.nii: a NIfTI volume of shape \(20, 24, 2\)",
    "unknown case in splits": r"splits.csv: 1 unknown case\(s\), e.g. \['ghost'\]",
    "empty split": r"splits.csv: split\(s\) \['validation', 'test'\] would be empty",
}


@pytest.mark.parametrize("what", list(BROKEN))
def test_broken_input_names_the_file_and_leaves_nothing(tmp_path, what):
    write_folder(tmp_path / "src", num=10)
    _break(str(tmp_path / "src"), what)
    config = folder_config(tmp_path, image_size=0)
    with pytest.raises(ValueError, match=BROKEN[what]):
        data.build(config)
    assert not os.path.exists(config.data_dir) or not os.listdir(config.data_dir)


def test_label_beyond_num_classes(tmp_path):
    write_folder(tmp_path / "src", ".npy", num_classes=4, num=5)
    with pytest.raises(ValueError, match=r"mask0.npy: mask values \[0 1 3\].*>= num_classes \(3\)"):
        data.build(folder_config(tmp_path, num_classes=3))


def test_too_few_cases_for_a_split(tmp_path):
    write_folder(tmp_path / "src", num=2)
    with pytest.raises(ValueError, match=r"src: split\(s\) \[.*\] would be empty"):
        data.build(folder_config(tmp_path))


def test_mask_file_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(5)
    mask = rng.integers(0, 5, (HEIGHT, WIDTH), dtype=np.uint8)
    for suffix in (".png", ".tif", ".npy", ".nii.gz"):
        path = str(tmp_path / f"mask{suffix}")
        write_array(path, mask)
        got = image_files.read_array(path)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, mask)


def _prepare_data(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "experiments.prepare_data", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def test_prepare_data_builds_a_named_set_or_says_what_is_wrong(tmp_path):
    write_folder(tmp_path / "src", ".npy", raters=(2, 3), num=5)
    flags = [f"--manual_dir={tmp_path / 'src'}", f"--data_dir={tmp_path / 'out'}", "--name=cli"]
    done = _prepare_data("--dataset=folder", *flags, "--image_size=8", "--mask_pattern=mask[01]*")
    assert done.returncode == 0, done.stderr
    info = data.dataset_info(folder_config(tmp_path, name="cli"))
    assert info == data.DatasetInfo("cli", (8, 8, 1), 2, 2)
    failed = _prepare_data("--dataset=pickle", *flags[:2], "--name=broken")
    assert failed.returncode != 0
    assert "no .pickle or .pkl file" in failed.stderr.strip().splitlines()[-1]
    assert sorted(os.listdir(tmp_path / "out")) == ["probunet_custom"]
