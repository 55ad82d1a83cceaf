"""TFDS builders (array_record, no TensorFlow needed): synthetic, LIDC-IDRI, named sets.

Stored example (what ``get_data_source(config, split)[i]`` returns, numpy):
``'image'`` float32 [H, W, C] in [0, 1], ``'masks'`` uint8 [A, H, W] labels 0..K-1 (rater
order; A is the data set's maximum rater count, an image's missing raters are zero),
``'rater_valid'`` bool [A] (which raters the image has; all True for synthetic and LIDC),
``'id'`` bytes; the synthetic set adds ``'truth'`` (see :mod:`probunet_jax.data.synthetic`).

Named sets (``config.name`` not 'synthetic' or 'lidc') are read from a folder
(:mod:`~probunet_jax.data.folder`) or pickle (:mod:`~probunet_jax.data.pickled`) source and
stored with a manifest (:mod:`~probunet_jax.data.info`); once built they are read back from
their folder alone.

Builds are atomic: a data set is generated into a temporary folder inside ``data_dir`` and
renamed into place, so a failed build leaves nothing behind.
"""

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from probunet_jax.data import folder, info, lidc, pickled, records, synthetic
from probunet_jax.data.config import is_named, validate_data_config
from probunet_jax.data.splits import SPLITS

# TFDS's tqdm bars would tear the absl log lines of a run; builds are logged instead.
tfds.disable_progress_bar()
_ARRAY = tfds.features.Encoding.BYTES  # Raw bytes: fast to decode.
_SOURCES = {"folder": folder.source, "pickle": pickled.source}


