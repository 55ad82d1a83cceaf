"""A tiny config for tests: 16 x 16 synthetic images, filters (4, 8), a few steps.

python -m experiments.train --config=experiments/configs/test.py --workdir=/tmp/probunet_test
"""

from probunet_jax import config


def get_config(variant: str = "mixture_fc"):
    return config.get_config(
        variant,
        model=dict(filters=(4, 8), convs_per_block=1, head_depth=2, kl_samples=2),
        data=dict(image_size=16, num_annotations=2, num_train=16, num_validation=4, num_test=4),
        train=dict(batch_size=4, num_steps=4, eval_every_steps=2, patience=2, log_every_steps=2),
        eval=dict(num_samples=2, batch_size=4),
    )
