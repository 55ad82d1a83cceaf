"""Pickle data sets in the layout of the PyTorch port of the Probabilistic U-Net, for any data.

A pickle file holds a dict ``name -> {'image': [H, W] or [H, W, C], 'masks': list of A label
maps [H, W], 'series_uid': str}`` (LIDC's ``data_lidc.pickle`` is one); any ``A >= 1`` (varying
per entry), image size, channels and dtype. ``manual_dir`` is such a file, or a folder whose
``*.pickle`` / ``*.pkl`` files are merged (names must not repeat). Entries are split 60:20:20
by ``series_uid`` (no uid in two splits), seeded with ``split_seed``. Loaded with Python's
``pickle``: only use files from a source you trust.
"""

import os
import pickle
from collections.abc import Mapping

import ml_collections

from probunet_jax.data import records, splits

KEYS = ("image", "masks", "series_uid")
SUFFIXES = (".pickle", ".pkl")


def load(path: str) -> Mapping:
    """The dict in the pickle at ``path``; ValueError naming it if unreadable or malformed."""
    try:
        with open(path, "rb") as f:
            content = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as e:
        raise ValueError(f"{path} is not a readable pickle ({e!r}).") from e
    if not isinstance(content, Mapping) or not all(
        isinstance(v, Mapping) and set(KEYS) <= set(v) for v in content.values()
    ):
        raise ValueError(
            f"{path}: unknown format; expected a dict of name -> dict with keys {list(KEYS)}."
        )
    return content


def _files(manual_dir: str) -> list[str]:
    if os.path.isfile(manual_dir):
        return [manual_dir]
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"{manual_dir!r} is neither a pickle file nor a folder.")
    names = sorted(n for n in os.listdir(manual_dir) if n.endswith(SUFFIXES))
    if not names:
        raise ValueError(f"{manual_dir}: no {' or '.join(SUFFIXES)} file.")
    return [os.path.join(manual_dir, n) for n in names]


def load_all(manual_dir: str) -> dict[str, tuple[str, Mapping]]:
    """name -> (file, entry) over the pickle file(s) of ``manual_dir``."""
    entries: dict[str, tuple[str, Mapping]] = {}
    for path in _files(manual_dir):
        for name, entry in load(path).items():
            if name in entries:
                raise ValueError(f"{path}: entry {name!r} is also in {entries[name][0]}.")
            entries[str(name)] = (path, entry)
    if not entries:
        raise ValueError(f"{manual_dir}: the pickle holds no entries.")
    return entries


def read_entry(name: str, path: str, entry: Mapping, layout: records.Layout) -> dict:
    """The stored example of one entry (see :func:`records.make_example`), with its ``'id'``."""
    where = f"{path} [{name!r}]"
    masks = list(entry["masks"])
    example = records.make_example(
        entry["image"],
        masks,
        layout,
        image_name=f"{where} image",
        mask_names=[f"{where} mask {i}" for i in range(len(masks))],
    )
    return {**example, "id": name}


def source(config: ml_collections.ConfigDict, manual_dir: str) -> records.Source:
    """The checked pickle data set of ``config`` (layout fields); ``manual_dir`` is the
    absolute pickle file or folder."""
    entries = load_all(manual_dir)
    names = list(entries)
    indices = splits.split_groups(
        [str(entries[n][1]["series_uid"]) for n in names], int(config.split_seed)
    )
    by_split = {split: [names[i] for i in idx] for split, idx in indices.items()}
    splits.check_nonempty(by_split, manual_dir)
    first = entries[names[0]]
    layout = records.make_layout(
        first[1]["image"],
        max(len(entry["masks"]) for _, entry in entries.values()),
        config,
        lambda: ((entry["image"], f"{path} [{n!r}] image") for n, (path, entry) in entries.items()),
        f"{first[0]} [{names[0]!r}] image",
    )

    def read(name: str) -> dict:
        return read_entry(name, *entries[name], layout)

    description = {"source": "pickle", "manual_dir": manual_dir}
    return records.Source(layout, by_split, read, description)
