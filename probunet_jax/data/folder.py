"""Folder data sets: one sub-folder per case holding an image and one mask file per rater.

Layout of ``root`` (the ``manual_dir``)::

  root/<case>/<image>       exactly one file matching ``image_pattern`` (default 'image.*')
  root/<case>/<masks...>    one file per rater matching ``mask_pattern`` (default 'mask*'),
                            raters in sorted file-name order; any number per case
  root/splits.csv           optional: 'case,split' or 'case,group' (see splits.py)

Patterns are shell-style (``fnmatch``) on file names; hidden entries are ignored. Files are read
by :func:`probunet_jax.data.image_files.read_array` (PNG, TIFF, NPY, NIfTI). Without a split
file the cases are split 60:20:20 at random with ``split_seed``.
"""

import fnmatch
import os
from typing import NamedTuple

import ml_collections

from probunet_jax.data import image_files, records, splits

SPLIT_FILE = "splits.csv"


class Case(NamedTuple):
    """One case: its name (the sub-folder) and the paths of its image and mask files."""

    name: str
    image: str
    masks: tuple[str, ...]


def _visible(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def _case(root: str, name: str, image_pattern: str, mask_pattern: str) -> Case:
    folder = os.path.join(root, name)
    files = [f for f in _visible(folder) if os.path.isfile(os.path.join(folder, f))]
    images = fnmatch.filter(files, image_pattern)
    masks = [f for f in fnmatch.filter(files, mask_pattern) if f not in images]
    if len(images) != 1:
        problem = "no image" if not images else f"{len(images)} images {images[:3]}"
        raise ValueError(f"{folder}: {problem} matching {image_pattern!r}; expected exactly one.")
    if not masks:
        raise ValueError(f"{folder}: no mask matching {mask_pattern!r}; expected one per rater.")
    paths = tuple(os.path.join(folder, m) for m in masks)
    return Case(name, os.path.join(folder, images[0]), paths)


def list_cases(root: str, image_pattern: str, mask_pattern: str) -> list[Case]:
    """The cases under ``root``, sorted by name; ValueError naming the folder if one is bad."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root!r} is not a folder; pass --manual_dir=<data set folder>.")
    names = [n for n in _visible(root) if os.path.isdir(os.path.join(root, n))]
    if not names:
        raise ValueError(f"{root}: no case sub-folders; expected {root}/<case>/<files>.")
    return [_case(root, name, image_pattern, mask_pattern) for name in names]


def read_case(case: Case, layout: records.Layout) -> dict:
    """The stored example of ``case`` (see :func:`records.make_example`), with its ``'id'``."""
    example = records.make_example(
        image_files.read_array(case.image),
        [image_files.read_array(path) for path in case.masks],
        layout,
        image_name=case.image,
        mask_names=case.masks,
    )
    return {**example, "id": case.name}


def case_splits(root: str, cases: list[Case], seed: int) -> dict[str, list[Case]]:
    """Cases by split: from ``root/splits.csv`` if present, else a seeded 60:20:20 split."""
    by_name = {case.name: case for case in cases}
    path = os.path.join(root, SPLIT_FILE)
    if os.path.exists(path):
        names = splits.read_split_file(path, list(by_name), seed)
    else:
        indices = splits.split_groups(list(by_name), seed)
        names = {split: [cases[i].name for i in idx] for split, idx in indices.items()}
        splits.check_nonempty(names, root)
    return {split: [by_name[name] for name in names[split]] for split in splits.SPLITS}


def source(config: ml_collections.ConfigDict, manual_dir: str) -> records.Source:
    """The checked folder data set of ``config`` (patterns, layout fields) at the absolute
    ``manual_dir``."""
    root = manual_dir
    cases = list_cases(root, config.image_pattern, config.mask_pattern)
    by_split = case_splits(root, cases, int(config.split_seed))
    layout = records.make_layout(
        image_files.read_array(cases[0].image),
        max(len(case.masks) for case in cases),
        config,
        lambda: ((image_files.read_array(case.image), case.image) for case in cases),
        cases[0].image,
    )
    description = {
        "source": "folder",
        "manual_dir": root,
        "image_pattern": config.image_pattern,
        "mask_pattern": config.mask_pattern,
    }
    return records.Source(layout, by_split, lambda case: read_case(case, layout), description)
