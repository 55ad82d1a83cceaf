"""The longer CPU run: the quick start's recipe on a wider network, 2,000 steps, 4,096 images.

  python -m experiments.train --config=experiments/configs/long.py --workdir=runs/long
  python -m experiments.train --config=experiments/configs/long.py:fc --workdir=runs/long_fc

VARIANT (after the colon; default mixture_fc) is one of ``presets.VARIANTS``. Against the quick
start (``default.py``): filters 16-32-64-128 with 3 convolutions per block (about 4x its
compute per step), 2,000 steps over 4,096 training images (the quick start's 1,024 would be
seen 31 times), 100 warm-up steps, the validation GED every 200 steps. Measured 2026-11-25:
50 min 20 s from start to the printed GED on one core of 2 (``taskset -c 1``), test GED 0.214
against the oracle's 0.094, its best validation GED at step 600 of 2,000: under GECO the KL
weight vanishes and longer training moves the prior's samples away from the posteriors
(README, "How close to the truth").
"""

from experiments.configs import default


def get_config(variant: str = "mixture_fc"):
    config = default.get_config(variant)
    config.model.filters = (16, 32, 64, 128)
    config.model.convs_per_block = 3
    config.data.num_train = 4096
    config.train.num_steps = 2000
    config.train.warmup_steps = 100
    config.train.eval_every_steps = 200
    config.train.patience = 100  # Keep the best of every validation; no early stop.
    return config
