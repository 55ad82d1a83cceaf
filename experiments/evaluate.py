"""Evaluates the best checkpoint of a training workdir on the test set.

  python -m experiments.evaluate --workdir=runs/quickstart
  python -m experiments.evaluate --workdir=runs/quickstart --num_samples=100 --split=validation

Draws ``--num_samples`` samples per image (default: the run's ``config.eval.num_samples``, the
paper's 16), computes every metric of ``probunet_jax.metrics`` and, on the synthetic set, the
oracle's GED from as many oracle samples; writes ``<workdir>/eval/{per_image.csv,samples.npz,
summary.json}`` (see ``probunet_jax.reporting``) and prints a summary table. Compare several
evaluated workdirs with ``python -m experiments.compare``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
from absl import app, flags, logging

from experiments import cli
from probunet_jax import checkpointing, evaluation
from probunet_jax import config as config_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding the best checkpoint.")
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", None, "Samples per image (default: the run's config.eval.num_samples)."
)
_SPLIT = flags.DEFINE_enum(
    "split", None, list(config_lib.EVAL_SPLITS), "Split (default: config.eval.split, 'test')."
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Images per batch (default: config.eval.batch_size)."
)
_SEED = flags.DEFINE_integer("seed", None, "Sampling seed (default: the run's config.seed).")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Where the data sets live, if not the run's config.data.data_dir."
)
flags.mark_flag_as_required("workdir")

ROWS = (
    ("GED", "ged"),
    ("  E[d(S,Y)]", "sample_annotation_distance"),
    ("  E[d(S,S')]", "sample_diversity"),
    ("  E[d(Y,Y')]", "annotation_diversity"),
    ("Hungarian IoU", "hungarian_iou"),
    ("NCC", "ncc"),
    ("Dice (mean masks)", "dice"),
    ("Oracle GED", "oracle_ged"),
    ("  oracle E[d(S,Y)]", "oracle_sample_annotation_distance"),
    ("  oracle E[d(S,S')]", "oracle_sample_diversity"),
)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_table(summary: Mapping) -> str:
    """A Markdown table of a summary: metric, mean ± std, median, number of finite values."""
    lines = ["| metric | mean ± std | median | n |", "|---|---|---|---|"]
    for label, column in ROWS:
        stats = summary["metrics"].get(column)
        if stats is None:
            continue
        mean = f"{_number(stats['mean'])} ± {_number(stats['std'])}"
        lines.append(f"| {label} | {mean} | {_number(stats['median'])} | {stats['count']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = _WORKDIR.value
    if not os.path.isdir(workdir):
        raise app.UsageError(f"--workdir={workdir!r} does not exist.")
    try:
        config, _, variables = checkpointing.restore_best(workdir)
    except FileNotFoundError as e:
        raise app.UsageError(f"Cannot evaluate {workdir!r}: {e}") from e
    if _DATA_DIR.value is not None:
        config.data.data_dir = _DATA_DIR.value
    seed = config.seed if _SEED.value is None else _SEED.value
    try:
        summary = evaluation.evaluate_model(
            config,
            variables,
            workdir=workdir,
            split=_SPLIT.value,
            num_samples=_NUM_SAMPLES.value,
            batch_size=_BATCH_SIZE.value,
            key=jax.random.key(seed),
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    split = _SPLIT.value or config.eval.split
    print(
        f"\n{summary['model']} on the {split} split: {summary['num_images']} images, "
        f"{summary['num_samples']} samples each\n"
    )
    print(summary_table(summary))
    logging.info("Wrote %s", os.path.join(workdir, "eval"))


if __name__ == "__main__":
    cli.run(main)
