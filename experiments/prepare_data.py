r"""Builds a data set once (TFDS array_record) so training and evaluation can read it.

  python -m experiments.prepare_data --dataset=synthetic --image_size=64
  python -m experiments.prepare_data --dataset=lidc --manual_dir=DIR --data_dir=data
  python -m experiments.prepare_data --dataset=lidc --lidc_split=phiseg --manual_dir=DIR
  python -m experiments.prepare_data --dataset=folder --manual_dir=DIR --name=NAME
  python -m experiments.prepare_data --dataset=folder --manual_dir=QUBIQ/prostate --name=prostate \
      --image_pattern=image.nii.gz --mask_pattern='task01_seg*.nii.gz' --image_size=0
  python -m experiments.prepare_data --dataset=pickle --manual_dir=FILE_OR_DIR --name=NAME

LIDC needs ``data_lidc.pickle`` (splits 'patient', 'slice') or ``data_lidc.hdf5`` (split
'phiseg') in ``--manual_dir``; folder and pickle layouts are described in data/README.md.
Train on a named set with ``--config.data.name=NAME``. Defaults are those of
``probunet_jax.data.default_data_config()``. Any problem with the input stops the build with one
line naming the file and the problem, and leaves nothing in ``--data_dir``.
"""

from absl import flags

from experiments import cli
from probunet_jax import data
from probunet_jax.data import config as config_lib
from probunet_jax.data import records, resize

_DEFAULTS = data.default_data_config()
_DATASET = flags.DEFINE_enum(
    "dataset", _DEFAULTS.name, ["synthetic", "lidc", *config_lib.SOURCES], "Data set kind."
)
_NAME = flags.DEFINE_string("name", None, "folder / pickle: the data set's name (data.name).")
_DATA_DIR = flags.DEFINE_string("data_dir", _DEFAULTS.data_dir, "Where data sets are built.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir",
    _DEFAULTS.manual_dir,
    "LIDC: folder with the source file; folder: the case folder; pickle: a pickle file or a "
    "folder of them ('' = data_dir).",
)
_LIDC_SPLIT = flags.DEFINE_enum(
    "lidc_split", _DEFAULTS.lidc_split, ["patient", "slice", "phiseg"], "LIDC split scheme."
)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", _DEFAULTS.image_size, "Synthetic, folder, pickle: stored size (0: native)."
)
_NUM_ANNOTATIONS = flags.DEFINE_integer(
    "num_annotations", _DEFAULTS.num_annotations, "Synthetic: masks per image."
)
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", _DEFAULTS.num_classes, "Mask classes K incl. background (2: binary)."
)
_NUM_TRAIN = flags.DEFINE_integer("num_train", _DEFAULTS.num_train, "Synthetic: train size.")
_NUM_VALIDATION = flags.DEFINE_integer(
    "num_validation", _DEFAULTS.num_validation, "Synthetic: validation size."
)
_NUM_TEST = flags.DEFINE_integer("num_test", _DEFAULTS.num_test, "Synthetic: test size.")
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Synthetic: generation seed.")
_IMAGE_PATTERN = flags.DEFINE_string(
    "image_pattern", _DEFAULTS.image_pattern, "folder: shell pattern of a case's image file."
)
_MASK_PATTERN = flags.DEFINE_string(
    "mask_pattern", _DEFAULTS.mask_pattern, "folder: shell pattern of the rater mask files."
)
_RESIZE_MODE = flags.DEFINE_enum(
    "resize_mode", _DEFAULTS.resize_mode, list(resize.RESIZE_MODES), "folder / pickle: resizing."
)
_NORMALIZATION = flags.DEFINE_enum(
    "normalization",
    _DEFAULTS.normalization,
    list(records.NORMALIZATIONS),
    "folder / pickle: image scaling to [0, 1].",
)
_SPLIT_SEED = flags.DEFINE_integer(
    "split_seed", _DEFAULTS.split_seed, "folder / pickle: seed of the 60:20:20 split."
)


def config_from_flags():
    """The data config of the flags; ValueError if a folder or pickle set has no --name."""
    config = data.default_data_config()
    named = _DATASET.value in config_lib.SOURCES
    if named and not _NAME.value:
        raise ValueError(f"--dataset={_DATASET.value} needs --name=NAME.")
    config.update(
        name=_NAME.value if named else _DATASET.value,
        source=_DATASET.value if named else config.source,
        data_dir=_DATA_DIR.value,
        manual_dir=_MANUAL_DIR.value,
        lidc_split=_LIDC_SPLIT.value,
        image_size=_IMAGE_SIZE.value,
        num_annotations=_NUM_ANNOTATIONS.value,
        num_classes=_NUM_CLASSES.value,
        num_train=_NUM_TRAIN.value,
        num_validation=_NUM_VALIDATION.value,
        num_test=_NUM_TEST.value,
        seed=_SEED.value,
        image_pattern=_IMAGE_PATTERN.value,
        mask_pattern=_MASK_PATTERN.value,
        resize_mode=_RESIZE_MODE.value,
        normalization=_NORMALIZATION.value,
        split_seed=_SPLIT_SEED.value,
    )
    return config


def main(argv):
    del argv
    config = config_from_flags()
    builder = data.build(config)
    info = data.dataset_info(config)
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    print(f"Data set {info.name!r} at {builder.data_path}: {sizes}, {info}")
    print("(An existing data set is not rebuilt: delete its folder to rebuild it.)")


if __name__ == "__main__":
    cli.run(main)
