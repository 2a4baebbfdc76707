"""A trained model at work: exact BatchNorm statistics, prediction over a store, restoring a run.

BatchNorm with the seed's momentum 0.99 keeps its running statistics far
from the data for hundreds of steps (they start at mean 0, variance 1 while
HPA channels are mostly dark), so before every evaluation the trainer
recomputes them exactly over ``config.bn_recalibration_batches`` training
batches, weights unchanged. The batches come from a fixed-seed iterator
restarted each time, so the statistics are a pure function of the weights
and a resumed run stays identical to an uninterrupted one. Checkpoints saved
at an evaluation hold such statistics; any other step is recalibrated when
it is restored, which needs the run's training data.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from hpajax import checkpointing, steps as steps_lib, workdir as workdir_lib
from hpajax.data import pipeline
from hpajax.data.run_data import RunData, open_run_data
from hpajax.data.store import Store
from hpajax.predictions import Predictions


def train_batches(config: ml_collections.ConfigDict, data: RunData, seed: int,
                  num_workers: int = 0) -> Any:
    """This process's shard of the shuffled training batches (Grain iterable)."""
    procs = jax.process_count()
    return pipeline.train_dataset(
        data.sources, batch_size=config.batch_size // procs, seed=seed,
        channels=config.data.channels, num_workers=num_workers,
        shard_index=jax.process_index(), shard_count=procs)


def recalibrate_batch_stats(steps: steps_lib.Steps, state: steps_lib.TrainState,
                            data: RunData) -> steps_lib.TrainState:
    """Replaces the running BatchNorm statistics by exact ones; weights unchanged.

    Means and variances are those of the union of the first
    ``config.bn_recalibration_batches`` batches of a fixed-seed shuffle of
    the training data, un-augmented like evaluation inputs, each layer
    seeing the previous layers normalized as in training. A model without
    BatchNorm is returned as it is.
    """
    config = steps.config
    n = config.bn_recalibration_batches
    if n <= 0 or not jax.tree.leaves(state.batch_stats):
        return state
    batches = iter(train_batches(config, data, seed=config.seed + 1))  # in-process: a few
    total = None
    for _ in range(n):
        m = steps.moments(state, steps_lib.to_device(steps, next(batches)))
        total = m if total is None else jax.tree.map(jnp.add, total, m)
    return state.replace(batch_stats=steps_lib.batch_stats_from_moments(total, n))


def predict(steps: steps_lib.Steps, state: steps_lib.TrainState, store: Store,
            rows: np.ndarray | None = None) -> Predictions:
    """Probabilities of the given rows of a store (default: all), un-augmented.

    ``config.eval_batch_size`` is the global batch, split over the processes.
    In a multi-process run every process must call this: each evaluates a
    contiguous block of the rows (``pipeline.eval_dataset``), and every
    process returns all the rows, in the order of ``rows``, as a
    single-process run does.
    """
    cfg, procs = steps.config, jax.process_count()
    if cfg.eval_batch_size % procs:
        raise ValueError(f"config.eval_batch_size={cfg.eval_batch_size} does not divide by "
                         f"the {procs} processes")
    ds = pipeline.eval_dataset(store, rows, batch_size=cfg.eval_batch_size // procs,
                               channels=cfg.data.channels, shard_index=jax.process_index(),
                               shard_count=procs)
    loss_sum, count = 0.0, 0
    local = {"index": [], "mask": [], "label": [], "probs": []}  # this process's rows
    for batch in ds:
        out = steps.eval(state, steps_lib.to_device(steps, batch))
        loss_sum, count = loss_sum + float(out["loss_sum"]), count + int(out["count"])
        shards = sorted(out["probs"].addressable_shards, key=lambda s: s.index[0].start or 0)
        local["probs"].append(np.concatenate([np.asarray(s.data) for s in shards]))
        for key in ("index", "mask", "label"):
            local[key].append(batch[key])
    local = {k: np.concatenate(v) for k, v in local.items()}
    # Every process has as many batches: equal shapes, as process_allgather needs.
    local["process"] = np.full(len(local["mask"]), jax.process_index(), np.int32)
    gathered = multihost_utils.process_allgather(local, tiled=True)
    # Process k holds the k-th block of the rows: a stable sort by process
    # restores their order, whatever order the gather concatenated them in.
    order = np.argsort(gathered["process"], kind="stable")
    order = order[gathered["mask"][order]]
    found = gathered["index"][order]
    return Predictions(ids=tuple(store.ids[r] for r in found), rows=found,
                       labels=gathered["label"][order], probs=gathered["probs"][order],
                       loss=loss_sum / count)


@dataclasses.dataclass(frozen=True)
class Restored:
    """A run's checkpoint ready to predict: its config, compiled steps, state and step."""

    config: ml_collections.ConfigDict
    steps: steps_lib.Steps
    state: steps_lib.TrainState
    step: int


def restore(workdir: str | os.PathLike, step: int | None = None,
            data: RunData | None = None, *, tta: int | None = None,
            tta_reduce: str | None = None) -> Restored:
    """The served state of ``step`` of the run in ``workdir`` (default: its best checkpoint):
    its weights, or their moving average if the run kept one (``config.ema_decay``).

    A step saved without an evaluation is recalibrated on the run's training
    data (``data``, or else opened from the run's config). ``tta`` and
    ``tta_reduce`` override the run's ``config.tta`` and ``config.tta_reduce``.
    """
    config = workdir_lib.load_config(workdir)
    if tta is not None:
        config.tta = tta
    if tta_reduce is not None:
        config.tta_reduce = tta_reduce
    ckpt = checkpointing.Checkpointer.of_run(workdir, config)
    try:
        step = _chosen_step(ckpt, step, workdir)
        evaluated = ckpt.evaluated(step)  # saved right after a BatchNorm recalibration
        steps = steps_lib.build(config, steps_lib.make_mesh(config.eval_batch_size),
                                steps_lib.input_shape(config))
        state, _ = ckpt.restore(step, steps_lib.abstract_state(steps))
    finally:
        ckpt.close()
    state = steps_lib.served(state)
    if not evaluated:
        state = recalibrate_batch_stats(steps, state, data or open_run_data(config.data))
    return Restored(config, steps, state, step)


def _chosen_step(ckpt: checkpointing.Checkpointer, step: int | None,
                 workdir: str | os.PathLike) -> int:
    saved = ckpt.manager.all_steps()
    if not saved:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first")
    step = ckpt.default_step() if step is None else step
    if step not in saved:
        raise ValueError(f"--step={step}: no such checkpoint in {workdir}/checkpoints "
                         f"(saved: {', '.join(map(str, sorted(saved)))})")
    return step
