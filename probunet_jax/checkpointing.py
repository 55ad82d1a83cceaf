"""Checkpoints of a training run (orbax) and the run's config, in its workdir.

Layout of a workdir::

    workdir/config.json               the run's config (``config.to_json()``)
    workdir/checkpoints/latest/<step> periodic checkpoints (the last ``max_to_keep``)
    workdir/checkpoints/best/<step>   the best parameters by validation loss (one step)
    workdir/checkpoints/corrupt/...   checkpoints found unreadable, moved aside on resume

A periodic checkpoint holds the items ``state`` (the ``TrainState`` pytree: step, params,
batch_stats, opt_state, rng), ``best`` (``{'params', 'batch_stats'}`` of the best evaluation so
far, so that the best export can always be rebuilt on resume), ``progress`` (JSON: the
early-stopping state) and ``data`` (grain's iterator state, one JSON file per process). Orbax
writes every step to a temporary folder and renames it when complete, so a crash never leaves
a half-written step behind; a step that is unreadable anyway (disk trouble, a hand edit) is
skipped on resume with a warning, falling back to the previous one.

:func:`restore_best` is the entry point for everything after training (evaluation,
notebooks, sweeps): ``config, model, variables = restore_best(workdir)``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from probunet_jax import config as config_lib
from probunet_jax import model as model_lib

CONFIG_FILE = "config.json"
LATEST, BEST, CORRUPT = "latest", "best", "corrupt"

# Config fields that may change between runs in the same workdir: they do not change the
# numbers a resumed run computes (only how long it runs, how often it logs or saves, where the
# data is read from, and how it is evaluated after training). Entries ending in '.' are
# prefixes. Changing anything else in an existing workdir raises ValueError: use a new workdir.
RESUMABLE_KEYS = (
    "train.num_steps",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.max_checkpoints_to_keep",
    "data.data_dir",
    "data.manual_dir",
    "eval.",
)


# ----------------------------------------------------------------------------- the config


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _as_json_tree(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON values (tuples become lists), as stored in config.json."""
    return json.loads(config.to_json())


def _resumable(key: str, config: ml_collections.ConfigDict) -> bool:
    if key == "train.num_steps" and config.train.schedule != "constant":
        return False  # The learning rate schedule ends at train.num_steps.
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS)


def config_differences(
    stored: ml_collections.ConfigDict, config: ml_collections.ConfigDict
) -> list[str]:
    """Flat keys (``'model.beta'``) whose values differ between two configs, sorted."""
    a, b = _flatten(_as_json_tree(stored)), _flatten(_as_json_tree(config))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, KeyError) != b.get(k, KeyError))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config stored in ``workdir/config.json``. Fields it lacks (it was written by an
    older version) take the schema's defaults, which keep that version's behaviour; they are
    logged."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: {workdir!r} is not a training workdir.")
    with open(path) as f:
        stored = json.load(f)
    defaults = _flatten(_as_json_tree(config_lib.get_config()))
    missing = sorted(set(defaults) - set(_flatten(stored)))
    for key in missing:
        *parents, name = key.split(".")
        node = stored
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = defaults[key]
    if missing:
        logging.info("%s lacks %s: using their defaults.", path, ", ".join(missing))
    return ml_collections.ConfigDict(stored)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Stores ``config`` in ``workdir``; raises ValueError if the workdir holds a config that
    differs in a field outside ``RESUMABLE_KEYS`` (naming those fields)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(path):
        stored = load_config(workdir)
        differences = config_differences(stored, config)
        fatal = [k for k in differences if not _resumable(k, config)]
        if fatal:
            old, new = _flatten(_as_json_tree(stored)), _flatten(_as_json_tree(config))
            details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in fatal)
            raise ValueError(
                f"The workdir {workdir!r} holds a run with a different config ({details}). "
                f"Only {', '.join(RESUMABLE_KEYS)} may change when resuming (train.num_steps "
                "only with a constant learning rate schedule); use a new workdir."
            )
        if differences:
            logging.info("Resuming with changed config fields: %s", ", ".join(differences))
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(config.to_json(indent=2, sort_keys=True))
        os.replace(tmp, path)


# ----------------------------------------------------------------------------- checkpoints


class Restored(NamedTuple):
    """A periodic checkpoint read back (see :meth:`Checkpointer.restore`)."""

    step: int
    state: Any
    best: Any
    progress: dict


def _manager(directory: str, max_to_keep: int | None) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


