r"""Builds a data set once (TFDS array_record) so training and evaluation can read it.

  python -m experiments.prepare_data --dataset=synthetic --image_size=64
  python -m experiments.prepare_data --dataset=lidc --manual_dir=DIR --data_dir=data
  python -m experiments.prepare_data --dataset=lidc --lidc_split=phiseg --manual_dir=DIR

LIDC needs ``data_lidc.pickle`` (splits 'patient', 'slice') or ``data_lidc.hdf5`` (split
'phiseg') in ``--manual_dir``; see data/README.md. Defaults are those of
``probunet_jax.data.default_data_config()``.
"""

from absl import flags

from experiments import cli
from probunet_jax import data

_DEFAULTS = data.default_data_config()
_DATASET = flags.DEFINE_enum("dataset", _DEFAULTS.name, ["synthetic", "lidc"], "Data set.")
_DATA_DIR = flags.DEFINE_string("data_dir", _DEFAULTS.data_dir, "Where data sets are built.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", _DEFAULTS.manual_dir, "LIDC: folder with the source file ('' = data_dir)."
)
_LIDC_SPLIT = flags.DEFINE_enum(
    "lidc_split", _DEFAULTS.lidc_split, ["patient", "slice", "phiseg"], "LIDC split scheme."
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", _DEFAULTS.image_size, "Synthetic: image size.")
_NUM_ANNOTATIONS = flags.DEFINE_integer(
    "num_annotations", _DEFAULTS.num_annotations, "Synthetic: masks per image."
)
_NUM_TRAIN = flags.DEFINE_integer("num_train", _DEFAULTS.num_train, "Synthetic: train size.")
_NUM_VALIDATION = flags.DEFINE_integer(
    "num_validation", _DEFAULTS.num_validation, "Synthetic: validation size."
)
_NUM_TEST = flags.DEFINE_integer("num_test", _DEFAULTS.num_test, "Synthetic: test size.")
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Synthetic: generation seed.")


def main(argv):
    del argv
    config = data.default_data_config()
    config.update(
        name=_DATASET.value,
        data_dir=_DATA_DIR.value,
        manual_dir=_MANUAL_DIR.value,
        lidc_split=_LIDC_SPLIT.value,
        image_size=_IMAGE_SIZE.value,
        num_annotations=_NUM_ANNOTATIONS.value,
        num_train=_NUM_TRAIN.value,
        num_validation=_NUM_VALIDATION.value,
        num_test=_NUM_TEST.value,
        seed=_SEED.value,
    )
    try:
        builder = data.build(config)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"prepare_data: {e}") from e
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    print(f"Data set at {builder.data_path}: {sizes}")


if __name__ == "__main__":
    cli.run(main)
