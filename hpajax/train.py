"""The training loop: where a run starts (its latest checkpoint, or a weights file), when
to log, evaluate, save and stop.

Everything else comes from below: the data (``data.run_data``), the jitted
steps (``steps``), BatchNorm recalibration and prediction (``inference``),
checkpoints, logs and preemption. The loop fetches the on-device training
sums only when it logs or saves, its only host syncs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from etils import epath

from hpajax import checkpointing, classes, evaluate, inference, logs, losses, models, preemption
from hpajax import steps as steps_lib
from hpajax import workdir as workdir_lib
from hpajax.data import pipeline, sources
from hpajax.data.run_data import RunData, open_run_data
from hpajax.files import write_atomic
from hpajax.models import weights
from hpajax.predictions import Predictions
from hpajax.steps import Steps, TrainState


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains to ``config.total_steps``, resuming from the latest usable checkpoint.

    Returns the last validation metrics. On SIGTERM saves a checkpoint and
    raises ``preemption.Preempted``; raises ``FloatingPointError`` on a
    NaN/Inf step unless ``config.skip_nonfinite``.
    """
    _check_intervals(config)
    workdir = workdir_lib.prepare(workdir)
    data = open_run_data(config.data)
    steps = build_steps(config, data)
    config.data.input_size = steps.image_shape[0]  # recorded: prediction needs no store
    config.data.image_size = data.store.image_size  # the crops' grid at prediction
    if "init_from" in config.model:  # recorded: the normalization goes with the weights
        config.model.normalize = steps_lib.normalization_name(config)
    ckpt = checkpointing.Checkpointer.of_run(workdir, config)
    try:
        return _resume_and_run(config, workdir, data, steps, ckpt)
    finally:
        ckpt.close()


def _check_intervals(config: ml_collections.ConfigDict) -> None:
    """The loop's step counts are positive (each is a modulus), before anything is written."""
    for field in ("total_steps", "log_every", "eval_every", "checkpoint_every"):
        if config[field] < 1:
            raise ValueError(f"config.{field}={config[field]}: must be 1 or more")


def _resume_and_run(config: ml_collections.ConfigDict, workdir: epath.Path, data: RunData,
                    steps: Steps, ckpt: checkpointing.Checkpointer) -> dict[str, float]:
    """Checks the workdir, restores its latest step (or starts), runs the loop."""
    resuming = bool(ckpt.manager.all_steps())
    primary = jax.process_index() == 0  # the one writer of the workdir's own files
    workdir_lib.check_data(workdir, data.fingerprint(), resuming, write=primary)
    workdir_lib.save_config(config, workdir, resuming, write=primary)
    train_iter = iter(inference.train_batches(config, data, config.seed,
                                              config.data.num_workers))
    # A resumed run's state comes whole from its checkpoint: no initializers to compile.
    tensors = None  # config.model.init_from's, read once
    if resuming:
        state = steps_lib.abstract_state(steps)
    else:
        if config.model.get("init_from"):  # a file that does not fit fails before they compile
            tensors = weights.read_safetensors(config.model.init_from)
            imported_weights(config, tensors, steps_lib.abstract_state(steps))
        state = steps_lib.init_state(steps)
    sums, start = steps_lib.zero_sums(steps), 0
    restored = ckpt.restore_latest(state, sums, train_iter)
    if restored is not None:
        start, state, sums = restored
        print(f"resumed from {workdir / 'checkpoints'} at step {start}")
    elif tensors is not None:
        state = start_from_file(steps, state, config, workdir, tensors)
    log = logs.MetricsLog(workdir, start)
    print(f"logs: {log.path} and TensorBoard {log.tensorboard_dir}")
    if start == 0 and (data.mixed or data.oversample):
        log_drawn_frequencies(log, data, config.seed)
    preempt = preemption.Preemption(ckpt.reached_preemption)
    try:
        return _Loop(steps, data, ckpt, log, preempt).run(state, sums, train_iter, start)
    finally:
        preempt.close()
        log.close()


