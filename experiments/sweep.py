"""The paper's hyperparameter search (Appendix A, Table 2) for one model variant.

  # Sequential trials on this machine (resumable: re-run the same command to continue):
  python -m experiments.sweep --variant=mixture_fc --root=runs/sweep_mixture_fc

  # Ray Tune with ASHA early stopping (pip install -e '.[ray]'), on a local Ray instance
  # or a cluster (--ray_address=auto; --root must then be shared storage):
  python -m experiments.sweep --variant=mixture_fc --root=/shared/sweep --backend=ray \\
      --gpus_per_trial=1 --chunk_steps=500

  # Train the winner for real (its final evaluation runs on the base config's eval split):
  python -m experiments.train --config=runs/sweep_mixture_fc/best_config.py --workdir=runs/best

The grid latent dim {2, 4, 6, 8} × β {1, 10, 100} is crossed with --num_random seeded draws of
the variant's rank [1, 5] (low-rank variants, rank < latent dim), mixture components [1, 10]
and temperature [0.1, 0.5] (mixtures). The hierarchical variants (``hier_*``) search their latent
dim per position on the grid {1, 2, 4} (--position_latent_dims) and draw their latent scales
from [1, 3] (--latent_scales, cut to the base network's levels − 1). Every trial trains
``--base_config`` (fields can be overridden: ``--base_config.train.num_steps=2000``) with its
model values; its best checkpoint is evaluated on the validation split, and the winner has the
lowest validation GED
(``--select_by=loss``: the lowest validation loss, which cannot compare different β; see
``probunet_jax.search.selection``). Writes ``root/trials.csv``, ``root/trials.json``,
``root/best.json`` and ``root/best_config.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from probunet_jax import presets, search

_BASE_CONFIG = config_flags.DEFINE_config_file(
    "base_config",
    "experiments/configs/default.py",
    "Config file of the base training config; every trial overrides its model fields.",
)
_VARIANT = flags.DEFINE_enum("variant", "mixture_fc", list(presets.ALL_VARIANTS), "Model variant.")
_ROOT = flags.DEFINE_string("root", None, "Folder of the sweep (trials, tables, best config).")
_BACKEND = flags.DEFINE_enum("backend", "local", list(search.BACKENDS), "Where trials run.")
_SELECT_BY = flags.DEFINE_enum(
    "select_by", "ged", list(search.SELECT_BY), "The winner's metric on validation (lowest)."
)
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", search.DEFAULT_NUM_SAMPLES, "Samples per validation image of a trial's GED."
)
_NUM_RANDOM = flags.DEFINE_integer(
    "num_random", 1, "Random draws of rank / components / temperature per grid point."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random draws.")
_LATENT_DIMS = flags.DEFINE_list("latent_dims", ["2", "4", "6", "8"], "Latent dimension grid.")
_BETAS = flags.DEFINE_list("betas", ["1", "10", "100"], "β (KL weight) grid.")
_POSITION_LATENT_DIMS = flags.DEFINE_list(
    "position_latent_dims", ["1", "2", "4"], "Hierarchical variants: latent dim per position grid."
)
_LATENT_SCALES = flags.DEFINE_list(
    "latent_scales", ["1", "3"], "Hierarchical variants: latent scales range (low, high)."
)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the trials and exit.")
_RAY_ADDRESS = flags.DEFINE_string("ray_address", None, "Ray cluster ('auto'); unset: local.")
_CHUNK_STEPS = flags.DEFINE_integer(
    "chunk_steps", 0, "Ray: steps between reports to ASHA (0: train.eval_every_steps)."
)
_MAX_CONCURRENT = flags.DEFINE_integer("max_concurrent", 0, "Ray: concurrent trials (0: any).")
_CPUS = flags.DEFINE_float("cpus_per_trial", 1.0, "Ray: CPUs per trial.")
_GPUS = flags.DEFINE_float("gpus_per_trial", 0.0, "Ray: GPUs per trial.")
_GRACE = flags.DEFINE_integer("grace_period", 1, "Ray: reports before ASHA may stop a trial.")
_ETA = flags.DEFINE_integer("reduction_factor", 3, "Ray: ASHA's reduction factor.")
flags.mark_flags_as_required(["root"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    trials = dict(
        space=search.SearchSpace(
            latent_dims=tuple(int(d) for d in _LATENT_DIMS.value),
            betas=tuple(float(b) for b in _BETAS.value),
            position_latent_dims=tuple(int(d) for d in _POSITION_LATENT_DIMS.value),
            latent_scales_range=tuple(int(s) for s in _LATENT_SCALES.value),
        ),
        num_random=_NUM_RANDOM.value,
        seed=_SEED.value,
    )
    if _DRY_RUN.value:
        listed = search.make_trials(_BASE_CONFIG.value, _VARIANT.value, **trials)
        for trial in listed:
            print(trial.trial_id, trial.overrides)
        print(f"{len(listed)} trials")
        return
    ray_options = search.RayOptions(
        address=_RAY_ADDRESS.value,
        chunk_steps=_CHUNK_STEPS.value,
        max_concurrent=_MAX_CONCURRENT.value,
        cpus_per_trial=_CPUS.value,
        gpus_per_trial=_GPUS.value,
        grace_period=_GRACE.value,
        reduction_factor=_ETA.value,
    )
    try:
        summary = search.run(
            _BASE_CONFIG.value,
            _VARIANT.value,
            _ROOT.value,
            **trials,
            backend=_BACKEND.value,
            select_by=_SELECT_BY.value,
            num_samples=_NUM_SAMPLES.value,
            ray_options=ray_options,
        )
    except ImportError as e:  # --backend=ray without Ray, an optional extra.
        cli.fail(str(e))
    print(search.describe(summary))


if __name__ == "__main__":
    cli.run(main)
