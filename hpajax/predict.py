"""Inference from a run's checkpoint: the ``evaluate`` and ``predict`` commands.

``evaluate_run`` predicts the validation and test splits of the run's store
(and the training split, for the seed's way of tuning thresholds) and hands
them to ``report.write_report``. ``predict_to_dir`` predicts a converted store
or a folder of raw Kaggle PNG quads (converted on the fly) and writes
probabilities and a Kaggle submission.

Checkpoints saved at an evaluation hold exact BatchNorm statistics (the
trainer recalibrates before it evaluates); a step saved between evaluations
is recalibrated on load, which needs the run's training store.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib
from collections.abc import Iterable

import ml_collections
import numpy as np

from hpajax import checkpointing, classes, logs, report, train
from hpajax import workdir as workdir_lib
from hpajax.data import convert, open_store, pipeline
from hpajax.data import labels as labelslib
from hpajax.data.store import METADATA, Store
from hpajax.files import write_atomic


def load_run(workdir: str | os.PathLike, step: int | None = None
             ) -> tuple[train.Setup, train.TrainState, int]:
    """The run's setup and the state of ``step`` (default: the best checkpoint)."""
    config = workdir_lib.load_config(workdir)
    ckpt = checkpointing.Checkpointer.of_run(workdir, config)
    saved = ckpt.manager.all_steps()
    if not saved:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first")
    step = (ckpt.best_step() or ckpt.latest_step()) if step is None else step
    if step not in saved:
        raise ValueError(f"--step={step}: no such checkpoint in {workdir}/checkpoints "
                         f"(saved: {', '.join(map(str, sorted(saved)))})")
    evaluated = ckpt.evaluated(step)  # saved right after a BatchNorm recalibration
    if evaluated:
        setup = train.build_setup(config, train.make_mesh(config.eval_batch_size),
                                  train.input_shape(config))
    else:
        setup = train.make_setup(config)
    state, _ = ckpt.restore(step, train.init_state(setup))
    ckpt.close()
    if not evaluated:
        state = train.recalibrate_batch_stats(setup, state)
    return setup, state, step


def evaluate_run(workdir: str | os.PathLike, step: int | None = None,
                 seed_thresholds: bool = True, draw_figures: bool = True) -> dict:
    """Writes ``workdir/report/`` for a checkpoint; returns its metrics.json content."""
    workdir = pathlib.Path(workdir)
    setup, state, step = load_run(workdir, step)
    cfg = setup.config
    store = open_store(cfg.data.store)
    if store.labels is None:
        raise ValueError(f"{store.path} has no labels: cannot evaluate on it")
    parts = store.split(cfg.data.split)

    def scores(part: str) -> report.Scores:
        out = train.predict(setup, state, store.path, parts[part])
        return report.Scores(part, out.labels, out.probs)

    test_rows = parts[cfg.data.test_part]
    test_source = pipeline.StoreSource(store.path, test_rows)  # all four channels, for display
    print(f"evaluating step {step} of {workdir} on {store.path}")
    return report.write_report(
        workdir / "report", scores(cfg.data.eval_part), scores(cfg.data.test_part),
        train=scores(cfg.data.train_part) if seed_thresholds else None, step=step,
        records=logs.read_records(workdir / "metrics.jsonl"),
        images_of=lambda positions: test_source.read_batch(positions)["image"],
        test_ids=[store.ids[r] for r in test_rows], draw_figures=draw_figures)


def predict_to_dir(workdir: str | os.PathLike, input_path: str | os.PathLike,
                   output_dir: str | os.PathLike, *, step: int | None = None,
                   ids_csv: str | os.PathLike | None = None, at_least_one: bool = False,
                   workers: int = 1) -> pathlib.Path:
    """Probabilities and a Kaggle submission for a store or a folder of PNG quads.

    ``ids_csv`` picks the images and their order in both cases.
    """
    out = pathlib.Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup, state, step = load_run(workdir, step)
    store_path = as_store(input_path, out / "store", setup.config, ids_csv, workers)
    store = open_store(store_path)
    rows = np.arange(len(store)) if ids_csv is None else rows_of_ids(store, ids_csv)
    ids = [store.ids[r] for r in rows]
    probs = train.predict(setup, state, store_path, rows).probs
    thresholds = _thresholds(pathlib.Path(workdir) / "report")
    np.save(out / "probabilities.npy", probs)
    write_atomic(out / "probabilities.csv", probabilities_csv(ids, probs))
    write_atomic(out / "submission.csv", submission_csv(ids, probs, thresholds, at_least_one))
    print(f"predicted {len(ids)} images with step {step}: {out}/probabilities.npy, "
          f"probabilities.csv, submission.csv")
    return out


