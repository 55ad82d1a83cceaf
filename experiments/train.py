"""Trains a (Generalized) Probabilistic U-Net, then evaluates it on the test split.

  python -m experiments.train --workdir=runs/quickstart                  # Mixture-FC, synthetic
  python -m experiments.train --config=experiments/configs/paper.py:fc --workdir=runs/fc
  python -m experiments.train --workdir=runs/quickstart --config.train.num_steps=4000  # extend

Running the same command again on the same workdir resumes from its latest checkpoint. With
``--multihost`` every process runs this same command (``jax.distributed.initialize()`` reads
the cluster from the environment: SLURM, Cloud TPU, or JAX_COORDINATOR_ADDRESS etc.).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cli
from probunet_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/default.py", "Training config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run (checkpoints, logs, eval).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first (one process per host)."
)
flags.mark_flags_as_required(["workdir"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _MULTIHOST.value:
        jax.distributed.initialize()
    logging.info(
        "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
    )
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    logging.info(
        "Done: final step %d, best validation %s %.4f at step %d.",
        result["final_step"],
        _CONFIG.value.train.select_by,
        result[f"best_validation_{_CONFIG.value.train.select_by}"],
        result["best_step"],
    )


if __name__ == "__main__":
    cli.run(main)
