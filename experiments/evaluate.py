"""Evaluates the best checkpoint of a training workdir on the test set.

  python -m experiments.evaluate --workdir=runs/quickstart
  python -m experiments.evaluate --workdir=runs/quickstart --num_samples=100 --split=validation

Draws ``--num_samples`` samples per image (default: the run's ``config.eval.num_samples``, the
paper's 16), computes every metric of ``probunet_jax.metrics`` and ``probunet_jax.calibration``
(pixel calibration against the raters, CI score) and, on the synthetic set, those of
``probunet_jax.truth`` with the oracle's from as many oracle samples; writes
``<workdir>/eval/{per_image.csv,samples.npz,summary.json}`` (see ``probunet_jax.reporting``)
and prints the summary: every metric, the means per scenario and the reliability ECEs.
Compare several evaluated workdirs with ``python -m experiments.compare``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
from absl import app, flags, logging

from experiments import cli
from probunet_jax import checkpointing, evaluation, reporting
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


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    workdir = _WORKDIR.value
    if not os.path.isdir(workdir):
        raise app.UsageError(f"--workdir={workdir!r} does not exist.")
    config, _, variables = checkpointing.restore_best(workdir)
    if _DATA_DIR.value is not None:
        config.data.data_dir = _DATA_DIR.value
    seed = config.seed if _SEED.value is None else _SEED.value
    summary = evaluation.evaluate_model(
        config,
        variables,
        workdir=workdir,
        split=_SPLIT.value,
        num_samples=_NUM_SAMPLES.value,
        batch_size=_BATCH_SIZE.value,
        key=jax.random.key(seed),
    )
    split = _SPLIT.value or config.eval.split
    print(
        f"\n{summary['model']} on the {split} split: {summary['num_images']} images, "
        f"{summary['num_samples']} samples each\n"
    )
    print(reporting.summary_markdown(summary))
    logging.info("Wrote %s", os.path.join(workdir, "eval"))


if __name__ == "__main__":
    cli.run(main)
