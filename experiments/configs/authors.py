"""The paper's variants as its authors' code trains them (ishaanb92/GeneralizedProbabilisticUNet,
scripts/train.py and src/probabilistic_unet/), for one variant, on LIDC-IDRI.

  python -m experiments.train --config=experiments/configs/authors.py:mixture_fc --workdir=runs/a
  python -m experiments.paper --config=experiments/configs/authors.py --root=runs/authors_lidc
  python -m experiments.paper --config=experiments/configs/authors.py --dataset=synthetic \\
      --root=runs/authors_synthetic

VARIANT is one of ``presets.VARIANTS`` (default mixture_fc), with the latent settings of Table 3
(as configs/paper.py). Everything else follows their code where it differs from the paper's text
(README "Paper, code and this project"): ``presets.AUTHORS_NETWORK`` (filters 32-64-128-256,
one batch norm per block, their initializers, align_corners upsampling, their latent output
layers, the low-rank covariance U Uᵀ + D, 1000 Monte Carlo KL samples), the LIDC split by
slice, one grader per batch, batch 6, Adam at 1e-4 with weight decay 1e-5, 1e-5·Σ‖W‖ over the
prior and posterior nets, the validation loss once per epoch and a patience of 100 epochs.
"""

from probunet_jax import config, presets


def get_config(variant: str = "mixture_fc"):
    return config.get_config(
        variant,
        model=dict(presets.AUTHORS_NETWORK, preset_name="authors"),
        data=dict(name="lidc", lidc_split="slice", image_size=128, annotator_choice="per_batch"),
        train=dict(
            batch_size=6,
            # An upper bound (their 10,000 epochs of ~1,500 steps): early stopping ends the run.
            num_steps=15_000_000,
            eval_every_steps=config.ONE_EPOCH,
            patience=100,
            learning_rate=1e-4,
            weight_decay=1e-5,
            l2_norm_penalty=1e-5,
            log_every_steps=100,
        ),
    )
