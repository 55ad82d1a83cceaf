"""Training: one jit-compiled data-parallel step, early stopping, checkpoints, logging.

``train_and_evaluate(config, workdir)`` is the whole run (``experiments/train.py`` is a thin
launcher around it): it trains with Adam on the negative ELBO, validates every
``config.train.eval_every_steps`` steps (an "epoch" for the patience of early stopping) with
the validation loss and, if ``config.train.validation_samples`` > 0, the validation GED of that
many samples per image; keeps the best parameters (by ``config.train.select_by``: 'loss' or
'ged') apart, checkpoints periodically, resumes from the workdir, and at the end evaluates the
best parameters on ``config.eval.split``.

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

import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from probunet_jax import (
    checkpointing,
    diagnostics,
    evaluation,
    losses,
    metrics,
    run_log,
    sampling,
    sharding,
)
from probunet_jax import component_pruning as pruning
from probunet_jax import config as config_lib
from probunet_jax import data as data_lib
from probunet_jax.model import (
    ModelOutput,
    ProbabilisticUNet,
    init_variables,
    is_hierarchical,
    model_from_config,
)


class TrainState(NamedTuple):
    """Everything a training step changes (a pytree; checkpointed as is).

    Attributes:
      step: int32 `[]`, the number of steps taken.
      params, batch_stats: the model's variable collections.
      opt_state: the optax state.
      rng: uint32 key data (`jax.random.key_data`) of the run's base key; step `t` uses
        `fold_in(key, t)`, so the randomness of a step does not depend on where a run resumed.
      geco: GECO's multiplier and constraint average (unused unless ``train.geco_target``).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    rng: jax.Array
    geco: losses.GecoState


