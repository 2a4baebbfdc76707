"""Training: state, jitted data-parallel steps, BatchNorm recalibration, the loop.

One ``Mesh`` over all devices with a ``data`` axis: batches are sharded on
it, the state is replicated, and XLA inserts the cross-device reductions
(BatchNorm statistics and gradients are those of the global batch). The
steps are ``jax.jit``-compiled with the state donated; training metrics are
summed on device and fetched only at log intervals.

BatchNorm with the seed's momentum 0.99 keeps its running statistics far
from the data for hundreds of steps (they start at mean 0, variance 1 while
HPA channels average ~17/255), so before every evaluation the statistics are
recomputed exactly over ``config.bn_recalibration_batches`` training
batches; the weights are unchanged. The recalibration batches come from a
fixed-seed iterator restarted each time, so it is a pure function of the
weights and keeps resumed runs identical to uninterrupted ones.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hpajax import augment, checkpointing, evaluate, logs, losses, preemption
from hpajax import model as model_lib
from hpajax import workdir as workdir_lib
from hpajax.data import open_store, pipeline
from hpajax.data.store import Store


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; saved whole in every checkpoint."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    plateau: Any  # optax.contrib.reduce_on_plateau state: the LR scale and its counters
    rng: jax.Array  # raw PRNG key; step t augments with fold_in(rng, t)


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static parts of a run: data, model, optimizer, compiled steps."""

    config: ml_collections.ConfigDict
    store_path: pathlib.Path | None
    train_indices: np.ndarray | None
    image_shape: tuple[int, int, int]
    mesh: Mesh
    model: model_lib.SeedCNN
    tx: optax.GradientTransformation
    plateau: optax.GradientTransformationExtraArgs
    train_step: Any
    eval_step: Any
    moments_step: Any

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec("data"))


def make_mesh(batch_size: int) -> Mesh:
    """A 1-D ``data`` mesh over every device; the batch must divide evenly."""
    devices = jax.devices()
    if batch_size % len(devices):
        raise ValueError(f"config.batch_size={batch_size} does not divide by the "
                         f"{len(devices)} devices; use a multiple of {len(devices)}")
    return Mesh(np.asarray(devices), ("data",))


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam as the seed's Table 4, with decoupled weight decay."""
    return optax.adamw(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay)


def resize(images: jax.Array, size: int) -> jax.Array:
    """Float images [B, H, W, C] at ``size`` x ``size`` (antialiased linear), if not already.

    Lets one 512 px store feed the seed's 128/256/512 px input-size sweep;
    training augments at the store's resolution first, then resizes.
    """
    if images.shape[1:3] == (size, size):
        return images
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]),
                            "linear", antialias=True)


def model_input(images: jax.Array, size: int) -> jax.Array:
    """Un-augmented uint8 images as the model sees them: float [0, 1] at ``size``."""
    return resize(augment.to_float(images), size)


