"""The quickstart: Mixture-FC on the synthetic set at 64 x 64, sized for a laptop CPU.

  python -m experiments.train --workdir=runs/quickstart

Trains Mixture-FC (Table 3: latent dim 2, 9 components, tau 0.28) with a narrower network than
the paper's (filters 16-32-64-128), then evaluates on the test split and prints its GED next
to the oracle's.
"""

from experiments.configs import base


def get_config():
    return base.get_base_config(
        "mixture_fc",
        model=dict(filters=(16, 32, 64, 128), convs_per_block=2, head_depth=3),
        data_overrides=dict(image_size=64, num_train=1024, num_validation=128, num_test=256),
        batch_size=16,
        num_steps=1200,
        eval_every_steps=200,
        patience=4,
        learning_rate=1e-3,
        log_every_steps=50,
        eval_batch_size=32,
        num_samples=16,
    )