class EarlyStopping(NamedTuple):
    """Early stopping on a validation metric (lower is better), patience counted in
    evaluations ("epochs")."""

    best_value: float = math.inf
    best_step: int = -1
    evaluations_since_best: int = 0
    stopped: bool = False

    def update(self, value: float, step: int, patience: int) -> tuple[EarlyStopping, bool]:
        """The state after an evaluation and whether ``value`` is a new best."""
        if value < self.best_value:
            return EarlyStopping(value, step, 0, False), True
        waited = self.evaluations_since_best + 1
        return EarlyStopping(self.best_value, self.best_step, waited, waited >= patience), False

    def to_json(self) -> dict:
        best = None if math.isinf(self.best_value) else self.best_value
        return dict(self._asdict(), best_value=best)

    @classmethod
    def from_json(cls, values: dict) -> EarlyStopping:
        best = values.get("best_value")
        return cls(
            best_value=math.inf if best is None else float(best),
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


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
    """``train.schedule``: 'constant', or 'cosine' (linear warm-up over ``train.warmup_steps``,
    then cosine decay to 0 at ``train.num_steps``)."""
    rate = float(train_config.learning_rate)
    if train_config.schedule == "constant":
        return optax.constant_schedule(rate)
    return optax.warmup_cosine_decay_schedule(
        0.0, rate, int(train_config.warmup_steps), int(train_config.num_steps)
    )


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam with the configured learning rate (paper: 1e-4, constant) and schedule; with
    ``train.weight_decay`` wd > 0 Adam's coupled L2, wd·w added to every gradient (as
    ``torch.optim.Adam(weight_decay=...)`` in the authors' code)."""
    adam = optax.adam(learning_rate_schedule(train_config))
    decay = float(train_config.weight_decay)
    return optax.chain(optax.add_decayed_weights(decay), adam) if decay else adam


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
            geco=losses.GecoState.initial(
                config.train.geco_target, image_shape[0] * image_shape[1]
            ),
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

    ``batch`` is ``{'image': [B, H, W, C], 'mask': [B, H, W]}`` sharded over ``'data'``; the state
    is replicated and donated (do not use the argument afterwards). The loss is the negative
    ELBO with β warmed up over ``train.kl_warmup_steps``, or with ``train.geco_target`` > 0
    GECO's KL + λ·(reconstruction per pixel / target − 1), plus ``train.l2_norm_penalty``·Σ‖W‖ over
    the prior and posterior nets, plus ``model.sparsity_weight``'s sparse Dirichlet prior on the
    mixture weights (`component_pruning`). ``metrics`` are scalars: ``loss``,
    ``reconstruction``, ``kl`` (batch means), ``grad_norm``, ``learning_rate`` and ``kl_weight``
    (β, or κ·H·W/λ under GECO); ``sparsity`` (the prior's term) and ``components_active`` (the
    components not pruned) where the model has them.
    """
    beta, kl_samples = float(config.model.beta), int(config.model.kl_samples)
    sparsity = float(config.model.get("sparsity_weight", 0.0))
    tc = config.train
    schedule = learning_rate_schedule(tc)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        num_pixels = batch["mask"].shape[1] * batch["mask"].shape[2]
        latent_key, kl_key = jax.random.split(key)
        weight = losses.kl_weight(beta, state.step, int(tc.kl_warmup_steps))

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
                output, batch["mask"], beta=weight, key=kl_key, kl_samples=kl_samples
            )
            if tc.l2_norm_penalty:  # The authors' 1e-5·Σ‖W‖ over the prior and posterior nets.
                penalty = tc.l2_norm_penalty * losses.latent_nets_norm(params)
                loss, metrics = loss + penalty, dict(metrics, loss=metrics["loss"] + penalty)
            constraint = jnp.zeros(())
            if tc.geco_target > 0:
                loss, constraint = losses.geco_loss(metrics, state.geco, tc.geco_target, num_pixels)
            if sparsity:  # The sparse Dirichlet prior on the aggregate mixture weights.
                penalty = pruning.sparsity_penalty(output.prior, output.posterior, sparsity)
                loss = loss + penalty
                metrics = dict(metrics, loss=metrics["loss"] + penalty, sparsity=penalty)
            return loss, (metrics, constraint, updates["batch_stats"])

        grads, (metrics, constraint, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        geco = state.geco
        if tc.geco_target > 0:
            geco = losses.geco_update(geco, constraint, rate=tc.geco_rate, decay=tc.geco_decay)
            weight = tc.geco_target * num_pixels / state.geco.multiplier
        metrics = dict(
            metrics,
            grad_norm=optax.tree.norm(grads),
            learning_rate=schedule(state.step),
            kl_weight=weight,
        )
        if tc.geco_target > 0:
            metrics["geco_multiplier"] = geco.multiplier
        active = pruning.components_active(batch_stats)
        if active is not None:
            metrics["components_active"] = active
        state = TrainState(state.step + 1, params, batch_stats, opt_state, state.rng, geco)
        return state, metrics

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

    ``batch`` is an eval batch ``{'image' [B, H, W, C], 'masks' [B, A, H, W], 'rater_valid'
    [B, A], 'valid' [B], ...}``; only valid raters count.
    Batch norm runs in inference mode, and the U-Net and the prior once per image (the
    hierarchical model runs its training forward pass per annotation, its prior's decoder being
    fed the posterior's z). The loss of an image is its negative ELBO (z drawn from the
    posterior with ``key``) averaged over its A annotations; with
    ``config.train.validation_samples`` = S > 0 also its GED of S samples of the prior against
    the annotations. Returns sums over the valid images: ``loss``, ``reconstruction``,
    ``kl`` (and ``kl/scale_i`` for the hierarchical model), (``ged``), the latent diagnostics'
    ``latent/...`` (`diagnostics.validation_sums`, some of them vectors) and ``count``; divide
    by ``count`` after summing over batches (:func:`evaluate_validation`).
    """
    beta, kl_samples = float(config.model.beta), int(config.model.kl_samples)
    num_samples = int(config.train.validation_samples)
    num_classes = max(2, int(config.model.num_classes))
    penalty = float(config.train.l2_norm_penalty)

    def eval_step(variables: dict, batch: dict, key: jax.Array) -> dict:
        latent_key, kl_key, sample_key = jax.random.split(key, 3)
        diagnostics_key = jax.random.fold_in(key, 3)
        images = batch["image"]
        if is_hierarchical(model):  # Its priors are per scale, in each output.

            def output_of(masks: jax.Array) -> ModelOutput:
                rngs = {"latent": latent_key}
                return model.apply(variables, images, masks, train=False, rngs=rngs)

        else:
            features, prior = model.apply(variables, images, method=model.features_and_prior)

            def output_of(masks: jax.Array) -> ModelOutput:
                posterior = model.apply(variables, images, masks, method=model.posterior)
                z = posterior.sample(seed=latent_key)
                logits = model.apply(variables, features, z, method=model.decode)
                return ModelOutput(logits, prior, posterior)

        def one_annotation(masks: jax.Array) -> dict:  # [B, H, W] -> per-image [B] terms.
            output = output_of(masks)
            terms = losses.elbo_terms(output, masks, beta=beta, key=kl_key, kl_samples=kl_samples)
            return terms, diagnostics.annotation_terms(
                output.posterior, output.prior, key=diagnostics_key
            )

        # One annotator at a time (a loop, not one batch of B * A): the batch of each call stays
        # that of eval.batch_size, which keeps jaxlib's CPU LAPACK kernels (the triangular
        # solves of the FC/LR latents) on their single-threaded path; their multi-threaded path
        # can deadlock XLA:CPU's thread pool when two run at once (jaxlib 0.10, 2 cores).
        terms, latent = jax.lax.map(one_annotation, jnp.moveaxis(batch["masks"], 1, 0))  # [A, B]
        raters = batch["rater_valid"].T.astype(jnp.float32)  # [A, B]: padded raters weigh 0.
        per_image = {
            name: jnp.sum(value * raters, axis=0) / jnp.sum(raters, axis=0)
            for name, value in terms.items()
        }
        if penalty:  # In the validation loss too, as the authors' code has it.
            per_image["loss"] += penalty * losses.latent_nets_norm(variables["params"])
        if num_samples:
            if is_hierarchical(model):
                logits = sampling.sample_logits(model, variables, images, sample_key, num_samples)
            else:
                logits = sampling.decode_samples(
                    model, variables, features, prior, sample_key, num_samples
                )
            per_image["ged"] = metrics.generalized_energy_distance(
                sampling.logits_to_masks(logits),
                batch["masks"],
                annotation_valid=batch["rater_valid"],
                num_classes=num_classes,
            ).ged
        weight = batch["valid"].astype(jnp.float32)
        sums = {name: jnp.sum(value * weight) for name, value in per_image.items()}
        sums.update(diagnostics.validation_sums(latent, batch["rater_valid"], weight))
        return dict(sums, count=jnp.sum(weight))

    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS))
    return jax.jit(
        eval_step,
        in_shardings=(replicated, batch_sharding, replicated),
        out_shardings=replicated,
    )