def _abstract(tree: Any) -> Any:
    """Restore targets: shapes, dtypes and shardings of ``tree`` (arrays or ShapeDtypeStructs)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """The periodic and best checkpoints of a workdir.

    Args:
      workdir: the run's folder.
      max_to_keep: periodic checkpoints kept (the best export is kept apart).
    """

    def __init__(self, workdir: str, *, max_to_keep: int = 2):
        self.workdir = workdir
        self._latest_dir = os.path.join(workdir, "checkpoints", LATEST)
        self._best_dir = os.path.join(workdir, "checkpoints", BEST)
        self._max_to_keep = max_to_keep
        self.latest = _manager(self._latest_dir, max_to_keep)
        self.best = _manager(self._best_dir, 1)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state: Any, best: Any, progress: dict, iterator) -> None:
        """Saves a periodic checkpoint (asynchronously; see :meth:`wait_until_finished`)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            best=ocp.args.StandardSave(best),
            progress=ocp.args.JsonSave(progress),
            data=grain.checkpoint.CheckpointSave(iterator),
        )
        self.latest.save(step, args=args)

    def restore(self, state: Any, best: Any, iterator) -> Restored | None:
        """The newest readable periodic checkpoint, or None if there is none.

        ``state`` and ``best`` are restore targets (arrays or ``jax.ShapeDtypeStruct`` with
        shardings); ``iterator`` is set to the saved data position. An unreadable step is moved
        to ``checkpoints/corrupt`` with a warning and the previous step is tried; if every step
        is unreadable, raises RuntimeError.
        """
        steps = sorted(self.latest.all_steps(), reverse=True)
        errors = []
        for i, step in enumerate(steps):
            try:
                restored = self.latest.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(_abstract(state)),
                        best=ocp.args.StandardRestore(_abstract(best)),
                        progress=ocp.args.JsonRestore(),
                        data=grain.checkpoint.CheckpointRestore(iterator),
                    ),
                )
            except Exception as e:  # noqa: BLE001 - any failure to read means "corrupt".
                reason = f"{type(e).__name__}: {str(e)[:300]}"
                errors.append(f"step {step}: {reason}")
                fallback = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else ""
                logging.warning(
                    "checkpoint at step %d is corrupt (%s), %s",
                    step,
                    reason,
                    fallback or "no older one",
                )
                self._move_aside(step)
                continue
            return Restored(step, restored["state"], restored["best"], dict(restored["progress"]))
        if errors:
            raise RuntimeError(
                f"Every checkpoint in {self._latest_dir} is corrupt (moved to "
                f"{os.path.join(self.workdir, 'checkpoints', CORRUPT)}): " + "; ".join(errors)
            )
        return None

    def _move_aside(self, step: int) -> None:
        """Moves an unreadable step out of the manager's folder, so that it is saved anew."""
        self.latest.wait_until_finished()
        if jax.process_index() == 0:
            corrupt = os.path.join(self.workdir, "checkpoints", CORRUPT)
            os.makedirs(corrupt, exist_ok=True)
            source = os.path.join(self._latest_dir, str(step))
            if os.path.exists(source):
                shutil.move(source, os.path.join(corrupt, f"{step}-{int(time.time())}"))
        self.latest.close()
        self.latest = _manager(self._latest_dir, self._max_to_keep)

    def save_best(self, step: int, variables: Any, info: dict) -> None:
        """Replaces the best export with ``variables`` (``{'params', 'batch_stats'}``) at
        ``step``; ``info`` (JSON) records e.g. the validation loss."""
        for old in self.best.all_steps():
            if old >= step:  # From a run that crashed past its last periodic checkpoint.
                self.best.delete(old)
        self.best.save(
            step,
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables), info=ocp.args.JsonSave(info)
            ),
        )

    def sync_best(self, step: int | None, variables: Any, info: dict) -> None:
        """After a resume: makes the best export hold exactly ``step`` (from the periodic
        checkpoint), dropping exports a crashed run wrote after its last periodic checkpoint."""
        if step is None or step < 0:
            for old in self.best.all_steps():
                self.best.delete(old)
            return
        if self.best.all_steps() != [step]:
            self.save_best(step, variables, info)

    def wait_until_finished(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def restore_best_variables(workdir: str) -> tuple[int, dict, dict]:
    """``(step, variables, info)`` of the best export of ``workdir`` (arrays on the default
    device, shapes as saved)."""
    directory = os.path.join(workdir, "checkpoints", BEST)
    manager = _manager(directory, 1)
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"No best checkpoint in {directory}: has the run in {workdir!r} evaluated yet?"
            )
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    variables=ocp.args.StandardRestore(), info=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # noqa: BLE001
            raise RuntimeError(
                f"The best checkpoint at step {step} in {directory} is corrupt "
                f"({type(e).__name__}: {str(e)[:300]})."
            ) from e
        return step, dict(restored["variables"]), dict(restored["info"])
    finally:
        manager.close()


def restore_best(
    workdir: str,
) -> tuple[ml_collections.ConfigDict, model_lib.ProbabilisticUNet, dict]:
    """The trained model of a workdir: ``(config, model, variables)``.

    ``variables`` is ``{'params', 'batch_stats'}`` of the best validation (by
    ``config.train.select_by``), ready for ``model.apply`` and :mod:`probunet_jax.sampling`.
    Raises FileNotFoundError if ``workdir`` holds no run or no best checkpoint yet,
    RuntimeError if it is unreadable.
    """
    config = load_config(workdir)
    _, variables, _ = restore_best_variables(workdir)
    return config, model_lib.model_from_config(config.model), variables
