"""Compares evaluated models: Table 1, Wilcoxon tests on GED, truth metrics, figures.

  python -m experiments.compare --workdirs=runs/aa,runs/fc,runs/mixture_fc --out=runs/compare

Each workdir needs ``eval/{per_image.csv,summary.json,samples.npz}`` (see
``probunet_jax.reporting``); model names come from each ``summary.json``. Writes the tables
as CSV and Markdown, Fig. 2-4 and the reliability diagrams as PNG (``reporting.compare``).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags, logging

from experiments import cli
from probunet_jax import reporting

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Comma-separated workdirs of evaluated models.")
_OUT = flags.DEFINE_string("out", None, "Folder for the tables and figures.")
flags.mark_flags_as_required(["workdirs", "out"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    result = reporting.compare(_WORKDIRS.value, _OUT.value)
    print("Table 1: GED per model\n")
    print(reporting.ged_markdown(result.ged_table))
    if result.wilcoxon_table is None:
        logging.warning("Wilcoxon signed-rank test skipped: it needs at least 2 models.")
    else:
        print("Wilcoxon signed-rank tests on per-image GED (alpha = 0.05)\n")
        print(reporting.to_markdown(result.wilcoxon_table))
    if result.truth_table is not None:
        print("Calibration, CI score and truth metrics (means; oracle as reference)\n")
        print(reporting.labelled_markdown(result.truth_table))
    print(f"Wrote {len(result.files)} files to {_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
