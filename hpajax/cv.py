"""Cross-validation: one ordinary run per fold of a split, then their out-of-fold report.

``python -m hpajax.main cv --config=CFG --workdir=W`` trains fold k of
``config.data.split`` (``tools/split.py --folds=K``) in ``W/fold{k}`` with
``config.data.fold`` = k: the same run, checkpoints, resume and SIGTERM stop
as ``train`` gives. Finished folds are skipped and a partial one resumes, so
the command itself resumes. With ``--fold=k`` it trains that fold only and
writes nowhere else, so K jobs on K hosts fill one ``W`` in parallel.

Once every fold is trained, ``combine`` has each fold's checkpoint predict its
held-out fold and the split's ``test`` part (with the run's TTA) and saves
``W/oof.npz`` (every non-test row once, in store-row order, with its ``fold``)
and ``W/test.npz`` (the folds' mean, and each fold's in ``fold_probs``); the
report (``report.rebuild_cv``) tunes its thresholds on the out-of-fold
predictions, K times the positives of one validation part.

The default checkpoint is each fold's last: the best is chosen on the fold's
own held-out rows, which would make the out-of-fold scores, and the
thresholds tuned on them, optimistic.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from etils import epath

from hpajax import averaging, checkpointing, inference, predictions, report, train
from hpajax import workdir as workdir_lib
from hpajax.data.run_data import RunData, fold_names, open_run_data
from hpajax.data.store import open_store
from hpajax.files import write_json
from hpajax.predictions import Predictions
from hpajax.records import read_records

CHECKPOINTS = ("last", "best")  # which checkpoint of each fold predicts (--checkpoint)


def cv_command(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
               fold: int | None = None, *, checkpoint: str = "last", tta: int | None = None,
               tta_reduce: str | None = None, draw_figures: bool = True,
               min_val_positives: int = report.MIN_VAL_POSITIVES) -> dict:
    """Trains the folds not yet trained (only ``fold`` if given), then, without ``fold``,
    combines them; returns the report's metrics.json ({} after one fold)."""
    if config.data.fold >= 0:
        raise ValueError(f"--config.data.fold={config.data.fold}: cv sets each fold's; "
                         "train one fold with --fold=k")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint={checkpoint!r}: choose {' or '.join(CHECKPOINTS)}")
    parts = open_store(config.data.store).split(config.data.split)
    if len(fold_names(parts)) < 2:
        raise ValueError(f"config.data.split={config.data.split!r} of {config.data.store} has "
                         f"no folds (its parts: {', '.join(sorted(parts))}): make them with "
                         "tools/split.py --folds=K")
    data = open_run_data(fold_config(config, 0).data)
    folds = len(fold_names(data.parts))
    if fold is not None and not 0 <= fold < folds:
        raise ValueError(f"--fold={fold}: split {config.data.split!r} has {folds} folds, "
                         f"0 to {folds - 1}")
    workdir = workdir_lib.prepare(workdir)
    for k in range(folds) if fold is None else (fold,):
        train_fold(config, workdir, k, folds)
    if fold is not None:
        return {}
    return combine(config, workdir, data, checkpoint=checkpoint, tta=tta,
                   tta_reduce=tta_reduce, draw_figures=draw_figures,
                   min_val_positives=min_val_positives)


