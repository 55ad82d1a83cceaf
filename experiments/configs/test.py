"""A tiny config for tests: 16 x 16 synthetic images, filters (4, 8), a few steps.

python -m experiments.train --config=experiments/configs/test.py --workdir=/tmp/probunet_test
"""

from experiments.configs import base


def get_config():
    return base.get_base_config(
        "mixture_fc",
        model=dict(filters=(4, 8), convs_per_block=1, head_depth=2, kl_samples=2),
        data_overrides=dict(
            image_size=16, num_annotations=2, num_train=16, num_validation=4, num_test=4
        ),
        batch_size=4,
        num_steps=4,
        eval_every_steps=2,
        patience=2,
        log_every_steps=2,
        eval_batch_size=4,
        num_samples=2,
    )