def _image_features(height: int, width: int, channels: int, num_raters: int) -> dict:
    return {
        "image": tfds.features.Tensor(
            shape=(height, width, channels), dtype=np.float32, encoding=_ARRAY
        ),
        "masks": tfds.features.Tensor(
            shape=(num_raters, height, width), dtype=np.uint8, encoding=_ARRAY
        ),
        "rater_valid": tfds.features.Tensor(shape=(num_raters,), dtype=np.bool_),
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
    num_classes: int = 2
    num_train: int = 2000
    num_validation: int = 500
    num_test: int = 500
    seed: int = 0


class ProbunetSynthetic(_Builder):
    """The synthetic ambiguous data set of :mod:`probunet_jax.data.synthetic`."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "Adds 'rater_valid' and the 3-class option."}
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
        size = config.image_size
        features = {**_image_features(size, size, 1, a), "truth": truth}
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
        a = config.num_annotations
        chunks = synthetic.generate(num, config.image_size, a, seed, config.num_classes)
        for batch in chunks:
            for i in range(len(batch["image"])):
                example = {
                    "image": batch["image"][i],
                    "masks": batch["masks"][i],
                    "rater_valid": np.ones(a, bool),
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

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "Adds 'rater_valid'."}
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
            features=tfds.features.FeaturesDict(_image_features(*lidc.LAYOUT[:4])),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        splits = lidc.read_splits(os.fspath(dl_manager.manual_dir), self.builder_config.name)
        return {split: self._generate_examples(records) for split, records in splits.items()}

    def _generate_examples(self, records):
        yield from enumerate(records)


@dataclasses.dataclass(eq=False)
class CustomConfig(tfds.core.BuilderConfig):
    """A named data set (the config name) and its checked source."""

    source: records.Source | None = None


class ProbunetCustom(_Builder):
    """A named data set from a folder or pickle source (see :mod:`probunet_jax.data.info`)."""

    VERSION = tfds.core.Version(info.VERSION)

    def _info(self) -> tfds.core.DatasetInfo:
        layout = self.builder_config.source.layout
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"The named data set {self.builder_config.name!r}.",
            features=tfds.features.FeaturesDict(_image_features(*layout[:4])),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The source is read already.
        keys = self.builder_config.source.splits
        return {split: self._generate_examples(keys[split]) for split in SPLITS}

    def _generate_examples(self, keys):
        read = self.builder_config.source.read
        for index, key in enumerate(keys):
            yield index, read(key)


def make_builder(
    config: ml_collections.ConfigDict, data_dir: str | None = None
) -> tfds.core.DatasetBuilder:
    """The (possibly not yet prepared) TFDS builder of the synthetic or LIDC ``config``."""
    validate_data_config(config)
    if is_named(config.name):
        raise ValueError(f"{config.name!r} is a named data set; it has no builder before build().")
    data_dir = data_dir or info.data_dir(config)
    if config.name == "lidc":
        return ProbunetLidc(config=config.lidc_split, data_dir=data_dir, file_format="array_record")
    fields = ("image_size", "num_annotations", "num_train", "num_validation", "num_test", "seed")
    values = {field: int(config[field]) for field in fields}
    name = "s{image_size}_a{num_annotations}_n{num_train}-{num_validation}-{num_test}_seed{seed}"
    name = name.format(**values) + ("" if config.num_classes == 2 else f"_k{config.num_classes}")
    builder_config = SyntheticConfig(name=name, num_classes=int(config.num_classes), **values)
    return ProbunetSynthetic(config=builder_config, data_dir=data_dir, file_format="array_record")


def _manual_dir(config: ml_collections.ConfigDict) -> str:
    """The absolute source folder (or file) of ``config``: manual_dir, else data_dir."""
    return os.path.abspath(os.path.expanduser(config.manual_dir or config.data_dir))


def _staged_build(
    config: ml_collections.ConfigDict,
    target: str,
    make: Callable[[str], tfds.core.DatasetBuilder],
    finish: Callable[[tfds.core.DatasetBuilder], None] = lambda builder: None,
) -> None:
    """Prepares ``make(staging_dir)`` in a temporary folder of data_dir, calls ``finish`` on
    it, and renames its data into ``target``; on any error nothing is left behind."""
    os.makedirs(info.data_dir(config), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".building-", dir=info.data_dir(config))
    try:
        staged = make(staging)
        staged.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=_manual_dir(config))
        )
        finish(staged)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.rename(staged.data_path, target)
        except OSError:  # Another process finished the same build first.
            if not os.path.exists(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_named(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    target = info.named_path(info.data_dir(config), config.name)
    if not os.path.exists(target):
        source = _SOURCES[config.source](config, _manual_dir(config))
        builder_config = CustomConfig(name=config.name, source=source)

        def make(staging: str) -> tfds.core.DatasetBuilder:
            return ProbunetCustom(
                config=builder_config, data_dir=staging, file_format="array_record"
            )

        def finish(staged: tfds.core.DatasetBuilder) -> None:
            sizes = {split: s.num_examples for split, s in staged.info.splits.items()}
            info.write_manifest(os.fspath(staged.data_path), config.name, source, sizes)

        _staged_build(config, target, make, finish)
    return tfds.builder_from_directory(target)


def build(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """Builds the data set of ``config`` unless it is on disk; returns its prepared builder.

    LIDC's file and a named set's source are read from ``config.manual_dir`` (default
    ``config.data_dir``). Raises FileNotFoundError (source missing) or ValueError (bad source,
    naming the file and the problem); a failure leaves nothing in ``data_dir``.
    """
    validate_data_config(config)
    if is_named(config.name):
        return _build_named(config)
    builder = make_builder(config)
    if builder.data_path.exists():
        return builder
    if config.name == "lidc":
        lidc.find_file(_manual_dir(config), config.lidc_split)
    _staged_build(
        config, os.fspath(builder.data_path), lambda staging: make_builder(config, staging)
    )
    return make_builder(config)


def get_data_source(config: ml_collections.ConfigDict, split: str):
    """Random-access source of ``split`` ('train', 'validation' or 'test') of ``config``.

    The synthetic set is built on first use; LIDC and named sets must have been built with
    ``python -m experiments.prepare_data``.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    validate_data_config(config)
    if is_named(config.name):
        info.read_manifest(info.data_dir(config), config.name)  # Says how to build it if absent.
        path = info.named_path(info.data_dir(config), config.name)
        return tfds.builder_from_directory(path).as_data_source(split)
    builder = make_builder(config)
    if not builder.data_path.exists():
        if config.name == "lidc":
            raise FileNotFoundError(
                f"LIDC-IDRI (lidc_split={config.lidc_split!r}) is not built in "
                f"{info.data_dir(config)}. Build it once with: python -m experiments.prepare_data "
                f"--dataset=lidc --lidc_split={config.lidc_split} --manual_dir=<folder with "
                f"{lidc.source_file(config.lidc_split)}> --data_dir={config.data_dir} "
                "(see data/README.md)."
            )
        builder = build(config)
    return builder.as_data_source(split)