def train_step(state: TrainState, batch: dict, acc: dict, *, model, tx, loss_fn,
               aug_cfg, size: int) -> tuple[TrainState, dict]:
    """One optimizer step on an augmented global batch; adds the loss to ``acc``."""
    images = resize(augment.augment(jax.random.fold_in(state.rng, state.step), batch["image"],
                                    aug_cfg), size)
    labels = batch["label"].astype(jnp.float32)

    def compute(params):
        logits, updated = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      images, train=True, mutable=["batch_stats"])
        return loss_fn(logits, labels).mean(), updated["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(compute, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
    updated = state.replace(params=optax.apply_updates(state.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)
    # A NaN/Inf loss, gradient or update leaves the state as it was; the loop decides
    # on the host, at its next sync, whether to stop or skip.
    finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(updates)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    state = state.replace(step=state.step + 1)
    return state, {"loss": acc["loss"] + jnp.where(finite, loss, 0.0),
                   "steps": acc["steps"] + finite,
                   "nonfinite": acc["nonfinite"] + ~finite,
                   "first_nonfinite": jnp.where((acc["first_nonfinite"] == 0) & ~finite,
                                                state.step, acc["first_nonfinite"])}


def _all_finite(tree: Any) -> jax.Array:
    """Whether every element is finite (a norm would overflow on huge finite values)."""
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def eval_step(state: TrainState, batch: dict, *, model, loss_fn, size: int) -> dict:
    """Probabilities and the masked loss sum of an un-augmented batch."""
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                         model_input(batch["image"], size), train=False)
    loss = loss_fn(logits, batch["label"].astype(jnp.float32))
    mask = batch["mask"]
    return {"loss_sum": jnp.where(mask, loss, 0.0).sum(), "count": mask.sum(),
            "probs": jax.nn.sigmoid(logits)}


def moments_step(state: TrainState, batch: dict, *, model, size: int) -> dict:
    """Each BatchNorm's batch mean and mean of squares, in training mode."""
    _, updated = model.apply({"params": state.params, "batch_stats": state.batch_stats},
                             model_input(batch["image"], size), train=True,
                             mutable=["batch_stats"])
    flat = traverse_util.flatten_dict(updated["batch_stats"])
    return {k: v + flat[k[:-1] + ("mean",)] ** 2 if k[-1] == "var" else v
            for k, v in flat.items()}


def make_setup(config: ml_collections.ConfigDict) -> Setup:
    """Opens the data and builds the model, optimizer and compiled steps."""
    store = open_store(config.data.store)
    train_indices = store.split(config.data.split)[config.data.train_part]
    pos_weight = (losses.positive_weights(store.labels[train_indices])
                  if config.pos_weight else None)
    return build_setup(config, make_mesh(config.batch_size), input_shape(config, store),
                       store.path, train_indices, pos_weight)


def input_shape(config: ml_collections.ConfigDict, store: Store | None = None
                ) -> tuple[int, int, int]:
    """The model's input [S, S, C]: ``config.data.input_size``, or else the store's side."""
    size = config.data.input_size or (store.image_size if store is not None else 0)
    if size <= 0:
        raise ValueError("config.data.input_size is unset and there is no store to take it "
                         "from; set --config.data.input_size")
    return size, size, len(config.data.channels)


def build_setup(config: ml_collections.ConfigDict, mesh: Mesh,
                image_shape: tuple[int, int, int], store_path: pathlib.Path | None = None,
                train_indices: np.ndarray | None = None,
                pos_weight: np.ndarray | None = None) -> Setup:
    """The model, optimizer and steps jitted over ``mesh``; data optional (benchmarks)."""
    model = model_lib.from_config(config.model)
    loss_fn = losses.make_loss(config.loss, config.focal_gamma, pos_weight)
    tx = make_optimizer(config.optimizer)
    plateau = optax.contrib.reduce_on_plateau(factor=config.optimizer.plateau_factor,
                                              patience=config.optimizer.plateau_patience)
    rep = NamedSharding(mesh, PartitionSpec())
    data = NamedSharding(mesh, PartitionSpec("data"))
    size = image_shape[0]
    train = jax.jit(functools.partial(train_step, model=model, tx=tx, loss_fn=loss_fn,
                                      aug_cfg=config.augment, size=size),
                    in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                    donate_argnums=(0, 2))
    evaluate_ = jax.jit(functools.partial(eval_step, model=model, loss_fn=loss_fn, size=size),
                        in_shardings=(rep, data),
                        out_shardings={"loss_sum": rep, "count": rep, "probs": data})
    moments = jax.jit(functools.partial(moments_step, model=model.clone(bn_momentum=0.0),
                                        size=size),
                      in_shardings=(rep, data), out_shardings=rep)
    return Setup(config, store_path, train_indices, image_shape, mesh, model, tx, plateau,
                 train, evaluate_, moments)


def init_state(setup: Setup) -> TrainState:
    """Fresh, replicated state from ``config.seed``."""
    init_key, aug_key = jax.random.split(jax.random.PRNGKey(setup.config.seed))
    dummy = jnp.zeros((1, *setup.image_shape), jnp.float32)
    variables = jax.jit(functools.partial(setup.model.init, train=False))(init_key, dummy)
    params = variables["params"]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       batch_stats=variables["batch_stats"], opt_state=setup.tx.init(params),
                       plateau=setup.plateau.init(params), rng=aug_key)
    return jax.device_put(jax.device_get(state), setup.replicated)


