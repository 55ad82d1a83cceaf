"""TFDS builders (array_record, no TensorFlow needed) for the synthetic set and LIDC-IDRI.

Stored example (what ``get_data_source(config, split)[i]`` returns, numpy):
``'image'`` float32 [H, W, 1] in [0, 1], ``'masks'`` uint8 [A, H, W] in {0, 1} (grader order),
``'id'`` bytes; the synthetic set adds ``'truth'`` (see :mod:`probunet_jax.data.synthetic`).

Builds are atomic: a data set is generated into a temporary folder inside ``data_dir`` and
renamed into place, so a failed build leaves nothing behind.
"""

import dataclasses
import os
import shutil
import tempfile

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from probunet_jax.data import lidc, synthetic
from probunet_jax.data.config import validate_data_config

SPLITS = lidc.SPLITS
_ARRAY = tfds.features.Encoding.BYTES  # Raw bytes: fast to decode.


def _image_features(image_size: int, num_annotations: int) -> dict:
    return {
        "image": tfds.features.Tensor(
            shape=(image_size, image_size, 1), dtype=np.float32, encoding=_ARRAY
        ),
        "masks": tfds.features.Tensor(
            shape=(num_annotations, image_size, image_size), dtype=np.uint8, encoding=_ARRAY
        ),
        "id": tfds.features.Text(),
    }


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the builders here: array_record, examples kept in generation order."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """None: there is no checksums file to find, and TFDS's lookup of the package path
        imports the ``importlib_resources`` backport, absent on Python >= 3.9."""
        return None


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    """Parameters of one synthetic data set; its name encodes them all."""

    image_size: int = 128
    num_annotations: int = 4
    num_train: int = 2000
    num_validation: int = 500
    num_test: int = 500
    seed: int = 0


class ProbunetSynthetic(_Builder):
    """The synthetic ambiguous data set of :mod:`probunet_jax.data.synthetic`."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIG_CLASS = SyntheticConfig

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        a, f32 = config.num_annotations, np.float32

        def tensor(shape, dtype=f32):
            return tfds.features.Tensor(shape=shape, dtype=dtype)

        truth = {
            "scenario": tensor((), np.int32),
            "center": tensor((2, 2)),
            "radius": tensor((2,)),
            "blur": tensor((2,)),
            "amplitude": tensor((2, synthetic.NUM_HARMONICS)),
            "phase": tensor((2, synthetic.NUM_HARMONICS)),
            "contrast": tensor((2,)),
            "choice": tensor((a,), np.int32),
            "level": tensor((a,)),
        }
        features = {**_image_features(config.image_size, a), "truth": truth}
        return tfds.core.DatasetInfo(
            builder=self,
            description=synthetic.__doc__,
            features=tfds.features.FeaturesDict(features),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        config = self.builder_config
        sizes = (config.num_train, config.num_validation, config.num_test)
        return {
            split: self._generate_examples(split, n) for split, n in zip(SPLITS, sizes, strict=True)
        }

    def _generate_examples(self, split: str, num: int):
        config = self.builder_config
        seed = (config.seed, SPLITS.index(split))
        index = 0
        for batch in synthetic.generate(num, config.image_size, config.num_annotations, seed):
            for i in range(len(batch["image"])):
                example = {
                    "image": batch["image"][i],
                    "masks": batch["masks"][i],
                    "id": f"{split}-{index:06d}",
                    "truth": {k: v[i] for k, v in batch["truth"].items()},
                }
                yield index, example
                index += 1


@dataclasses.dataclass(eq=False)
class LidcConfig(tfds.core.BuilderConfig):
    """One LIDC-IDRI split scheme (the config name is the ``lidc_split``)."""


class ProbunetLidc(_Builder):
    """LIDC-IDRI lesion patches (128 x 128, 4 graders) from a user-provided preprocessed file."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        LidcConfig(name="patient", description="data_lidc.pickle, 60:20:20 by series uid."),
        LidcConfig(name="slice", description="data_lidc.pickle, 60:20:20 by slice."),
        LidcConfig(name="phiseg", description="data_lidc.hdf5, PHiSeg's split."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Put {lidc.PICKLE_NAME} (splits 'patient', 'slice') or {lidc.HDF5_NAME} (split "
        "'phiseg') in the manual folder; see data/README.md for where to get them."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=lidc.__doc__,
            features=tfds.features.FeaturesDict(
                _image_features(lidc.IMAGE_SIZE, lidc.NUM_ANNOTATIONS)
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        splits = lidc.read_splits(os.fspath(dl_manager.manual_dir), self.builder_config.name)
        return {split: self._generate_examples(records) for split, records in splits.items()}

    def _generate_examples(self, records):
        yield from enumerate(records)


def _data_dir(config: ml_collections.ConfigDict) -> str:
    return os.path.abspath(os.path.expanduser(config.data_dir))


def make_builder(
    config: ml_collections.ConfigDict, data_dir: str | None = None
) -> tfds.core.DatasetBuilder:
    """The (possibly not yet prepared) TFDS builder of ``config`` in ``data_dir``."""
    validate_data_config(config)
    data_dir = data_dir or _data_dir(config)
    if config.name == "lidc":
        return ProbunetLidc(config=config.lidc_split, data_dir=data_dir, file_format="array_record")
    fields = ("image_size", "num_annotations", "num_train", "num_validation", "num_test", "seed")
    values = {field: int(config[field]) for field in fields}
    name = "s{image_size}_a{num_annotations}_n{num_train}-{num_validation}-{num_test}_seed{seed}"
    builder_config = SyntheticConfig(name=name.format(**values), **values)
    return ProbunetSynthetic(config=builder_config, data_dir=data_dir, file_format="array_record")


def build(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """Builds the data set of ``config`` unless it is on disk; returns its prepared builder.

    For LIDC the source file is read from ``config.manual_dir`` (default ``config.data_dir``).
    Raises FileNotFoundError (LIDC file missing) or ValueError (bad file) before anything is
    written; a failure during generation removes the partial output.
    """
    builder = make_builder(config)
    if builder.data_path.exists():
        return builder
    manual_dir = os.path.expanduser(config.manual_dir or config.data_dir)
    if config.name == "lidc":
        lidc.find_file(manual_dir, config.lidc_split)
    os.makedirs(_data_dir(config), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".building-", dir=_data_dir(config))
    try:
        staged = make_builder(config, data_dir=staging)
        staged.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
        )
        os.makedirs(builder.data_path.parent, exist_ok=True)
        try:
            os.rename(staged.data_path, builder.data_path)
        except OSError:  # Another process finished the same build first.
            if not builder.data_path.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return make_builder(config)


def get_data_source(config: ml_collections.ConfigDict, split: str):
    """Random-access source of ``split`` ('train', 'validation' or 'test') of ``config``.

    The synthetic set is built on first use; LIDC must have been built with
    ``python -m experiments.prepare_data --dataset=lidc``.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    builder = make_builder(config)
    if not builder.data_path.exists():
        if config.name == "lidc":
            raise FileNotFoundError(
                f"LIDC-IDRI (lidc_split={config.lidc_split!r}) is not built in "
                f"{_data_dir(config)}. Build it once with: python -m experiments.prepare_data "
                f"--dataset=lidc --lidc_split={config.lidc_split} --manual_dir=<folder with "
                f"{lidc.source_file(config.lidc_split)}> --data_dir={config.data_dir} "
                "(see data/README.md)."
            )
        builder = build(config)
    return builder.as_data_source(split)
