"""The files a search leaves in its root: the trial tables, the winner and its config file.

* ``trials.csv``: one row per trial: its searched values (blank where the variant has none),
  status, best validation loss, validation GED (and the oracle's where the data set has one).
* ``trials.json``: every trial's config and full results.
* ``best.json``: the winner, the metric it won by, its validation loss and GED.
* ``best_config.py``: the winner's config with the base config's eval section (the real run
  evaluates on the base's split, normally test), a config file that
  ``python -m experiments.train --config=best_config.py`` accepts.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import pprint
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections

from probunet_jax import config as config_lib
from probunet_jax import files
from probunet_jax.search import selection
from probunet_jax.search import trials as trials_lib

TABLE_CSV = "trials.csv"
TABLE_JSON = "trials.json"
BEST_JSON = "best.json"
BEST_CONFIG = "best_config.py"
SEARCHED = ("latent_dim", "beta", "rank", "num_components", "temperature")
SCORES = ("best_validation_loss", "validation_ged", "validation_oracle_ged")
RESULTS = (*SCORES, "best_step", "final_step", "seconds")
TABLE_COLUMNS = ("trial_id", "status", "variant", *SEARCHED, *RESULTS, "workdir")
SECTIONS = ("model", "data", "train", "eval")


class SearchSummary(NamedTuple):
    """The outcome of a search.

    Attributes:
      outcomes: every trial's state.
      best: the winner.
      select_by: what it won by ('ged' or 'loss', a key of ``selection.METRICS``).
      files: the written files (tables, best.json, best_config.py).
    """

    outcomes: list[trials_lib.TrialResult]
    best: trials_lib.TrialResult
    select_by: str
    files: list[Path]


def table_row(outcome: trials_lib.TrialResult) -> dict[str, Any]:
    """One row of ``trials.csv`` (blank where a value is unknown or unused)."""
    values = {
        "trial_id": outcome.trial.trial_id,
        "status": outcome.status,
        "variant": outcome.trial.variant,
        **outcome.trial.overrides,
        **outcome.result,
        "workdir": outcome.workdir,
    }
    return {c: "" if values.get(c) is None else values[c] for c in TABLE_COLUMNS}


def write_tables(root: str | os.PathLike, outcomes: Sequence[trials_lib.TrialResult]) -> list[Path]:
    """Writes ``root/trials.csv`` and ``root/trials.json``; returns their paths."""
    root = Path(root)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=TABLE_COLUMNS)
    writer.writeheader()
    writer.writerows(table_row(o) for o in outcomes)
    files.write_atomic(root / TABLE_CSV, buffer.getvalue())
    records = [
        {**trials_lib.plain(o.trial._asdict()), "status": o.status, "result": o.result}
        for o in outcomes
    ]
    files.write_json(root / TABLE_JSON, records, sort_keys=True)
    return [root / TABLE_CSV, root / TABLE_JSON]


def release_config(
    trial: trials_lib.Trial, base: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """The config to train a trial's settings for real: its config with ``base``'s eval
    section (the final evaluation on the base's split)."""
    config = ml_collections.ConfigDict(trial.config.to_dict())
    config.eval = ml_collections.ConfigDict(base.eval.to_dict())
    return config


def best_config_source(config: ml_collections.ConfigDict, comment: str = "") -> str:
    """Python source of a config file whose ``get_config()`` is ``config``, as a call of
    ``probunet_jax.config.get_config``.

    Raises ValueError if that call would not give back ``config`` (a field the schema does not
    know, a value that is not a plain literal).
    """
    sections = {name: config[name].to_dict() for name in SECTIONS}
    variant = sections["model"].pop("variant")
    text = pprint.pformat(sections, indent=1, width=96, sort_dicts=True)
    rebuilt = config_lib.get_config(variant, seed=config.seed, **ast.literal_eval(text))
    if rebuilt.to_dict() != config.to_dict():
        raise ValueError(f"The config is not a plain get_config() call: {config.to_dict()}")
    header = "\n".join(f"# {line}".rstrip() for line in comment.splitlines())
    return (
        '"""The winner of a hyperparameter search (written by probunet_jax.search).\n\n'
        "  python -m experiments.train --config=<this file> --workdir=...\n"
        f'"""\n\n{header}\n\nfrom probunet_jax import config\n\nSECTIONS = {text}\n\n\n'
        "def get_config():\n"
        f"    return config.get_config({variant!r}, seed={config.seed!r}, **SECTIONS)\n"
    )


def write_report(
    root: str | os.PathLike,
    outcomes: Sequence[trials_lib.TrialResult],
    base: ml_collections.ConfigDict,
    select_by: str,
) -> SearchSummary:
    """Writes the tables, selects the winner by ``select_by`` (a key of ``selection.METRICS``)
    and writes ``best.json`` and ``best_config.py``."""
    root = Path(root)
    written = write_tables(root, outcomes)
    metric = selection.METRICS[select_by]
    best = selection.select_best(outcomes, metric)
    record = {
        "trial_id": best.trial.trial_id,
        "variant": best.trial.variant,
        "overrides": best.trial.overrides,
        "select_by": select_by,
        **{key: best.result.get(key) for key in SCORES},
        "validation": best.result.get("validation"),
        "workdir": best.workdir,
    }
    files.write_json(root / BEST_JSON, record, sort_keys=True)
    comment = (
        f"Winner by {metric} of {len(outcomes)} trials in {root}: {best.trial.trial_id}\n"
        + "".join(f"{key} = {record[key]}\n" for key in SCORES)
        + f"searched values: {json.dumps(best.trial.overrides, sort_keys=True)}"
    )
    source = best_config_source(release_config(best.trial, base), comment)
    files.write_atomic(root / BEST_CONFIG, source)
    written += [root / BEST_JSON, root / BEST_CONFIG]
    return SearchSummary(list(outcomes), best, select_by, written)


def describe(summary: SearchSummary) -> str:
    """Lines for the console: the winner, its loss and GED, the written files."""
    best = summary.best
    return "\n".join(
        [
            f"Best of {len(summary.outcomes)} trials by {summary.select_by}: "
            f"{best.trial.trial_id} {best.trial.overrides}",
            *(f"  {key} = {best.result.get(key)}" for key in SCORES),
            "Wrote " + ", ".join(str(f) for f in summary.files),
        ]
    )
