"""Training: one jit-compiled data-parallel step, early stopping, checkpoints, logging.

``train_and_evaluate(config, workdir)`` is the whole run (``experiments/train.py`` is a thin
launcher around it): it trains with Adam on the negative ELBO, evaluates the validation loss
every ``config.train.eval_every_steps`` steps (an "epoch" for the patience of early stopping),
keeps the best parameters apart, checkpoints periodically, resumes from the workdir, and at the
end evaluates the best parameters on ``config.eval.split``.

Data parallelism: the train step is a single ``jax.jit`` over a 1-D device mesh (axis
``'data'``): the batch is sharded over the devices, the ``TrainState`` replicated, and XLA's
SPMD partitioner inserts the gradient all-reduce. No ``pmap`` and no explicit collectives:
batch normalization computes its mean and variance over the *global* batch (the reduction over
the sharded batch axis becomes a cross-device reduction), so its statistics and the updated
``batch_stats`` are the same on 1 or N devices, up to float summation order. With several
processes (``jax.distributed.initialize()``), each reads its own ``1 / process_count`` of the
data and the global batch is assembled with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from probunet_jax import checkpointing, distributions, losses, sharding
from probunet_jax import config as config_lib
from probunet_jax import data as data_lib
from probunet_jax.model import ProbabilisticUNet, init_variables, model_from_config


class TrainState(NamedTuple):
    """Everything a training step changes (a pytree; checkpointed as is).

    Attributes:
      step: int32 `[]`, the number of steps taken.
      params, batch_stats: the model's variable collections.
      opt_state: the optax state.
      rng: uint32 key data (`jax.random.key_data`) of the run's base key; step `t` uses
        `fold_in(key, t)`, so the randomness of a step does not depend on where a run resumed.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    rng: jax.Array


class EarlyStopping(NamedTuple):
    """Early stopping on the validation loss, patience counted in evaluations ("epochs")."""

    best_loss: float = math.inf
    best_step: int = -1
    evaluations_since_best: int = 0
    stopped: bool = False

    def update(self, loss: float, step: int, patience: int) -> tuple[EarlyStopping, bool]:
        """The state after an evaluation and whether ``loss`` is a new best."""
        if loss < self.best_loss:
            return EarlyStopping(loss, step, 0, False), True
        waited = self.evaluations_since_best + 1
        return EarlyStopping(self.best_loss, self.best_step, waited, waited >= patience), False

    def to_json(self) -> dict:
        best = None if math.isinf(self.best_loss) else self.best_loss
        return dict(self._asdict(), best_loss=best)

    @classmethod
    def from_json(cls, values: dict) -> EarlyStopping:
        best = values.get("best_loss")
        return cls(
            best_loss=math.inf if best is None else float(best),
            best_step=int(values["best_step"]),
            evaluations_since_best=int(values["evaluations_since_best"]),
            stopped=bool(values["stopped"]),
        )


# ----------------------------------------------------------------------------- intervals


