"""The quality study: every variant at a few budgets on the synthetic set, against the truth.

  python -m experiments.study --root=runs/study                       # ~1 hour on 2 cores
  python -m experiments.study --root=runs/study_long --budgets=3000 \\
      --config=experiments/configs/default.py --config.train.schedule=cosine

Writes ``<root>/study.md``, ``study.csv`` and ``learning_curves.png`` (``probunet_jax.study``);
re-running resumes. ``--config`` is the base config of every run (``--config.a.b=value``
overrides a field of all of them).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from probunet_jax import presets, reporting, study

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/default.py", "Base config of every run."
)
_ROOT = flags.DEFINE_string("root", None, "Folder of the study: <root>/<variant>/<budget>.")
_VARIANTS = flags.DEFINE_list("variants", list(presets.VARIANTS), "Variants to train.")
_BUDGETS = flags.DEFINE_list("budgets", ["600", "1500"], "Training steps of each run.")
flags.mark_flag_as_required("root")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    budgets = [int(b) for b in _BUDGETS.value]
    runs = study.study_runs(_CONFIG.value, _VARIANTS.value, budgets, _ROOT.value)
    table = study.run(runs, _ROOT.value)
    print(reporting.to_markdown(table.round(3)))


if __name__ == "__main__":
    cli.run(main)
