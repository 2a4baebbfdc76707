"""The ``evaluate`` and ``predict`` commands: a trained run's checkpoint put to use.

``evaluate_command`` predicts the validation and test parts of the run's
split (and the training part, for the seed's way of tuning thresholds),
saves the predictions in ``report/predictions_{val,test,train}.npz`` and
builds the report from those files, as ``python -m hpajax.report`` does
without JAX. ``predict_command`` predicts a converted store or a folder of
raw Kaggle PNG quads (converted on the fly) and writes probabilities and a
Kaggle submission.
"""

from __future__ import annotations

import io
import json
import os
import pathlib

import jax
import ml_collections
import numpy as np
from etils import epath

from hpajax import averaging, classes, ensemble, exported, inference, predictions, report
from hpajax import submission
from hpajax import workdir as workdir_lib
from hpajax.data import convert, open_store, pipeline
from hpajax.data import labels as labelslib
from hpajax.data.run_data import open_run_data
from hpajax.data.store import METADATA, Store
from hpajax.files import is_remote, location, make_folder, write_atomic
from hpajax.predictions import Predictions


def evaluate_command(workdir: str | os.PathLike, step: int | None = None,
                     seed_thresholds: bool = True, draw_figures: bool = True, *,
                     tta: int | None = None, tta_reduce: str | None = None,
                     min_val_positives: int = report.MIN_VAL_POSITIVES) -> dict:
    """Writes ``workdir/report/`` for a checkpoint (default: the best); returns metrics.json.

    ``tta`` and ``tta_reduce`` override the run's ``config.tta`` and ``config.tta_reduce``.
    """
    config = workdir_lib.load_config(workdir)
    data = open_run_data(config.data)  # opened once: for recalibration and prediction
    if data.store.labels is None:
        raise ValueError(f"{data.location} has no labels: cannot evaluate on it")
    run = inference.restore(workdir, step, data, tta=tta, tta_reduce=tta_reduce)
    parts = {"val": data.eval_part, "test": data.test_part}
    if data.test_part is None:  # a fold run on folds without a test part
        del parts["test"]
    if seed_thresholds:
        parts["train"] = data.train_part
    print(f"evaluating step {run.step} of {workdir} on {data.location}")
    saved = {role: inference.predict(run.steps, run.state, data.store, data.rows(part))
             for role, part in parts.items()}
    if jax.process_index() != 0:  # every process predicts; process 0 writes
        return {}
    out = epath.Path(workdir) / report.REPORT_DIR
    make_folder(out)
    for role in set(report.ROLES) - set(saved):  # of an earlier evaluate
        (out / predictions.file_name(role)).unlink(missing_ok=True)
    frequency = data.train_part_frequency()
    for role, scored in saved.items():
        predictions.save(out / predictions.file_name(role), scored, split=parts[role],
                         step=run.step, data_fingerprint=data.fingerprint(),
                         class_frequency=frequency)
    return report.rebuild(workdir, draw_figures=draw_figures,
                          min_val_positives=min_val_positives)


def predict_command(workdir: str | os.PathLike, input_path: str | os.PathLike,
                    output_dir: str | os.PathLike, *, step: int | None = None,
                    ids_csv: str | os.PathLike | None = None, at_least_one: bool = False,
                    workers: int = 1, thresholds: str = "guarded", tta: int | None = None,
                    tta_reduce: str | None = None, engine: str = "jax") -> epath.Path:
    """Probabilities and a Kaggle submission for a store or a folder of PNG quads.

    ``workdir`` is a run, a cross-validation (the mean of its folds' models) or an
    ensemble (its members' weighted mean); each model predicts at its own input
    size, a PNG folder being converted once per image size. ``ids_csv`` picks the
    images and their order in both cases; ``thresholds`` says which of the report's
    threshold sets decides the submission's classes. ``engine`` "stablehlo" or
    "onnx" runs ``WORKDIR/export``'s file instead of the checkpoints, with the
    thresholds its manifest holds; the step and the views were fixed at export.
    """
    if engine not in exported.ENGINES:
        raise ValueError(f"--engine={engine}: choose one of {', '.join(exported.ENGINES)}")
    if engine != "jax":
        for flag, value in (("--step", step), ("--tta", tta), ("--tta_reduce", tta_reduce)):
            if value is not None:
                raise ValueError(f"{flag}: fixed at export, not a choice with --engine={engine}")
    out = location(output_dir, "--output_dir")
    input_path = location(input_path, "--input")
    make_folder(out)
    if engine == "jax":
        scored, used = _predict_checkpoints(workdir, input_path, out, step, ids_csv, workers,
                                            tta, tta_reduce)
        where = epath.Path(workdir) / report.REPORT_DIR / "thresholds.json"
        saved = json.loads(where.read_text()) if where.is_file() else None
        missing = f"run `evaluate` first to tune them (no {where})"
    else:
        scored, used, manifest = _predict_exported(workdir, engine, input_path, out, ids_csv,
                                                   workers)
        where = epath.Path(workdir) / exported.EXPORT_DIR / exported.MANIFEST
        saved = manifest["thresholds"]
        missing = f"the run had no report when exported ({where} has none)"
    chosen = _thresholds(where, saved, scored.probs, thresholds, missing)
    buffer = io.BytesIO()
    np.save(buffer, scored.probs)
    write_atomic(out / "probabilities.npy", buffer.getvalue())
    write_atomic(out / "probabilities.csv", submission.probabilities_csv(scored.ids, scored.probs))
    write_atomic(out / "submission.csv", submission.submission_csv(
        scored.ids, scored.probs, chosen, at_least_one))
    print(f"predicted {len(scored.ids)} images with {used}: "
          f"{out}/probabilities.npy, probabilities.csv, submission.csv")
    return out


