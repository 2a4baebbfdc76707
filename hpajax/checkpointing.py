"""Orbax checkpoints holding the train state and the Grain iterator state as one step.

Each step directory holds ``state`` (params, batch statistics, optimizer and
LR-plateau state, step, RNG), ``sums`` (the training-loss sums since the last
log line, so a resumed run logs exactly what an uninterrupted one would) and
``data`` (the training iterator's position, one JSON file per process,
written by Grain's Orbax handler). Saving is asynchronous; the policy keeps
the last ``keep`` steps plus the best one by the configured evaluation metric.

Orbax writes a step into a temporary directory and renames it when complete,
so a crash never leaves a half-written step behind. A step that is damaged
all the same (a truncated or deleted file, a state of another shape) fails to
restore: ``restore_latest`` then moves it to ``damaged/`` beside the
checkpoints, warns with the reason and falls back to the previous step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from hpajax.files import is_remote, make_folder


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
        self.directory = epath.Path(directory if is_remote(directory)
                                    else os.path.abspath(directory))
        self.manager = ocp.CheckpointManager(os.fspath(self.directory), options=options)

    @classmethod
    def of_run(cls, workdir: str | os.PathLike, config: Any) -> Checkpointer:
        """The checkpoints of the run in ``workdir``, kept as its ``config`` says."""
        return cls(epath.Path(workdir) / "checkpoints", config.keep_checkpoints,
                   config.best_metric, config.best_mode)

    def evaluated(self, step: int) -> bool:
        """Whether ``step`` was saved with evaluation metrics, hence exact BatchNorm statistics."""
        return self.manager.metrics(step) is not None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def default_step(self) -> int | None:
        """The step evaluated and served unless one is named: the best, else the latest."""
        return self.best_step() or self.latest_step()

    def save(self, step: int, state: Any, sums: Any, iterator_state: dict,
             metrics: dict[str, float] | None = None) -> None:
        """Starts writing a step; returns before the write completes."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_fields(state)), sums=ocp.args.StandardSave(sums),
            data=grain.checkpoint.CheckpointSave(_IteratorSnapshot(iterator_state)))
        with self._write_errors():  # raised here for the previous, asynchronous write too
            self.manager.save(step, args=args, metrics=metrics)

    @contextlib.contextmanager
    def _write_errors(self):
        """Any failure of a (possibly earlier, asynchronous) write as one clear error."""
        try:
            yield
        except Exception as e:  # noqa: BLE001  TensorStore reports full disks as ValueError
            raise CheckpointWriteError(
                f"writing a checkpoint to {self.directory} failed (disk full or not "
                f"writable?): {str(e)[:500]}; the complete steps there are kept") from e

    def restore(self, step: int, state: Any, sums: Any = None,
                iterator: Any = None) -> tuple[Any, Any]:
        """Restores ``step`` into the structure and shardings of ``state`` (and ``sums``).

        With ``iterator``, also moves that Grain iterator to the saved position.
        """
        items = {"state": ocp.args.StandardRestore(_abstract(_fields(state)))}
        if sums is not None:
            items["sums"] = ocp.args.StandardRestore(_abstract(sums))
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return _refilled(state, restored.state), restored.sums if sums is not None else None

    def restore_latest(self, state: Any, sums: Any, iterator: Any
                       ) -> tuple[int, Any, Any] | None:
        """The newest usable step as (step, state, sums); None if there are no steps.

        Steps newer than the one restored failed to restore: they are moved
        aside with a warning, so that the resumed run can write them again.
        If no step is usable, nothing is moved and ``CheckpointError`` lists
        every step's reason (e.g. a systematic mismatch is not mistaken for
        damage to every checkpoint).
        """
        reasons = {}
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.restore(step, state, sums, iterator)
            except Exception as e:  # noqa: BLE001  any failure to read makes the step unusable
                reasons[step] = f"{type(e).__name__}: {str(e)[:300]}"
                continue
            for bad, reason in reasons.items():
                moved = self._move_aside(bad)
                print(f"warning: checkpoint {bad} in {self.directory} is unusable ({reason}); "
                      f"moved to {moved}, resuming from step {step}", flush=True)
            return (step, *restored)
        if reasons:
            raise CheckpointError(f"no usable checkpoint in {self.directory}: " + "; ".join(
                f"step {step}: {reason}" for step, reason in reasons.items()))
        return None

    def _move_aside(self, step: int) -> epath.Path:
        """Moves a step directory to ``damaged/STEP-TIME`` so the step can be rewritten."""
        target = self.directory.parent / "damaged" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        if jax.process_index() == 0:
            make_folder(target.parent)
            (self.directory / str(step)).rename(target)
        self.manager.reload()
        return target

    def reached_preemption(self, step: int) -> bool:
        """Whether JAX's distributed preemption notice says to save and stop at ``step``."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        try:
            with self._write_errors():
                self.manager.wait_until_finished()
        finally:
            self.manager.close()


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be restored."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the complete ones are untouched."""


def _fields(state: Any) -> dict:
    """A state's fields (of a dataclass, or a dict's items) as a dict, less those that are None.

    A field of an optional feature (the weights' moving average) is None when
    the feature is off: its runs' checkpoints keep the structure they had
    before the field existed, and older checkpoints restore unchanged.
    """
    items = state.items() if isinstance(state, dict) else (
        (f.name, getattr(state, f.name)) for f in dataclasses.fields(state))
    return {name: value for name, value in items if value is not None}


def _refilled(state: Any, restored: dict) -> Any:
    """``state`` with the restored fields: the inverse of ``_fields``."""
    return {**state, **restored} if isinstance(state, dict) else state.replace(**restored)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


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
