"""Train/validation/test splits: seeded 60:20:20 by group, or as listed in a ``splits.csv``.

A split file is a CSV with a header and one row per case, either ``case,split`` (``split`` one
of ``train``, ``validation`` (or ``val``), ``test``: kept as given) or ``case,group`` (a group
such as a patient id: the cases are split by :func:`split_groups`, no group in two splits).
"""

import collections
import csv
from collections.abc import Mapping, Sequence

import numpy as np

SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
SPLIT_SEED = 20220901
_SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}


def split_groups(groups: Sequence[str], seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """60:20:20 split of items by group, no group in two splits: split -> sorted item indices.

    Groups are shuffled with ``seed`` and laid end to end by their item counts; a group goes to
    the split (by cumulative fraction) in which its midpoint falls. With one item per group this
    is a plain seeded 60:20:20 split of the items.
    """
    if len(groups) == 0:
        return {name: np.zeros(0, np.int64) for name in SPLITS}
    names, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    ends = np.cumsum(counts[order]) / len(groups)  # Cumulative share after each group.
    bounds = np.cumsum(SPLIT_FRACTIONS)[:-1]
    split_of_group = np.empty(len(names), np.int64)
    split_of_group[order] = np.searchsorted(bounds, ends - 0.5 * counts[order] / len(groups))
    split_of_item = split_of_group[inverse]
    return {name: np.flatnonzero(split_of_item == i) for i, name in enumerate(SPLITS)}


def check_nonempty(splits: Mapping[str, Sequence], source: str) -> None:
    """Raises ValueError naming ``source`` if a split has no item."""
    empty = [name for name in SPLITS if len(splits[name]) == 0]
    if empty:
        raise ValueError(f"{source}: split(s) {empty} would be empty; the data set is too small.")


def _read_rows(path: str) -> tuple[str, list[list[str]]]:
    """The second column's header ('split' or 'group') and the data rows of a split file."""
    try:
        with open(path, newline="") as f:
            rows = [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: unreadable split file ({e}).") from e
    header = [cell.strip() for cell in rows[0]] if rows else []
    if header not in (["case", "split"], ["case", "group"]):
        raise ValueError(f"{path}: the header must be 'case,split' or 'case,group', got {header}.")
    bad = [row for row in rows[1:] if len(row) != 2]
    if bad:
        raise ValueError(f"{path}: rows must have 2 columns, got {bad[0]}.")
    return header[1], [[cell.strip() for cell in row] for row in rows[1:]]


def read_split_file(path: str, cases: Sequence[str], seed: int = SPLIT_SEED) -> dict[str, list]:
    """Cases by split from the split file at ``path``: split -> list of case names.

    Raises ValueError naming the file if it names unknown cases, misses or repeats a case, has
    an unknown split name, or leaves a split empty.
    """
    kind, rows = _read_rows(path)
    listed = [row[0] for row in rows]
    unknown = sorted(set(listed) - set(cases))
    missing = sorted(set(cases) - set(listed))
    repeated = sorted(case for case, count in collections.Counter(listed).items() if count > 1)
    for problem, names in (("unknown", unknown), ("missing", missing), ("repeated", repeated)):
        if names:
            raise ValueError(f"{path}: {len(names)} {problem} case(s), e.g. {names[:5]}.")
    if kind == "group":
        indices = split_groups([row[1] for row in rows], seed)
        result = {split: [listed[i] for i in idx] for split, idx in indices.items()}
    else:
        wrong = sorted({row[1] for row in rows} - set(_SPLIT_NAMES))
        if wrong:
            raise ValueError(f"{path}: unknown split name(s) {wrong}; use train, validation, test.")
        result = {split: [c for c, s in rows if _SPLIT_NAMES[s] == split] for split in SPLITS}
    check_nonempty(result, path)
    return result
