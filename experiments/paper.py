"""The paper's pipeline in one command: train every variant, evaluate, compare (Table 1, Fig. 2-4).

  python -m experiments.paper --root=runs/paper                      # synthetic set, CPU-sized
  python -m experiments.paper --root=runs/paper_lidc --dataset=lidc  # LIDC, the paper's configs
  python -m experiments.paper --root=/tmp/paper --tiny --variants=aa,fc  # a smoke test

For each variant of ``--variants`` (default: the paper's four and the low-rank ``lr``) it runs
``train.train_and_evaluate`` in ``<root>/<variant>`` (training, early stopping, evaluation of
the best parameters on the test split with ``eval.num_samples`` samples per image), then
writes the comparison of all of them to ``<root>/comparison`` (``reporting.compare``: Table 1
as Markdown and CSV, pairwise Wilcoxon signed-rank tests, Fig. 2-4 as PNG).

Configs: on the synthetic set ``experiments/configs/default.py`` (the CPU-sized main job) with
each variant's latent settings (``presets.VARIANTS``: family, latent dim, rank, mixture
components, temperature) swapped in; with ``--dataset=lidc`` ``experiments/configs/paper.py:
<variant>``; ``--tiny`` uses ``experiments/configs/test.py`` and ``--config`` any config file
(one whose ``get_config`` takes an argument gets the variant name). ``--override`` sets any
field of every variant's config, e.g. ``--override=train.num_steps=20000``.

Resumable: a variant whose ``<variant>/eval/summary.json`` exists is skipped, an interrupted
one resumes from its latest checkpoint; the comparison is always rebuilt.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import ml_collections
from absl import app, flags, logging

from experiments.configs.base import variant_config
from probunet_jax import checkpointing, evaluation, reporting

PAPER_VARIANTS = ("aa", "fc", "mixture_aa", "mixture_fc", "lr")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
DEFAULT_CONFIGS = {
    "synthetic": os.path.join(CONFIG_DIR, "default.py"),
    "lidc": os.path.join(CONFIG_DIR, "paper.py"),
}
TINY_CONFIG = os.path.join(CONFIG_DIR, "test.py")
COMPARISON_DIR = "comparison"

_ROOT = flags.DEFINE_string(
    "root", None, "Folder of the runs: <root>/<variant>, <root>/comparison."
)
_VARIANTS = flags.DEFINE_list("variants", list(PAPER_VARIANTS), "Variants to train and compare.")
_DATASET = flags.DEFINE_enum("dataset", "synthetic", ["synthetic", "lidc"], "Data set.")
_CONFIG = flags.DEFINE_string(
    "config", None, "Config file (default: configs/default.py, or configs/paper.py for LIDC)."
)
_TINY = flags.DEFINE_bool("tiny", False, "Use configs/test.py: a smoke test of the pipeline.")
_OVERRIDE = flags.DEFINE_multi_string(
    "override", [], "key.path=value set in every variant's config, e.g. train.num_steps=100."
)
flags.mark_flag_as_required("root")


# --------------------------------------------------------------------------- pipeline


def is_evaluated(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, reporting.EVAL_DIR, reporting.SUMMARY_FILE))


def train_variant(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Trains (or resumes) and evaluates one variant, unless its evaluation exists."""
    from probunet_jax import train  # Imported here: the configs and CLI load without it.

    if is_evaluated(workdir):
        logging.info("%s is evaluated already: skipping it.", workdir)
        return
    train.train_and_evaluate(config, workdir)
    if not is_evaluated(workdir):  # Training skipped its evaluation: do it here.
        config, _, variables = checkpointing.restore_best(workdir)
        evaluation.evaluate_model(config, variables, workdir=workdir)


def run_pipeline(
    root: str, variants: Sequence[str], configs: dict[str, ml_collections.ConfigDict]
) -> reporting.Comparison:
    """Trains and evaluates each variant in ``root/<variant>``, then compares them."""
    if not variants or len(set(variants)) != len(variants):
        raise ValueError(f"--variants must name distinct variants, got {list(variants)}.")
    workdirs = [os.path.join(root, v) for v in variants]
    start = time.perf_counter()
    for i, (variant, workdir) in enumerate(zip(variants, workdirs, strict=True), start=1):
        logging.info("[%d/%d] %s -> %s", i, len(variants), variant, workdir)
        t0 = time.perf_counter()
        train_variant(configs[variant], workdir)
        logging.info(
            "[%d/%d] %s done in %.0f s", i, len(variants), variant, time.perf_counter() - t0
        )
    out = os.path.join(root, COMPARISON_DIR)
    logging.info("Comparing %d variants into %s", len(variants), out)
    result = reporting.compare(workdirs, out)
    logging.info("Paper pipeline finished in %.0f s.", time.perf_counter() - start)
    return result


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _TINY.value and _CONFIG.value:
        raise app.UsageError("Give either --tiny or --config, not both.")
    config_file = TINY_CONFIG if _TINY.value else _CONFIG.value or DEFAULT_CONFIGS[_DATASET.value]
    # A given --config keeps its data set unless --dataset is given too.
    dataset = _DATASET.value if flags.FLAGS["dataset"].present or not _CONFIG.value else None
    try:
        configs = {
            v: variant_config(config_file, v, dataset, _OVERRIDE.value) for v in _VARIANTS.value
        }
        result = run_pipeline(_ROOT.value, _VARIANTS.value, configs)
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from e
    print("\nTable 1: GED per model (test split)\n")
    print(reporting.ged_markdown(result.ged_table))
    first = reporting.load_evaluation(os.path.join(_ROOT.value, _VARIANTS.value[0])).per_image
    if reporting.ORACLE_GED in first:
        oracle = first[reporting.ORACLE_GED].mean()
        print(f"Oracle GED (as many samples per image): {oracle:.3f}\n")
    if result.wilcoxon_table is not None:
        print("Wilcoxon signed-rank tests on per-image GED (alpha = 0.05)\n")
        print(reporting.to_markdown(result.wilcoxon_table))
    print(f"Wrote {len(result.files)} files to {os.path.join(_ROOT.value, COMPARISON_DIR)}")


if __name__ == "__main__":
    app.run(main)
