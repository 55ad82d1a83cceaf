"""What a data set looks like (:class:`DatasetInfo`), and the manifest of named data sets.

A named (folder or pickle) data set is built into ``data_dir/probunet_custom/NAME/1.0.0/``; next
to TFDS's files it holds ``manifest.json``: its name, ``image_shape`` [H, W, C],
``num_classes``, ``num_raters``, how it was made (``layout``) and from what (``source``), and
the examples per split. :func:`dataset_info` reads it, so training needs only the name.
"""

import json
import os
from typing import NamedTuple

import ml_collections

from probunet_jax.data import config as config_lib
from probunet_jax.data import lidc, records
from probunet_jax.files import write_json

CUSTOM_DIR = "probunet_custom"  # The TFDS name of builders.ProbunetCustom.
VERSION = "1.0.0"
MANIFEST = "manifest.json"


class DatasetInfo(NamedTuple):
    """The shape of a data set's stored examples."""

    name: str
    image_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int  # K, 2 for binary masks
    num_raters: int  # A, the maximum number of raters of an image (masks are padded to it)


def data_dir(config: ml_collections.ConfigDict) -> str:
    """The absolute ``config.data_dir``."""
    return os.path.abspath(os.path.expanduser(config.data_dir))


def named_path(data_dir: str, name: str) -> str:
    """The folder of the built named data set ``name`` in ``data_dir``."""
    return os.path.join(data_dir, CUSTOM_DIR, name, VERSION)


def built_names(data_dir: str) -> list[str]:
    """Names of the named data sets built in ``data_dir``, sorted."""
    root = os.path.join(data_dir, CUSTOM_DIR)
    if not os.path.isdir(root):
        return []
    return sorted(
        n
        for n in os.listdir(root)
        if os.path.isfile(os.path.join(named_path(data_dir, n), MANIFEST))
    )


def write_manifest(folder: str, name: str, source: records.Source, sizes: dict[str, int]) -> None:
    """Writes ``folder/manifest.json`` for the data set ``name`` built from ``source``."""
    layout = source.layout
    write_json(
        os.path.join(folder, MANIFEST),
        {
            "name": name,
            "image_shape": [layout.height, layout.width, layout.channels],
            "num_classes": layout.num_classes,
            "num_raters": layout.num_raters,
            "layout": layout._asdict(),
            "source": source.description,
            "num_examples": sizes,
        },
    )


def read_manifest(data_dir: str, name: str) -> dict:
    """The manifest of the named set ``name``; FileNotFoundError naming what is built if absent."""
    path = os.path.join(named_path(data_dir, name), MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No data set {name!r} is built in {data_dir} (built there: "
            f"{built_names(data_dir) or 'none'}). Build it once with: python -m "
            f"experiments.prepare_data --dataset=folder|pickle --name={name} --manual_dir=<source> "
            f"--data_dir={data_dir} (see data/README.md)."
        )
    with open(path) as f:
        return json.load(f)


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
    """The shape of the data set of the data ``config``, without building it.

    Synthetic: from ``config`` (C = 1); LIDC: 128 x 128 x 1, 2 classes, 4 raters; a named set:
    from its manifest (FileNotFoundError naming ``data_dir`` and the built names if absent).
    """
    config_lib.validate_data_config(config)
    if config.name == "synthetic":
        size = int(config.image_size)
        return DatasetInfo(
            "synthetic", (size, size, 1), int(config.num_classes), int(config.num_annotations)
        )
    if config.name == "lidc":
        return DatasetInfo("lidc", (lidc.IMAGE_SIZE, lidc.IMAGE_SIZE, 1), 2, lidc.NUM_ANNOTATIONS)
    manifest = read_manifest(data_dir(config), config.name)
    return DatasetInfo(
        config.name, tuple(manifest["image_shape"]), manifest["num_classes"], manifest["num_raters"]
    )