def start_from_file(steps: Steps, state: TrainState, config: ml_collections.ConfigDict,
                    workdir: epath.Path, tensors: dict[str, np.ndarray]) -> TrainState:
    """``state`` with ``tensors``, ``config.model.init_from``'s weights, before the first step.

    Every tensor of the file, loaded or skipped, is listed in
    ``WORKDIR/init_from.txt``; the optimizer starts afresh: ``state``'s optimizer and
    plateau states are ``init_state``'s, which depend on the parameters' shapes only
    (re-initializing them outside a jitted program compiled one tiny program per shape).
    """
    path = config.model.init_from
    imported = imported_weights(config, tensors, state)
    if jax.process_index() == 0:
        write_atomic(workdir / "init_from.txt", "".join(f"{line}\n" for line in imported.lines()))
    print(f"init_from {path}: {len(imported.loaded)} tensors loaded, "
          f"{len(imported.skipped)} skipped (the list: {workdir / 'init_from.txt'})")
    state = state.replace(params=imported.params, batch_stats=imported.batch_stats,
                          ema=None if state.ema is None else {
                              "params": imported.params, "batch_stats": imported.batch_stats})
    return jax.device_put(state, steps.replicated)


def imported_weights(config: ml_collections.ConfigDict, tensors: dict[str, np.ndarray],
                     state: TrainState) -> weights.Imported:
    """``tensors``, ``config.model.init_from``'s, in ``state``'s weights and BatchNorm
    statistics; raises ValueError naming the tensor that does not fit. Shapes
    (``abstract_state``) are enough to check a file."""
    path = config.model.init_from
    variables = {"params": jax.device_get(state.params),
                 "batch_stats": jax.device_get(state.batch_stats)}
    return weights.import_state(tensors, variables, config.data.channels,
                                models.import_rules(config.model.name),
                                source=f"config.model.init_from={path}",
                                yellow_init=config.model.yellow_init)


def log_drawn_frequencies(log: logs.MetricsLog, data: RunData, seed: int) -> None:
    """Records the class frequencies of the first epoch's draws against the sources' own.

    Mixing and oversampling change what the model sees; this says by how
    much, from the draw plan alone (no image is read).
    """
    epoch = sum(len(s.rows) for s in data.sources)
    drawn = sources.drawn_label_frequency(data.sources, seed, epoch)
    rows = data.train_labels().mean(0)
    log.write(0, "data", {"drawn_frequency": drawn.tolist(), "store_frequency": rows.tolist()})
    rarest = np.argsort(np.where(rows > 0, rows, np.inf))[:3]
    print(f"first epoch ({epoch} draws), rarest classes drawn vs. in the training rows: " +
          ", ".join(f"{classes.CLASS_NAMES[c]} {drawn[c]:.2%} vs {rows[c]:.2%}"
                    for c in rarest))


def build_steps(config: ml_collections.ConfigDict, data: RunData) -> Steps:
    """The run's jitted steps: mesh over all devices, input size from the config or store."""
    pos_weight = losses.positive_weights(data.train_labels()) if config.pos_weight else None
    return steps_lib.build(config, steps_lib.make_mesh(config.batch_size),
                           steps_lib.input_shape(config, data.store.image_size), pos_weight)