def steps_per_epoch(num_examples: int, global_batch: int, process_count: int = 1) -> int:
    """Steps in one pass over a training split of ``num_examples`` (as the train iterator shards
    it: ``num_examples // process_count`` records per process, remainders dropped), at least 1."""
    return max(1, (num_examples // process_count) // (global_batch // process_count))


def resolve_interval(value: int, steps_in_epoch: int) -> int:
    """A step interval of the config: ``config.ONE_EPOCH`` (0) means ``steps_in_epoch``."""
    return steps_in_epoch if int(value) == config_lib.ONE_EPOCH else int(value)


def _per_process(global_batch: int, mesh: Mesh, what: str) -> int:
    """The per-process share of a global batch size, checked against the mesh."""
    if global_batch % mesh.size or global_batch % jax.process_count():
        raise ValueError(
            f"{what} {global_batch} must be divisible by the number of devices ({mesh.size}) "
            f"and of processes ({jax.process_count()})."
        )
    return global_batch // jax.process_count()


# ----------------------------------------------------------------------------- state and steps


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam with the configured learning rate (paper: 1e-4)."""
    return optax.adam(train_config.learning_rate)


def create_train_state(
    config: ml_collections.ConfigDict,
    key: jax.Array,
    image_shape: tuple[int, int, int],
    mesh: Mesh | None = None,
) -> tuple[ProbabilisticUNet, optax.GradientTransformation, TrainState]:
    """The model, the optimizer and the initial state (replicated over ``mesh`` if given).

    Args:
      config: the training config (uses ``config.model`` and ``config.train``).
      key: the run's base key; split into the initialization key and ``TrainState.rng``.
      image_shape: `[H, W, C]` of the images.
    """
    model = model_from_config(config.model)
    optimizer = make_optimizer(config.train)

    def init(key: jax.Array) -> TrainState:
        init_key, rng = jax.random.split(key)
        variables = init_variables(model, init_key, image_shape)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables["batch_stats"],
            opt_state=optimizer.init(params),
            rng=jax.random.key_data(rng),
        )

    out_shardings = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    return model, optimizer, jax.jit(init, out_shardings=out_shardings)(key)


def variables_of(state: TrainState) -> dict:
    """``{'params', 'batch_stats'}`` of a state."""
    return {"params": state.params, "batch_stats": state.batch_stats}


def make_train_step(
    model: ProbabilisticUNet,
    optimizer: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jit-compiled step ``(state, batch) -> (state, metrics)``.

    ``batch`` is ``{'image': [B, H, W, 1], 'mask': [B, H, W]}`` sharded over ``'data'``; the state
    is replicated and donated (do not use the argument afterwards). ``metrics`` are scalars:
    ``loss``, ``reconstruction``, ``kl`` (batch means) and ``grad_norm``.
    """
    beta, kl_samples = float(config.model.beta), int(config.model.kl_samples)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        latent_key, kl_key = jax.random.split(key)

        def loss_fn(params):
            output, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                batch["mask"],
                train=True,
                rngs={"latent": latent_key},
                mutable=["batch_stats"],
            )
            loss, metrics = losses.elbo_loss(
                output, batch["mask"], beta=beta, key=kl_key, kl_samples=kl_samples
            )
            return loss, (metrics, updates["batch_stats"])

        grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        return TrainState(state.step + 1, params, batch_stats, opt_state, state.rng), metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
    return jax.jit(
        train_step,
        in_shardings=(replicated, batch_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def make_eval_step(
    model: ProbabilisticUNet, config: ml_collections.ConfigDict, mesh: Mesh
) -> Callable[[dict, dict, jax.Array], dict]:
    """The jit-compiled validation step ``(variables, batch, key) -> sums``.

    ``batch`` is an eval batch ``{'image' [B, H, W, 1], 'masks' [B, A, H, W], 'valid' [B], ...}``;
    the loss of an image is the negative ELBO (batch norm in inference mode, z drawn from the
    posterior with ``key``) averaged over its A annotations. Returns scalar sums over the valid
    images: ``loss``, ``reconstruction``, ``kl`` and ``count``; divide by ``count`` after
    summing over batches.
    """
    beta, kl_samples = float(config.model.beta), int(config.model.kl_samples)

    def eval_step(variables: dict, batch: dict, key: jax.Array) -> dict:
        latent_key, kl_key = jax.random.split(key)

        def one_annotation(masks: jax.Array) -> dict:  # [B, H, W] -> per-image [B] terms.
            output = model.apply(
                variables, batch["image"], masks, train=False, rngs={"latent": latent_key}
            )
            reconstruction = losses.pixel_cross_entropy(output.logits, masks)
            kl = distributions.kl_divergence(
                output.posterior, output.prior, key=kl_key, num_samples=kl_samples
            )
            return {"reconstruction": reconstruction, "kl": kl}

        # One annotator at a time (a loop, not one batch of B * A): the batch of each call stays
        # that of eval.batch_size, which keeps jaxlib's CPU LAPACK kernels (the triangular
        # solves of the FC/LR latents) on their single-threaded path; their multi-threaded path
        # can deadlock XLA:CPU's thread pool when two run at once (jaxlib 0.10, 2 cores).
        terms = jax.lax.map(one_annotation, jnp.moveaxis(batch["masks"], 1, 0))  # [A, B]
        per_image = {name: jnp.mean(value, axis=0) for name, value in terms.items()}
        per_image["loss"] = per_image["reconstruction"] + beta * per_image["kl"]
        weight = batch["valid"].astype(jnp.float32)
        sums = {name: jnp.sum(value * weight) for name, value in per_image.items()}
        return dict(sums, count=jnp.sum(weight))

    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
    return jax.jit(
        eval_step,
        in_shardings=(replicated, batch_sharding, replicated),
        out_shardings=replicated,
    )


def evaluate_loss(eval_step, variables: dict, batches, mesh: Mesh, key: jax.Array) -> dict:
    """Mean validation ``loss``, ``reconstruction`` and ``kl`` over all valid images."""
    totals = None
    for batch in batches:
        sums = eval_step(variables, sharding.shard_batch(batch, mesh), key)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals.pop("count"))
    return {name: float(value) / count for name, value in totals.items()}


# ----------------------------------------------------------------------------- logging


class MetricWriter:
    """Scalars to ``workdir/metrics.jsonl`` and TensorBoard (``workdir/tensorboard``).

    Only process 0 writes. A JSONL line is ``{"step": ..., "split": ..., <name>: value}``.
    """

    def __init__(self, workdir: str):
        self._active = jax.process_index() == 0
        if self._active:
            from tensorboardX import SummaryWriter

            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self._active:
            return
        self._jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
        self._jsonl.flush()
        for name, value in metrics.items():
            self._tb.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self._active:
            self._jsonl.close()
            self._tb.close()


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return (
        f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"
    )


class _Progress:
    """Training steps/s and images/s between two log points (evaluations and checkpoints left
    out), and the ETA (including the evaluations still to come, each as long as the last)."""

    def __init__(self, step: int, num_steps: int, global_batch: int, eval_every: int):
        self.num_steps, self.global_batch, self.eval_every = num_steps, global_batch, eval_every
        self.step, self.time = step, time.perf_counter()
        self.eval_seconds = 0.0

    def exclude(self, seconds: float, *, evaluation: bool = False) -> None:
        """Leaves ``seconds`` spent outside training steps out of the rate."""
        self.time += seconds
        if evaluation:
            self.eval_seconds = seconds

    def update(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        rate = (step - self.step) / max(now - self.time, 1e-9)
        self.step, self.time = step, now
        evaluations_left = self.num_steps // self.eval_every - step // self.eval_every
        eta = (self.num_steps - step) / max(rate, 1e-9) + evaluations_left * self.eval_seconds
        return {
            "steps_per_second": rate,
            "images_per_second": rate * self.global_batch,
            "eta_seconds": eta,
        }


# ----------------------------------------------------------------------------- the run


class _Run(NamedTuple):
    """What the loop needs besides the state."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Mesh
    checkpointer: checkpointing.Checkpointer
    writer: MetricWriter
    eval_step: Callable
    validation: Any
    eval_key: jax.Array


def _check_finite(pending: list[tuple[int, dict]], run: _Run) -> list[dict[str, float]]:
    """Fetches the metrics of the steps since the last sync; raises on a non-finite loss."""
    fetched = jax.device_get([metrics for _, metrics in pending])
    for (step, _), metrics in zip(pending, fetched, strict=True):
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            last = run.checkpointer.latest_step()
            where = (
                f"the last good checkpoint is step {last} in {run.workdir}/checkpoints/latest"
                if last is not None
                else "no checkpoint has been written yet"
            )
            raise FloatingPointError(
                f"Non-finite training loss ({loss}) at step {step}; stopping ({where}, left "
                "untouched). Lower train.learning_rate or check the data."
            )
    return [{name: float(value) for name, value in m.items()} for m in fetched]


def _copy(tree: Any) -> Any:
    """A copy on device that survives donating ``tree``."""
    return jax.tree.map(jnp.copy, tree)


def _final_evaluation(config, workdir: str, variables: dict) -> dict | None:
    """Evaluates the best variables on ``config.eval.split`` (None if disabled)."""
    if int(config.eval.num_samples) == 0:
        logging.info("eval.num_samples = 0: skipping the final evaluation.")
        return None
    from probunet_jax import evaluation

    summary = evaluation.evaluate_model(config, variables, workdir=workdir)
    metrics = summary.get("metrics", {})
    if "ged" in metrics:
        line = f"{config.eval.split} GED {metrics['ged']['mean']:.3f}"
        if "oracle_ged" in metrics:
            line += f" (oracle {metrics['oracle_ged']['mean']:.3f})"
        logging.info(line)
        if jax.process_index() == 0:
            print(line, flush=True)
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), then evaluates the best
    parameters.

    Returns:
      ``best_validation_loss``, ``best_step``, ``final_step``, ``stopped_early``,
      ``train_seconds`` and ``evaluation`` (the summary of
      ``probunet_jax.evaluation.evaluate_model``, or None when ``config.eval.num_samples`` is 0).

    Raises:
      ValueError: a bad config, or a workdir holding a run with a different config.
      FloatingPointError: a non-finite loss (the message names the step).
    """
    config_lib.validate(config)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"The workdir {workdir!r} is a file, not a folder.")
    tc = config.train
    mesh = sharding.make_mesh()
    local_batch = _per_process(tc.batch_size, mesh, "train.batch_size")
    local_eval_batch = _per_process(config.eval.batch_size, mesh, "eval.batch_size")
    os.makedirs(workdir, exist_ok=True)
    checkpointing.write_config(workdir, config)
    processes = dict(process_index=jax.process_index(), process_count=jax.process_count())

    train_iter = data_lib.make_train_iterator(config.data, local_batch, **processes)
    epoch = steps_per_epoch(
        len(data_lib.get_data_source(config.data, "train")), tc.batch_size, jax.process_count()
    )
    eval_every = resolve_interval(tc.eval_every_steps, epoch)
    checkpoint_every = resolve_interval(tc.checkpoint_every_steps, epoch)
    logging.info(
        "%d steps per epoch; validation every %d steps (patience %d evaluations), checkpoints "
        "every %d steps, at most %d steps.",
        epoch,
        eval_every,
        tc.patience,
        checkpoint_every,
        tc.num_steps,
    )
    validation = data_lib.make_eval_batches(
        config.data, "validation", local_eval_batch, **processes
    )
    image_shape = checkpointing.image_shape(config)
    model, optimizer, state = create_train_state(
        config, jax.random.key(config.seed), image_shape, mesh
    )
    best = _copy(variables_of(state))
    early = EarlyStopping()
    ckpt = checkpointing.Checkpointer(workdir, max_to_keep=tc.max_checkpoints_to_keep)
    restored = ckpt.restore(state, best, train_iter)
    if restored is not None:
        state, best = restored.state, restored.best
        early = EarlyStopping.from_json(restored.progress["early_stopping"])
        ckpt.sync_best(early.best_step, best, {"validation_loss": early.to_json()["best_loss"]})
        logging.info("Resumed from step %d of %s.", restored.step, workdir)

    run = _Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        checkpointer=ckpt,
        writer=MetricWriter(workdir),
        eval_step=make_eval_step(model, config, mesh),
        validation=validation,
        eval_key=jax.random.fold_in(jax.random.key(config.seed), 1),
    )
    train_step = make_train_step(model, optimizer, config, mesh)
    step = int(jax.device_get(state.step))
    start_step, start_time = step, time.perf_counter()
    progress = _Progress(step, tc.num_steps, tc.batch_size, eval_every)
    pending: list[tuple[int, dict]] = []

    def evaluate_and_track(state: TrainState, step: int, early: EarlyStopping):
        loss = evaluate_loss(run.eval_step, variables_of(state), run.validation, mesh, run.eval_key)
        run.writer.write(step, "validation", loss)
        early, improved = early.update(loss["loss"], step, tc.patience)
        logging.info(
            "step %d: validation loss %.4f (best %.4f at step %d)%s",
            step,
            loss["loss"],
            early.best_loss,
            early.best_step,
            ", new best" if improved else "",
        )
        return early, improved

    try:
        while step < tc.num_steps and not early.stopped:
            batch = sharding.shard_batch(next(train_iter), mesh)
            state, metrics = train_step(state, batch)
            step += 1
            pending.append((step, metrics))
            log = step % tc.log_every_steps == 0 or step == tc.num_steps
            evaluate = step % eval_every == 0
            save = step % checkpoint_every == 0 or step == tc.num_steps
            if not (log or evaluate or save):
                continue
            fetched = _check_finite(pending, run)  # Never save a state after a bad step.
            if log:
                mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
                speed = progress.update(step)
                run.writer.write(step, "train", {**mean, **speed})
                logging.info(
                    "step %d/%d: loss %.4f (reconstruction %.4f, kl %.4f) | %.2f steps/s, "
                    "%.1f images/s, ETA %s",
                    step,
                    tc.num_steps,
                    mean["loss"],
                    mean["reconstruction"],
                    mean["kl"],
                    speed["steps_per_second"],
                    speed["images_per_second"],
                    _format_duration(speed["eta_seconds"]),
                )
            pending = []
            if evaluate:
                started = time.perf_counter()
                early, improved = evaluate_and_track(state, step, early)
                if improved:
                    best = _copy(variables_of(state))
                    ckpt.save_best(step, best, {"validation_loss": early.best_loss})
                progress.exclude(time.perf_counter() - started, evaluation=True)
                if early.stopped:
                    logging.info(
                        "Early stopping at step %d: no improvement in %d evaluations.",
                        step,
                        tc.patience,
                    )
                    save = True
            if save:
                started = time.perf_counter()
                ckpt.save(step, state, best, {"early_stopping": early.to_json()}, train_iter)
                progress.exclude(time.perf_counter() - started)
        if early.best_step < 0:  # Fewer steps than eval_every: evaluate what we have.
            early, _ = evaluate_and_track(state, step, early)
            ckpt.save_best(step, _copy(variables_of(state)), {"validation_loss": early.best_loss})
        ckpt.wait_until_finished()
    finally:
        ckpt.wait_until_finished()
        run.writer.close()
    train_seconds = time.perf_counter() - start_time
    logging.info(
        "Trained steps %d-%d in %s; best validation loss %.4f at step %d.",
        start_step,
        step,
        _format_duration(train_seconds),
        early.best_loss,
        early.best_step,
    )

    target = checkpointing.variables_target(
        model, image_shape, NamedSharding(mesh, PartitionSpec())
    )
    _, variables, _ = checkpointing.restore_best_variables(workdir, target)
    ckpt.close()
    return {
        "best_validation_loss": early.best_loss,
        "best_step": early.best_step,
        "final_step": step,
        "stopped_early": early.stopped,
        "train_seconds": train_seconds,
        "evaluation": _final_evaluation(config, workdir, variables),
    }