def to_device(setup: Setup, batch: dict) -> dict:
    """This process's slice of a global batch, as arrays sharded on ``data``."""
    return {k: jax.make_array_from_process_local_data(setup.batch_sharding, v)
            for k, v in batch.items() if k != "index"}


def train_batches(setup: Setup, seed: int, num_workers: int = 0) -> Any:
    """This process's shard of shuffled training batches."""
    cfg = setup.config
    return pipeline.train_dataset(
        setup.store_path, setup.train_indices, batch_size=cfg.batch_size // jax.process_count(),
        seed=seed, channels=cfg.data.channels, num_workers=num_workers,
        shard_index=jax.process_index(), shard_count=jax.process_count())


def recalibrate_batch_stats(setup: Setup, state: TrainState) -> TrainState:
    """Replaces the running BatchNorm statistics by exact ones; weights unchanged.

    Means and variances are those of the union of the first
    ``config.bn_recalibration_batches`` batches of a fixed-seed shuffle of
    the training split, un-augmented like evaluation inputs, each layer
    seeing the previous layers normalized as in training.
    """
    n = setup.config.bn_recalibration_batches
    if n <= 0:
        return state
    batches = iter(train_batches(setup, seed=setup.config.seed + 1))  # in-process: a few batches
    total = None
    for _ in range(n):
        m = setup.moments_step(state, to_device(setup, next(batches)))
        total = m if total is None else jax.tree.map(jnp.add, total, m)
    avg = {k: v / n for k, v in total.items()}
    stats = {k: v - avg[k[:-1] + ("mean",)] ** 2 if k[-1] == "var" else v
             for k, v in avg.items()}
    return state.replace(batch_stats=traverse_util.unflatten_dict(stats))


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Model outputs over a list of store rows, in that order."""

    indices: np.ndarray  # store rows
    probs: np.ndarray  # float32 [N, 28]
    labels: np.ndarray  # uint8 [N, 28]; zeros for an unlabeled store
    loss: float  # mean per-sample loss against ``labels``


def predict(setup: Setup, state: TrainState, store_path: str | os.PathLike,
            indices: np.ndarray | None = None) -> Predictions:
    """Probabilities of the given rows of a store (default: all), un-augmented.

    ``config.eval_batch_size`` is the global batch, split over the processes.
    In a multi-process run every process must call this: each evaluates a
    contiguous block of the rows (``pipeline.eval_dataset``), and every
    process returns all the rows, in the order of ``indices``, as a
    single-process run does.
    """
    from jax.experimental import multihost_utils  # noqa: PLC0415

    cfg, procs = setup.config, jax.process_count()
    if cfg.eval_batch_size % procs:
        raise ValueError(f"config.eval_batch_size={cfg.eval_batch_size} does not divide by "
                         f"the {procs} processes")
    ds = pipeline.eval_dataset(store_path, indices, batch_size=cfg.eval_batch_size // procs,
                               channels=cfg.data.channels, shard_index=jax.process_index(),
                               shard_count=procs)
    loss_sum, count = 0.0, 0
    local = {"index": [], "mask": [], "label": [], "probs": []}  # this process's rows
    for batch in ds:
        out = setup.eval_step(state, to_device(setup, batch))
        loss_sum, count = loss_sum + float(out["loss_sum"]), count + int(out["count"])
        shards = sorted(out["probs"].addressable_shards, key=lambda s: s.index[0].start or 0)
        local["probs"].append(np.concatenate([np.asarray(s.data) for s in shards]))
        for key in ("index", "mask", "label"):
            local[key].append(batch[key])
    local = {k: np.concatenate(v) for k, v in local.items()}
    # Every process has as many batches: equal shapes, as process_allgather needs.
    local["process"] = np.full(len(local["mask"]), jax.process_index(), np.int32)
    rows = multihost_utils.process_allgather(local, tiled=True)
    # Process k holds the k-th block of the rows: a stable sort by process
    # restores their order, whatever order the gather concatenated them in.
    order = np.argsort(rows["process"], kind="stable")
    order = order[rows["mask"][order]]
    return Predictions(rows["index"][order], rows["probs"][order], rows["label"][order],
                       loss_sum / count)


def evaluate_split(setup: Setup, state: TrainState, indices: np.ndarray) -> dict[str, float]:
    """Loss, macro-F1 and weighted-F1 at threshold 0.5 over one split."""
    out = predict(setup, state, setup.store_path, indices)
    if not np.isfinite(out.probs).all():
        raise FloatingPointError(f"step {int(state.step)}: the model's outputs on the "
                                 "evaluation split are NaN or Inf: its weights have diverged "
                                 "(lower the learning rate, or resume from an earlier step)")
    return {"loss": out.loss, **evaluate.f1_scores(out.labels, out.probs),
            "no_skill_macro_f1": evaluate.no_skill_macro_f1(out.labels)}


def update_plateau(setup: Setup, state: TrainState, val_loss: float) -> TrainState:
    """Feeds a validation loss to the LR plateau rule (x factor after patience evals)."""
    _, plateau = setup.plateau.update({}, state.plateau, value=jnp.float32(val_loss))
    return state.replace(plateau=jax.device_put(plateau, setup.replicated))


def zero_acc(setup: Setup) -> dict:
    """Empty on-device training sums for ``train_step``: loss and step counts.

    ``nonfinite`` counts steps whose loss or gradient was NaN/Inf (their
    update skipped), ``first_nonfinite`` is the first such step (0: none).
    """
    zeros = {"loss": jnp.float32(0), "steps": jnp.int32(0), "nonfinite": jnp.int32(0),
             "first_nonfinite": jnp.int32(0)}
    return jax.device_put(jax.device_get(zeros), setup.replicated)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains to ``config.total_steps``, resuming from the latest usable checkpoint.

    Returns the last validation metrics. On SIGTERM saves a checkpoint and
    raises ``preemption.Preempted``; raises ``FloatingPointError`` on a
    NaN/Inf step unless ``config.skip_nonfinite``.
    """
    workdir = workdir_lib.prepare(workdir)
    setup = make_setup(config)
    config.data.input_size = setup.image_shape[0]  # recorded: prediction needs no store
    store = open_store(setup.store_path)
    ckpt = checkpointing.Checkpointer.of_run(workdir, config)
    resuming = bool(ckpt.manager.all_steps())
    primary = jax.process_index() == 0  # the one writer of the workdir's own files
    workdir_lib.check_data(workdir, workdir_lib.data_fingerprint(store, setup.train_indices),
                           resuming, write=primary)
    workdir_lib.save_config(config, workdir, resuming, write=primary)
    train_iter = iter(train_batches(setup, config.seed, config.data.num_workers))
    state, acc, start = init_state(setup), zero_acc(setup), 0
    restored = ckpt.restore_latest(state, acc, train_iter)
    if restored is not None:
        start, state, acc = restored
        print(f"resumed from {workdir / 'checkpoints'} at step {start}")
    log = logs.MetricsLog(workdir, start)
    print(f"logs: {log.path} and TensorBoard {log.tensorboard_dir}")
    preempt = preemption.Preemption(ckpt.reached_preemption)
    loop = _Loop(setup, store, ckpt, log, preempt)
    try:
        return loop.run(state, acc, train_iter, start)
    finally:
        preempt.close()
        ckpt.close()
        log.close()


