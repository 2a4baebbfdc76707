"""Orbax checkpoints holding the train state and the Grain iterator state as one step.

Each step directory holds ``state`` (params, batch statistics, optimizer and
LR-plateau state, step, RNG) and ``data`` (the training iterator's position,
one JSON file per process, written by Grain's Orbax handler). Saving is
asynchronous; the policy keeps the last ``keep`` steps plus the best one by
the configured evaluation metric.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


class _IteratorSnapshot:
    """An iterator state captured now, for Grain's handler to write later.

    Saves are asynchronous: handing Grain the live iterator would record
    wherever training has advanced it to by the time the write happens.
    """

    def __init__(self, state: dict):
        self._state = json.dumps(state, indent=1).encode()

    def get_state(self) -> bytes:
        return self._state


class Checkpointer:
    """Saves and restores (state, data iterator) steps under ``directory``."""

    def __init__(self, directory: str | os.PathLike, keep: int, best_metric: str,
                 best_mode: str):
        if best_mode not in ("max", "min"):
            raise ValueError(f"config.best_mode={best_mode!r}: choose 'max' or 'min'")
        metric = lambda metrics: metrics[best_metric]  # noqa: E731
        policy = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(n=keep),
            checkpoint_managers.BestN(get_metric_fn=metric, reverse=best_mode == "min", n=1,
                                      keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            best_fn=metric, best_mode=best_mode, preservation_policy=policy,
            enable_async_checkpointing=True, create=True)
        self.manager = ocp.CheckpointManager(os.fspath(os.path.abspath(directory)),
                                             options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: Any, iterator_state: dict,
             metrics: dict[str, float] | None = None) -> None:
        """Starts writing a step; returns before the write completes."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator_state)))
        self.manager.save(step, args=args, metrics=metrics)

    def restore(self, step: int, target: Any, iterator: Any = None) -> Any:
        """Restores ``step`` into ``target``'s structure and shardings.

        With ``iterator``, also moves that Grain iterator to the saved position.
        """
        items = {"state": ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, target))}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items)).state

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def params_sha256(params: Any, batch_stats: Any) -> str:
    """SHA-256 of the parameter and batch-statistic bytes, in tree-path order.

    Lets anyone audit that two runs, or a run and its resumed copy, reached
    bit-identical weights.
    """
    digest = hashlib.sha256()
    for tree in (params, batch_stats):
        leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
        for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
            digest.update(jax.tree_util.keystr(path).encode())
            digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()