def _predict_checkpoints(workdir: str | os.PathLike, input_path: epath.Path,
                         out: epath.Path, step: int | None,
                         ids_csv: str | os.PathLike | None, workers: int, tta: int | None,
                         tta_reduce: str | None) -> tuple[Predictions, str]:
    """The weighted mean of the probabilities of ``workdir``'s checkpoints, and which."""
    found = ensemble.models(workdir, step)
    configs = [workdir_lib.load_config(run_dir) for _, run_dir, _ in found]
    sizes = {stored_size(c) for c in configs}
    stores, scored, used = {}, [], []
    for (_, run_dir, run_step), config in zip(found, configs):
        size = stored_size(config)
        if size not in stores:
            folder = out / ("store" if len(sizes) == 1 else f"store_{size}px")
            stores[size] = open_store(as_store(input_path, folder, size, ids_csv, workers))
        store = stores[size]
        run = inference.restore(run_dir, run_step, tta=tta, tta_reduce=tta_reduce)
        scored.append(inference.predict(run.steps, run.state, store, _rows(store, ids_csv)))
        used.append(f"step {run.step}" + ("" if len(found) == 1 else f" of {run_dir}"))
    return averaging.weighted_mean(scored, [weight for weight, _, _ in found]), ", ".join(used)


EXPORTED_BATCH = 32  # images per call of an exported model


def _predict_exported(workdir: str | os.PathLike, engine: str, input_path: epath.Path,
                      out: epath.Path, ids_csv: str | os.PathLike | None,
                      workers: int) -> tuple[Predictions, str, dict]:
    """The probabilities of ``workdir``'s exported file for ``engine``, the file, the
    manifest."""
    folder = epath.Path(workdir) / exported.EXPORT_DIR
    manifest, fn = exported.load(folder, engine)
    size = manifest["input"]["image_size"]
    store = open_store(as_store(input_path, out / "store", size, ids_csv, workers))
    want = (size, size, classes.NUM_CHANNELS)
    if tuple(store.images.shape[1:]) != want:
        raise ValueError(f"--input={input_path}: images of {tuple(store.images.shape[1:])}, "
                         f"but the exported model takes {want} (its run's store); convert "
                         f"the PNGs at --image_size={size}, or pass their folder")
    rows = _rows(store, ids_csv)
    probs = [fn(batch["image"])[batch["mask"]]
             for batch in pipeline.eval_dataset(store, rows, batch_size=EXPORTED_BATCH)]
    scored = Predictions(ids=tuple(store.ids[r] for r in rows), rows=rows,
                         labels=np.zeros((len(rows), classes.NUM_CLASSES), np.uint8),
                         probs=np.concatenate(probs), loss=float("nan"))
    return scored, str(folder / exported.FILES[engine]), manifest


def _rows(store: Store, ids_csv: str | os.PathLike | None) -> np.ndarray:
    """The store rows to predict: ``--ids_csv``'s, in its order, else all."""
    return np.arange(len(store)) if ids_csv is None else rows_of_ids(store, ids_csv)


def stored_size(config: ml_collections.ConfigDict) -> int:
    """The image side a run's PNG inputs are converted at: its store's."""
    return config.data.image_size or config.data.input_size


def as_store(input_path: str | os.PathLike, converted: epath.Path, image_size: int,
             ids_csv: str | os.PathLike | None, workers: int) -> epath.Path:
    """``input_path`` if it is a store, else its PNG quads converted into ``converted``."""
    path = epath.Path(input_path)
    if (path / METADATA).is_file():
        return path
    if is_remote(path) or not path.is_dir():
        raise FileNotFoundError(f"--input={path}: neither a store nor a folder of PNG quads")
    print(f"converting the PNG quads in {path} into {converted}")
    convert.convert(convert.Options(
        format="kaggle", input_dir=pathlib.Path(path), output_dir=converted,
        labels_csv=None if ids_csv is None else pathlib.Path(ids_csv),
        image_size=image_size, workers=workers,
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


def _thresholds(where: epath.Path, saved: dict | None, probs: np.ndarray, how: str,
                missing: str) -> np.ndarray:
    """The ``--thresholds`` set for these probabilities from ``saved`` (thresholds.json's
    content, as read from ``where``); 0.5 for every class where none were saved, which
    ``missing`` explains."""
    if how != "0.5" and saved is None:
        print(f"thresholds: 0.5 for every class; {missing}")
        how = "0.5"
    else:
        print(f"thresholds: {how}" + ("" if how == "0.5" else f" ({where})"))
    return report.saved_thresholds(where, saved, probs, how)
