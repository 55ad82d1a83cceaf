"""The paper's setting (Bhat et al. 2022, §4 and Table 3) for one variant, on LIDC-IDRI.

  python -m experiments.train --config=experiments/configs/paper.py:mixture_fc --workdir=runs/mfc
  python -m experiments.train --config=experiments/configs/paper.py:aa --workdir=runs/aa \\
      --config.data.name=synthetic        # the paper's network and schedule on synthetic data

VARIANT is one of ``presets.VARIANTS`` (default mixture_fc): the latent settings of Table 3,
the paper's network (filters 32-64-128-512, 3 convolutions per block, a 4-layer head), beta 1,
128 x 128 patches, batch 32, Adam with learning rate 1e-4, the validation loss evaluated once
per epoch of the training split, early stopping with a patience of 20 epochs. LIDC must be
built first: ``python -m experiments.prepare_data --dataset=lidc`` (see data/README.md).
"""

from probunet_jax import config


def get_config(variant: str = "mixture_fc"):
    return config.get_config(
        variant,
        model=dict(preset_name="paper"),
        data=dict(name="lidc", image_size=128),
        train=dict(
            batch_size=32,
            num_steps=200_000,  # An upper bound: early stopping ends the run.
            eval_every_steps=config.ONE_EPOCH,
            patience=20,
            learning_rate=1e-4,
            log_every_steps=100,
        ),
    )
