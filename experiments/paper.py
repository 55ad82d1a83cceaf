"""The paper's pipeline in one command: train every variant, evaluate, compare (Table 1, Fig. 2-4).

  python -m experiments.paper --root=runs/paper                      # synthetic set, CPU-sized
  python -m experiments.paper --root=runs/paper_lidc --config=experiments/configs/paper.py
  python -m experiments.paper --root=/tmp/paper --config=experiments/configs/test.py \\
      --variants=aa,fc                                                # a smoke test
  python -m experiments.paper --root=runs/mine --dataset=NAME        # a data set of your own

``--config`` is the base config of every variant (default ``experiments/configs/default.py``;
``--config.a.b=value`` overrides a field of all of them), ``--dataset`` sets its
``data.name``; each variant of ``--variants`` gets its own latent settings
(``probunet_jax.pipeline``). Re-running resumes; after changing settings use a new ``--root``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from probunet_jax import pipeline, reporting

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/default.py", "Base config of every variant."
)
_ROOT = flags.DEFINE_string(
    "root", None, "Folder of the runs: <root>/<variant>, <root>/comparison."
)
_VARIANTS = flags.DEFINE_list(
    "variants", list(pipeline.PAPER_VARIANTS), "Variants to train and compare."
)
_DATASET = flags.DEFINE_string(
    "dataset", None, "data.name of every variant (default: the config's)."
)
flags.mark_flag_as_required("root")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    base = _CONFIG.value
    if _DATASET.value is not None:
        base.data.name = _DATASET.value
    result = pipeline.run(_ROOT.value, pipeline.variant_configs(base, _VARIANTS.value))
    print("\nTable 1: GED per model (test split)\n")
    print(reporting.ged_markdown(result.ged_table))
    first = reporting.load_evaluation(os.path.join(_ROOT.value, _VARIANTS.value[0])).per_image
    if reporting.ORACLE_GED in first:
        print(f"Oracle GED (as many samples per image): {first[reporting.ORACLE_GED].mean():.3f}\n")
    if result.wilcoxon_table is not None:
        print("Wilcoxon signed-rank tests on per-image GED (alpha = 0.05)\n")
        print(reporting.to_markdown(result.wilcoxon_table))
    print(
        f"Wrote {len(result.files)} files to {os.path.join(_ROOT.value, pipeline.COMPARISON_DIR)}"
    )


if __name__ == "__main__":
    cli.run(main)