def as_store(input_path: str | os.PathLike, converted: pathlib.Path,
             config: ml_collections.ConfigDict, ids_csv: str | os.PathLike | None,
             workers: int) -> pathlib.Path:
    """``input_path`` if it is a store, else its PNG quads converted into ``converted``."""
    path = pathlib.Path(input_path)
    if (path / METADATA).is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"--input={path}: neither a store nor a folder of PNG quads")
    print(f"converting the PNG quads in {path} into {converted}")
    convert.convert(convert.Options(
        format="kaggle", input_dir=path, output_dir=converted,
        labels_csv=None if ids_csv is None else pathlib.Path(ids_csv),
        image_size=config.data.input_size, workers=workers,
        command="python -m hpajax.main predict"))
    return converted


def rows_of_ids(store: Store, ids_csv: str | os.PathLike) -> np.ndarray:
    """The store rows of the Ids in ``ids_csv``, in the CSV's order (``--ids_csv``).

    The CSV gets the label-file checks; a bad row or an Id the store lacks
    is a ValueError naming the CSV line, rather than a silently short output.
    """
    table, problems = labelslib.read_labels_csv(ids_csv)
    flag = f"--ids_csv={ids_csv}"
    if problems:
        raise ValueError(f"{flag}: {len(problems)} bad row(s): " + "; ".join(
            f"{p.where}: {p.why}" for p in problems[:5]))
    if not table.ids:
        raise ValueError(f"{flag}: no Ids")
    row_of = {sample_id: row for row, sample_id in enumerate(store.ids)}
    missing = [k for k, sample_id in enumerate(table.ids) if sample_id not in row_of]
    if missing:
        k = missing[0]
        raise ValueError(f"{flag}: {table.where[k]}: Id {table.ids[k]!r} is not in the store "
                         f"{store.path} ({len(missing)} of its {len(table.ids)} Ids are missing)")
    return np.array([row_of[sample_id] for sample_id in table.ids], np.int64)


def _thresholds(report_dir: pathlib.Path) -> np.ndarray:
    if (report_dir / "thresholds.json").is_file():
        print(f"thresholds: tuned on the validation split ({report_dir}/thresholds.json)")
        return report.load_thresholds(report_dir)
    print(f"thresholds: 0.5 for every class; run `evaluate` first to tune them "
          f"(no {report_dir}/thresholds.json)")
    return np.full(classes.NUM_CLASSES, 0.5)


def _csv_text(header: list[str], rows: Iterable[list[str]]) -> str:
    """CSV text through the ``csv`` module, which quotes an Id holding ',' or '"'."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def probabilities_csv(ids: list[str], probs: np.ndarray) -> str:
    """``Id`` and one column per class name, 6 decimals."""
    return _csv_text(["Id", *classes.CLASS_NAMES],
                     ([i, *(f"{p:.6f}" for p in row)] for i, row in zip(ids, probs)))


def submission_csv(ids: list[str], probs: np.ndarray, thresholds: np.ndarray,
                   at_least_one: bool = False) -> str:
    """Kaggle's ``Id,Predicted``: space-separated class numbers above their thresholds.

    With ``at_least_one``, an image with no class above threshold gets its
    most probable class, as most Kaggle teams submitted.
    """
    pred = probs > thresholds
    if at_least_one:
        empty = ~pred.any(1)
        pred[empty, probs[empty].argmax(1)] = True
    return _csv_text(["Id", "Predicted"], ([i, " ".join(map(str, np.flatnonzero(row)))]
                                           for i, row in zip(ids, pred)))

