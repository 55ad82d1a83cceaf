"""Your own data end to end: folder data sets (RGB, 3 classes, varying rater counts) build,
train a few steps and evaluate with every metric."""

import json

import numpy as np
import pytest
from test_data_folder import write_folder

from probunet_jax import data, train


@pytest.mark.parametrize(
    "suffix, channels, num_classes, raters",
    [(".png", 3, 2, (3,)), (".npy", 1, 3, (1, 7, 3)), (".nii.gz", 1, 2, (1,))],
    ids=["png-rgb-binary-3-raters", "npy-3-class-1-to-7-raters", "nifti-binary-1-rater"],
)
def test_folder_data_trains_and_evaluates(
    make_config, tmp_path, suffix, channels, num_classes, raters
):
    write_folder(str(tmp_path / "cases"), suffix, channels, num_classes, raters, num=20)
    config = make_config(
        model=dict(num_classes=1 if num_classes == 2 else num_classes),
        data=dict(
            name="mine",
            data_dir=str(tmp_path / "data"),
            source="folder",
            manual_dir=str(tmp_path / "cases"),
            image_size=16,
            num_classes=num_classes,
        ),
        eval=dict(num_samples=3),
    )
    data.build(config.data)
    info = data.dataset_info(config.data)
    assert info.image_shape == (16, 16, channels) and info.num_raters == max(raters)
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    summary = result["evaluation"]
    assert summary["num_images"] == len(data.get_data_source(config.data, "test"))
    for name in ("ged", "hungarian_iou", "dice", "rater_ece", "ci_score"):
        assert np.isfinite(summary["metrics"][name]["mean"]), name
    if num_classes > 2:
        assert "iou_class2" in summary["metrics"]
    written = json.loads((tmp_path / "run" / "eval" / "summary.json").read_text())
    assert written["metrics"]["ged"] == summary["metrics"]["ged"]