def evaluate_validation(eval_step, variables: dict, batches, mesh: Mesh, key: jax.Array) -> dict:
    """Means of the sums of ``eval_step`` (see :func:`make_eval_step`) over all valid images,
    with the latent diagnostics' (`diagnostics.finish_validation`), as floats."""
    totals = None
    for batch in batches:
        sums = eval_step(variables, sharding.shard_batch(batch, mesh), key)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals.pop("count"))
    return diagnostics.finish_validation({name: v / count for name, v in totals.items()})


# ----------------------------------------------------------------------------- the run


class _Loop(NamedTuple):
    """What the training loop needs besides the state."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    train_step: Callable
    train_iter: Iterator
    validate: Callable[[dict], dict]  # variables -> validation metrics
    checkpointer: checkpointing.Checkpointer
    writer: run_log.MetricWriter
    eval_every: int
    checkpoint_every: int


def _check_finite(pending: list[tuple[int, dict]], loop: _Loop) -> list[dict[str, float]]:
    """Fetches the metrics of the steps since the last sync; raises on a non-finite loss."""
    fetched = jax.device_get([metrics for _, metrics in pending])
    for (step, _), values in zip(pending, fetched, strict=True):
        loss = float(values["loss"])
        if not np.isfinite(loss):
            last = loop.checkpointer.latest_step()
            where = (
                f"the last good checkpoint is step {last} in "
                f"{loop.checkpointer.workdir}/checkpoints/latest"
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


def _log_train(loop: _Loop, step: int, fetched: list[dict], progress: run_log.Progress) -> None:
    mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    if "components_active" in mean:  # The count after the last step, not the interval's mean.
        mean["components_active"] = fetched[-1]["components_active"]
    speed = progress.update(step)
    loop.writer.write(step, "train", {**mean, **speed})
    logging.info(
        "step %d/%d: loss %.4f (reconstruction %.4f, kl %.4f) | %.2f steps/s, %.1f images/s, "
        "ETA %s",
        step,
        loop.config.train.num_steps,
        mean["loss"],
        mean["reconstruction"],
        mean["kl"],
        speed["steps_per_second"],
        speed["images_per_second"],
        run_log.format_duration(speed["eta_seconds"]),
    )
    if "components_active" in mean:
        logging.info("step %d: %d mixture components active", step, mean["components_active"])
    if fetched[-1].get("geco_multiplier", 0.0) >= losses.GECO_MULTIPLIER_RANGE[1]:
        logging.log_first_n(
            logging.WARNING,
            "step %d: GECO's multiplier reached its cap %.0e, so the KL weight is %.1e and can "
            "rise again only by a factor exp(train.geco_rate) a step: the reconstruction stayed "
            "far above train.geco_target %g; raise the target or train with beta "
            "(train.geco_target=0).",
            1,
            step,
            losses.GECO_MULTIPLIER_RANGE[1],
            fetched[-1]["kl_weight"],
            loop.config.train.geco_target,
        )


def _validate(loop: _Loop, state: TrainState, step: int, early: EarlyStopping):
    """Validates ``state``; the new early-stopping state, and a copy of the variables if they
    are the new best (else None)."""
    values = loop.validate(variables_of(state))
    loop.writer.write(step, "validation", values)
    tc = loop.config.train
    early, improved = early.update(values[tc.select_by], step, tc.patience)
    shown = ", ".join(f"{name} {value:.4f}" for name, value in values.items())
    logging.info(
        "step %d: validation %s (best %s %.4f at step %d)%s",
        step,
        shown,
        tc.select_by,
        early.best_value,
        early.best_step,
        ", new best" if improved else "",
    )
    if not improved:
        return early, None
    best = _copy(variables_of(state))
    loop.checkpointer.save_best(step, best, {f"validation_{k}": v for k, v in values.items()})
    return early, best


def _train(loop: _Loop, state: TrainState, best: dict, early: EarlyStopping):
    """Steps until ``train.num_steps`` or early stopping, validating and checkpointing."""
    tc = loop.config.train
    step = int(jax.device_get(state.step))
    progress = run_log.Progress(step, tc.num_steps, tc.batch_size, loop.eval_every)
    pending: list[tuple[int, dict]] = []
    while step < tc.num_steps and not early.stopped:
        state, metrics_ = loop.train_step(
            state, sharding.shard_batch(next(loop.train_iter), loop.mesh)
        )
        step += 1
        pending.append((step, metrics_))
        log = step % tc.log_every_steps == 0 or step == tc.num_steps
        validate = step % loop.eval_every == 0
        save = step % loop.checkpoint_every == 0 or step == tc.num_steps
        if not (log or validate or save):
            continue
        fetched = _check_finite(pending, loop)  # Never save a state after a bad step.
        pending = []
        if log:
            _log_train(loop, step, fetched, progress)
        started = time.perf_counter()
        if validate:
            early, improved = _validate(loop, state, step, early)
            best = improved if improved is not None else best
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
            progress_json = {"early_stopping": early.to_json()}
            loop.checkpointer.save(step, state, best, progress_json, loop.train_iter)
            progress.exclude(time.perf_counter() - started)
    if early.best_step < 0:  # Fewer steps than eval_every: validate what we have.
        early, best = _validate(loop, state, step, early)
    return state, best, early


def _final_evaluation(config, model: ProbabilisticUNet, variables: dict, workdir: str):
    """Evaluates the best variables on ``config.eval.split`` (None if disabled)."""
    if int(config.eval.num_samples) == 0:
        logging.info("eval.num_samples = 0: skipping the final evaluation.")
        return None
    summary = evaluation.evaluate_model(config, variables, workdir=workdir, model=model)
    values = summary.get("metrics", {})
    if "ged" in values:
        line = f"{config.eval.split} GED {values['ged']['mean']:.3f}"
        if "oracle_ged" in values:
            line += f" (oracle {values['oracle_ged']['mean']:.3f})"
        logging.info(line)
        if jax.process_index() == 0:
            print(line, flush=True)
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), then evaluates the best
    parameters.

    Returns:
      ``best_validation_<select_by>`` (the best value of the selection metric
      ``config.train.select_by``: ``best_validation_loss`` or ``best_validation_ged``),
      ``best_step``, ``final_step``, ``stopped_early``, ``train_seconds``, ``evaluation``
      (the summary of ``probunet_jax.evaluation.evaluate_model``, or None when
      ``config.eval.num_samples`` is 0) and, for a model that prunes mixture components,
      ``components_active`` (those left in the best parameters).

    Raises:
      ValueError: a bad config, or a workdir holding a run with a different config (nothing is
        written then).
      NotADirectoryError: ``workdir`` is a file.
      FloatingPointError: a non-finite loss (the message names the step).
    """
    config_lib.validate(config)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"The workdir {workdir!r} is a file, not a folder.")
    tc, mesh = config.train, sharding.make_mesh()
    local_batch = _per_process(tc.batch_size, mesh, "train.batch_size")
    local_eval_batch = _per_process(config.eval.batch_size, mesh, "eval.batch_size")
    checkpointing.write_config(workdir, config)
    processes = dict(process_index=jax.process_index(), process_count=jax.process_count())
    epoch = steps_per_epoch(
        len(data_lib.get_data_source(config.data, "train")), tc.batch_size, jax.process_count()
    )
    model, optimizer, state = create_train_state(
        config, jax.random.key(config.seed), data_lib.dataset_info(config.data).image_shape, mesh
    )
    validation = data_lib.make_eval_batches(
        config.data, "validation", local_eval_batch, **processes
    )
    eval_step, eval_key = (
        make_eval_step(model, config, mesh),
        jax.random.fold_in(jax.random.key(config.seed), 1),
    )
    loop = _Loop(
        config=config,
        mesh=mesh,
        train_step=make_train_step(model, optimizer, config, mesh),
        train_iter=data_lib.make_train_iterator(config.data, local_batch, **processes),
        validate=lambda variables: evaluate_validation(
            eval_step, variables, validation, mesh, eval_key
        ),
        checkpointer=checkpointing.Checkpointer(workdir, max_to_keep=tc.max_checkpoints_to_keep),
        writer=run_log.MetricWriter(workdir),
        eval_every=resolve_interval(tc.eval_every_steps, epoch),
        checkpoint_every=resolve_interval(tc.checkpoint_every_steps, epoch),
    )
    logging.info(
        "%d steps per epoch; validation every %d steps (patience %d evaluations), checkpoints "
        "every %d steps, at most %d steps.",
        epoch,
        loop.eval_every,
        tc.patience,
        loop.checkpoint_every,
        tc.num_steps,
    )
    state, best, early = _resume(loop, state)
    start_step, start_time = int(jax.device_get(state.step)), time.perf_counter()
    try:
        state, best, early = _train(loop, state, best, early)
    finally:
        loop.checkpointer.close()
        loop.writer.close()
    final_step, train_seconds = int(jax.device_get(state.step)), time.perf_counter() - start_time
    logging.info(
        "Trained steps %d-%d in %s; best validation %s %.4f at step %d.",
        start_step,
        final_step,
        run_log.format_duration(train_seconds),
        tc.select_by,
        early.best_value,
        early.best_step,
    )
    result = {
        f"best_validation_{tc.select_by}": early.best_value,
        "best_step": early.best_step,
        "final_step": final_step,
        "stopped_early": early.stopped,
        "train_seconds": train_seconds,
    }
    active = pruning.components_active(best["batch_stats"])
    if active is not None:  # A learned number of components: that of the evaluated parameters.
        result["components_active"] = int(jax.device_get(active))
        line = (
            f"{result['components_active']} of {config.model.num_components} mixture components "
            f"in use (best step {early.best_step})"
        )
        logging.info(line)
        if jax.process_index() == 0:
            print(line, flush=True)
    return dict(result, evaluation=_final_evaluation(config, model, best, workdir))


def _resume(loop: _Loop, state: TrainState) -> tuple[TrainState, dict, EarlyStopping]:
    """The state, best variables and early stopping of the latest checkpoint, if any."""
    best, early = _copy(variables_of(state)), EarlyStopping()
    restored = loop.checkpointer.restore(state, best, loop.train_iter)
    if restored is None:
        return state, best, early
    early = EarlyStopping.from_json(restored.progress["early_stopping"])
    info = {f"validation_{loop.config.train.select_by}": early.to_json()["best_value"]}
    loop.checkpointer.sync_best(early.best_step, restored.best, info)
    logging.info("Resumed from step %d of %s.", restored.step, loop.checkpointer.workdir)
    return restored.state, restored.best, early