class _Loop:
    """The training loop and what it reports; one per ``train_and_evaluate`` call."""

    def __init__(self, steps: Steps, data: RunData, ckpt: checkpointing.Checkpointer,
                 log: logs.MetricsLog, preempt: preemption.Preemption):
        self.steps, self.data, self.ckpt, self.log = steps, data, ckpt, log
        self.preempt = preempt
        self.val_rows = data.rows(data.eval_part)
        self.recent: dict[int, pipeline.Batch] = {}  # step -> where its samples came from
        self.reported = 0  # NaN/Inf steps already reported since the last log
        self.clock = None

    def run(self, state: TrainState, sums: dict, train_iter: Iterator, start: int) -> dict:
        cfg, metrics = self.steps.config, {}
        for step in range(start + 1, cfg.total_steps + 1):
            batch = next(train_iter)
            self.recent[step] = {k: batch[k] for k in steps_lib.HOST_KEYS if k in batch}
            state, sums = self.steps.train(state, steps_lib.to_device(self.steps, batch), sums)
            if self.clock is None:  # time from the end of the first (compiling) step
                jax.block_until_ready(sums)
                self.clock = (time.perf_counter(), step)
            stop = self.preempt.requested(step)
            last = step == cfg.total_steps
            logged = step % cfg.log_every == 0 or last
            evaluated = step % cfg.eval_every == 0 or last
            saved = evaluated or stop or step % cfg.checkpoint_every == 0
            if logged or saved:  # the only host syncs of training
                fetched = jax.device_get(sums)
                self._check_finite(step, fetched)
            if logged:
                self._log_train(state, fetched, step)
                sums, self.recent, self.reported = steps_lib.zero_sums(self.steps), {}, 0
            if evaluated:
                state, metrics = self._validate(state, step)
            if saved:
                self._save(state, sums, train_iter, step, metrics if evaluated else None)
            if stop:
                raise preemption.Preempted(f"stopped by SIGTERM after step {step}, checkpoint "
                                           "saved; rerun the same command to resume")
        return metrics

    def _check_finite(self, step: int, sums: dict) -> None:
        """Raises on NaN/Inf steps not yet reported, or warns about them when skipping."""
        bad, first = int(sums["nonfinite"]), int(sums["first_nonfinite"])
        if bad <= self.reported:
            return
        self.reported = bad
        ids = ", ".join(self._sample_ids(self.recent.get(first, {}))[:32])
        message = (f"step {first}: NaN or Inf in the loss or gradients ({bad} such step(s) "
                   f"up to step {step}); the batch's sample Ids: {ids}")
        if not self.steps.config.skip_nonfinite:
            raise FloatingPointError(message + "; the update was not applied and the "
                                     "checkpoints hold the last good state. Set "
                                     "--config.skip_nonfinite=True to skip such steps")
        print(f"warning: {message}; update skipped", flush=True)

    def _sample_ids(self, where: pipeline.Batch) -> list[str]:
        """The Ids of a batch's samples (none if unknown), from their sources' stores."""
        if not where:
            return []
        return [self.data.sources[s].store.ids[r]
                for s, r in zip(where["source"], where["index"])]

    def _validate(self, state: TrainState, step: int) -> tuple[TrainState, dict]:
        """Recalibrates BatchNorm, scores the validation part, steps the LR plateau."""
        served = inference.recalibrate_batch_stats(self.steps, steps_lib.served(state),
                                                   self.data)
        metrics = validation_metrics(step, inference.predict(self.steps, served,
                                                             self.data.store, self.val_rows))
        state = steps_lib.with_served_batch_stats(state, served.batch_stats)
        state = steps_lib.update_plateau(self.steps, state, metrics["loss"])
        self.log.write(step, "val", metrics)
        print(f"step {step} val " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return state, metrics

    def _save(self, state: TrainState, sums: dict, train_iter: Iterator, step: int,
              metrics: dict | None) -> None:
        sha = checkpointing.params_sha256(state.params, state.batch_stats)
        self.ckpt.save(step, state, sums, train_iter.get_state(), metrics)
        self.log.write(step, "checkpoint", {"params_sha256": sha})
        self.clock = (time.perf_counter(), step)  # training speed excludes evaluation

    def _log_train(self, state: TrainState, sums: dict, step: int) -> None:
        """Logs the training sums the loop fetched to the host."""
        now, (then, then_step) = time.perf_counter(), self.clock
        cfg = self.steps.config
        lr = steps_lib.learning_rate_at(cfg, state)
        loss = float(sums["loss"] / max(int(sums["steps"]), 1))
        epoch = step * cfg.batch_size / sum(len(s.rows) for s in self.data.sources)
        values = {"loss": loss, "lr": lr, "epoch": epoch}
        if int(sums["nonfinite"]):
            values["nonfinite_steps"] = int(sums["nonfinite"])
        images_per_s = None
        if step > then_step:  # not on the step right after (re)compiling
            images_per_s = values["images_per_s"] = ((step - then_step) * cfg.batch_size
                                                     / (now - then))
        self.log.write(step, "train", values)
        print(logs.progress_line(step, cfg.total_steps, epoch, loss, lr, images_per_s,
                                 cfg.batch_size), flush=True)
        self.clock = (now, step)


def validation_metrics(step: int, out: Predictions) -> dict[str, float]:
    """Loss, macro-F1 and weighted-F1 at threshold 0.5; an error if the outputs diverged."""
    if not np.isfinite(out.probs).all():
        raise FloatingPointError(f"step {step}: the model's outputs on the validation split "
                                 "are NaN or Inf: its weights have diverged (lower the learning "
                                 "rate, or resume from an earlier step)")
    return {"loss": out.loss, **evaluate.f1_scores(out.labels, out.probs),
            "no_skill_macro_f1": evaluate.no_skill_macro_f1(out.labels)}
