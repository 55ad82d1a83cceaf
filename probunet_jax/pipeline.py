"""The paper's pipeline: train every variant, evaluate each, compare them (Table 1, Fig. 2-4).

``experiments/paper.py`` is its launcher. For each variant, :func:`variant_configs` swaps the
variant's latent settings (``presets.VARIANTS``: family, latent dim, rank, mixture components,
temperature) into one base config, and :func:`run` trains and evaluates it in
``<root>/<variant>`` (``train.train_and_evaluate``: training, early stopping, evaluation of the
best parameters on the test split), then writes the comparison of all of them to
``<root>/comparison`` (``reporting.compare``: Table 1 as Markdown and CSV, pairwise Wilcoxon
signed-rank tests, Fig. 2-4 as PNG).

Every variant keeps the base config's network and training fields: with
``experiments/configs/authors.py`` the pipeline runs the authors' protocol. The evaluation
names a model ``presets.model_name`` (e.g. 'aa (authors)') where this module evaluates it.

Resumable: a variant whose ``<variant>/eval/summary.json`` exists is skipped, an interrupted
one resumes from its latest checkpoint; the comparison is always rebuilt.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import ml_collections
from absl import logging

from probunet_jax import checkpointing, evaluation, presets, reporting, train
from probunet_jax import config as config_lib

PAPER_VARIANTS = ("aa", "fc", "mixture_aa", "mixture_fc", "lr")
COMPARISON_DIR = "comparison"


def variant_configs(
    base: ml_collections.ConfigDict, variants: Sequence[str]
) -> dict[str, ml_collections.ConfigDict]:
    """``{variant: base with the variant's latent settings}``, each validated."""
    if not variants or len(set(variants)) != len(variants):
        raise ValueError(f"The pipeline needs distinct variants, got {list(variants)}.")
    if int(base.eval.num_samples) < 1:
        raise ValueError("The pipeline evaluates every variant: eval.num_samples must be >= 1.")
    for variant in variants:
        presets.check_variant(variant)
    configs = {variant: config_lib.with_variant(base, variant) for variant in variants}
    for config in configs.values():
        config_lib.validate(config)
    return configs


def is_evaluated(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, reporting.EVAL_DIR, reporting.SUMMARY_FILE))


def train_variant(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Trains (or resumes) and evaluates one variant, unless its evaluation exists."""
    if is_evaluated(workdir):
        logging.info("%s is evaluated already: skipping it.", workdir)
        return
    train.train_and_evaluate(config, workdir)
    if not is_evaluated(workdir):  # Training skipped its evaluation: do it here.
        config, _, variables = checkpointing.restore_best(workdir)
        name = presets.model_name(config.model)
        evaluation.evaluate_model(config, variables, workdir=workdir, model_name=name)


def run(root: str, configs: dict[str, ml_collections.ConfigDict]) -> reporting.Comparison:
    """Trains and evaluates each variant of ``configs`` in ``root/<variant>``, then compares."""
    workdirs = [os.path.join(root, variant) for variant in configs]
    start = time.perf_counter()
    for i, (variant, workdir) in enumerate(zip(configs, workdirs, strict=True), start=1):
        logging.info("[%d/%d] %s -> %s", i, len(configs), variant, workdir)
        started = time.perf_counter()
        train_variant(configs[variant], workdir)
        logging.info(
            "[%d/%d] %s done in %.0f s", i, len(configs), variant, time.perf_counter() - started
        )
    out = os.path.join(root, COMPARISON_DIR)
    logging.info("Comparing %d variants into %s", len(configs), out)
    result = reporting.compare(workdirs, out)
    logging.info("Paper pipeline finished in %.0f s.", time.perf_counter() - start)
    return result