def fold_config(config: ml_collections.ConfigDict, k: int) -> ml_collections.ConfigDict:
    """``config`` for fold ``k``: ``config.data.fold`` = k."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.data.fold = k
    return out


def fold_dir(workdir: epath.Path, k: int) -> epath.Path:
    return workdir / f"fold{k}"


def train_fold(config: ml_collections.ConfigDict, workdir: epath.Path, k: int,
               folds: int) -> None:
    """Trains fold ``k`` in ``W/fold{k}``, resuming it; skipped if already trained."""
    run_dir, cfg = fold_dir(workdir, k), fold_config(config, k)
    done = _saved_step(run_dir, cfg, "last")
    if done is not None and done >= cfg.total_steps:
        print(f"fold {k} of {folds}: trained ({run_dir}, step {done})")
        return
    print(f"fold {k} of {folds}: training in {run_dir}")
    train.train_and_evaluate(cfg, str(run_dir))


def combine(config: ml_collections.ConfigDict, workdir: epath.Path, data: RunData, *,
            checkpoint: str = "last", tta: int | None = None, tta_reduce: str | None = None,
            draw_figures: bool = True,
            min_val_positives: int = report.MIN_VAL_POSITIVES) -> dict:
    """Writes ``oof.npz``, ``test.npz``, ``cv.json`` and the report from the folds of
    ``data`` (a fold run's); a no-op when they are of the same fold checkpoints, TTA and
    data already."""
    folds = len(fold_names(data.parts))
    steps = [_saved_step(fold_dir(workdir, k), config, checkpoint) for k in range(folds)]
    record = _record(config, data, checkpoint, steps, tta, tta_reduce,
                     [_params_sha256(fold_dir(workdir, k), s) for k, s in enumerate(steps)])
    done = workdir / report.REPORT_DIR / "metrics.json"
    if done.is_file() and _saved_record(workdir) == record:
        print(f"cv: the report of these {folds} folds is there already: {done.parent}/")
        return json.loads(done.read_text())
    scored = [_fold_predictions(workdir, k, step, data, tta, tta_reduce)
              for k, step in enumerate(steps)]
    if jax.process_index() != 0:  # every process predicts; process 0 writes
        return {}
    fingerprint = {"store": data.location, "samples": len(data.store),
                   "ids_sha256": record["cv"]["ids_sha256"], "cv": record["cv"]}
    oof, fold_of = out_of_fold([val for val, _ in scored])
    frequency = oof.labels.mean(0)  # of every non-test row, which the folds train on
    predictions.save(workdir / report.OOF_FILE, oof, split="oof", step=-1,
                     data_fingerprint=fingerprint, class_frequency=frequency,
                     extra={"fold": fold_of})
    if data.test_part is not None:
        tests = [test for _, test in scored]
        predictions.save(workdir / report.CV_TEST_FILE, averaging.weighted_mean(tests),
                         split="test", step=-1, data_fingerprint=fingerprint,
                         class_frequency=frequency,
                         extra={"fold_probs": np.stack([t.probs for t in tests])})
    else:
        (workdir / report.CV_TEST_FILE).unlink(missing_ok=True)
    write_json(workdir / report.CV_FILE, record)
    return report.rebuild_cv(workdir, draw_figures=draw_figures,
                             min_val_positives=min_val_positives)


def out_of_fold(held_out: list[Predictions]) -> tuple[Predictions, np.ndarray]:
    """The folds' held-out predictions as one set in store-row order, and each row's fold.

    ValueError if a row is predicted twice: folds must be disjoint.
    """
    rows = np.concatenate([p.rows for p in held_out])
    order = np.argsort(rows, kind="stable")
    if len(rows) and (np.diff(rows[order]) == 0).any():
        raise ValueError("the folds overlap: a store row is held out by two folds")
    ids = [i for p in held_out for i in p.ids]
    count = sum(len(p.rows) for p in held_out)
    loss = sum(p.loss * len(p.rows) for p in held_out) / max(count, 1)
    fold_of = np.concatenate([np.full(len(p.rows), k, np.int64) for k, p in enumerate(held_out)])
    return Predictions(ids=tuple(ids[i] for i in order), rows=rows[order],
                       labels=np.concatenate([p.labels for p in held_out])[order],
                       probs=np.concatenate([p.probs for p in held_out])[order],
                       loss=float(loss)), fold_of[order]


def _saved_step(run_dir: epath.Path, config: ml_collections.ConfigDict,
                which: str) -> int | None:
    """A fold run's last or best checkpoint step; None if it has none yet."""
    if not (run_dir / "checkpoints").is_dir():
        return None
    ckpt = checkpointing.Checkpointer.of_run(run_dir, config)
    try:
        return ckpt.latest_step() if which == "last" else ckpt.default_step()
    finally:
        ckpt.close()


def _fold_predictions(workdir: epath.Path, k: int, step: int | None, data: RunData,
                      tta: int | None, tta_reduce: str | None
                      ) -> tuple[Predictions, Predictions | None]:
    """Fold ``k``'s checkpoint ``step`` on its held-out fold and on the test part."""
    run_dir = fold_dir(workdir, k)
    if step is None:
        raise FileNotFoundError(f"fold {k} has no checkpoint in {run_dir}/checkpoints: train "
                                f"it first (cv --fold={k})")
    run = inference.restore(run_dir, step, tta=tta, tta_reduce=tta_reduce)
    print(f"fold {k}: predicting fold{k} and the test part with step {step} of {run_dir}")
    held_out = inference.predict(run.steps, run.state, data.store, data.rows(f"fold{k}"))
    test = (None if data.test_part is None else
            inference.predict(run.steps, run.state, data.store, data.rows(data.test_part)))
    return held_out, test


def _params_sha256(run_dir: epath.Path, step: int | None) -> str | None:
    """The weights' hash the run logged when it saved ``step`` (None if not logged)."""
    logged = [r["params_sha256"] for r in read_records(run_dir / "metrics.jsonl")
              if r.get("split") == "checkpoint" and r["step"] == step]
    return logged[-1] if logged else None


def _record(config: ml_collections.ConfigDict, data: RunData, checkpoint: str,
            steps: list[int | None], tta: int | None, tta_reduce: str | None,
            shas: list[str | None]) -> dict:
    """cv.json: what the combined predictions come from."""
    return {"data": {"store": data.location, "split": data.split},
            "cv": {"folds": len(steps), "checkpoint": checkpoint, "steps": steps,
                   "params_sha256": shas, "tta": tta, "tta_reduce": tta_reduce,
                   "ids_sha256": data.fingerprint()["ids_sha256"]},
            "config": json.loads(config.to_json_best_effort())}


def _saved_record(workdir: epath.Path) -> dict | None:
    path = workdir / report.CV_FILE
    return json.loads(path.read_text()) if path.is_file() else None