class _Loop:
    """The training loop and what it reports; one per ``train_and_evaluate`` call."""

    def __init__(self, setup: Setup, store: Store, ckpt: checkpointing.Checkpointer,
                 log: logs.MetricsLog, preempt: preemption.Preemption):
        self.setup, self.store, self.ckpt, self.log = setup, store, ckpt, log
        self.preempt = preempt
        self.val_indices = store.split(setup.config.data.split)[setup.config.data.eval_part]
        self.recent: dict[int, np.ndarray] = {}  # step -> store rows, since the last log
        self.reported = 0  # NaN/Inf steps already reported since the last log
        self.clock = None

    def run(self, state: TrainState, acc: dict, train_iter: Iterator, start: int) -> dict:
        cfg, metrics = self.setup.config, {}
        for step in range(start + 1, cfg.total_steps + 1):
            batch = next(train_iter)
            self.recent[step] = batch["index"]
            state, acc = self.setup.train_step(state, to_device(self.setup, batch), acc)
            if self.clock is None:  # time from the end of the first (compiling) step
                jax.block_until_ready(acc)
                self.clock = (time.perf_counter(), step)
            stop = self.preempt.requested(step)
            last = step == cfg.total_steps
            logged = step % cfg.log_every == 0 or last
            evaluated = step % cfg.eval_every == 0 or last
            saved = evaluated or stop or step % cfg.checkpoint_every == 0
            if logged or saved:  # the only host syncs of training
                sums = jax.device_get(acc)
                self._check_finite(step, sums)
            if logged:
                self._log_train(state, sums, step)
                acc, self.recent, self.reported = zero_acc(self.setup), {}, 0
            if evaluated:
                state, metrics = self._evaluate(state, step)
            if saved:
                self._save(state, acc, train_iter, step, metrics if evaluated else None)
            if stop:
                raise preemption.Preempted(f"stopped by SIGTERM after step {step}, checkpoint "
                                           "saved; rerun the same command to resume")
        return metrics

    def _check_finite(self, step: int, acc: dict) -> None:
        """Raises on NaN/Inf steps not yet reported, or warns about them when skipping."""
        bad, first = int(acc["nonfinite"]), int(acc["first_nonfinite"])
        if bad <= self.reported:
            return
        self.reported = bad
        rows = self.recent.get(first, np.zeros(0, np.int64))
        ids = ", ".join(self.store.ids[r] for r in rows[:32])
        message = (f"step {first}: NaN or Inf in the loss or gradients ({bad} such step(s) "
                   f"up to step {step}); the batch's sample Ids: {ids}")
        if not self.setup.config.skip_nonfinite:
            raise FloatingPointError(message + "; the update was not applied and the "
                                     "checkpoints hold the last good state. Set "
                                     "--config.skip_nonfinite=True to skip such steps")
        print(f"warning: {message}; update skipped", flush=True)

    def _evaluate(self, state: TrainState, step: int) -> tuple[TrainState, dict]:
        state = recalibrate_batch_stats(self.setup, state)
        metrics = evaluate_split(self.setup, state, self.val_indices)
        state = update_plateau(self.setup, state, metrics["loss"])
        self.log.write(step, "val", metrics)
        print(f"step {step} val " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return state, metrics

    def _save(self, state: TrainState, acc: dict, train_iter: Iterator, step: int,
              metrics: dict | None) -> None:
        sha = checkpointing.params_sha256(state.params, state.batch_stats)
        self.ckpt.save(step, state, acc, train_iter.get_state(), metrics)
        self.log.write(step, "checkpoint", {"params_sha256": sha})
        self.clock = (time.perf_counter(), step)  # training speed excludes evaluation

    def _log_train(self, state: TrainState, acc: dict, step: int) -> None:
        """Logs the training-loss sums ``acc`` fetched to the host by the loop."""
        now, (then, then_step) = time.perf_counter(), self.clock
        cfg = self.setup.config
        lr = cfg.optimizer.learning_rate * float(state.plateau.scale)
        loss = float(acc["loss"] / max(int(acc["steps"]), 1))
        epoch = step * cfg.batch_size / len(self.setup.train_indices)
        values = {"loss": loss, "lr": lr, "epoch": epoch}
        if int(acc["nonfinite"]):
            values["nonfinite_steps"] = int(acc["nonfinite"])
        images_per_s = None
        if step > then_step:  # not on the step right after (re)compiling
            images_per_s = values["images_per_s"] = ((step - then_step) * cfg.batch_size
                                                     / (now - then))
        self.log.write(step, "train", values)
        print(logs.progress_line(step, cfg.total_steps, epoch, loss, lr, images_per_s,
                                 cfg.batch_size), flush=True)
        self.clock = (now, step)


