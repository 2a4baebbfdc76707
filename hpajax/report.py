"""The report a user reads after training: tuned thresholds, metric tables, figures.

``write_report`` takes the ``Predictions`` of the validation and test splits
(NumPy only, no JAX), tunes per-class thresholds on the validation split and
reports on the test split, so the thresholds never see the data they are
scored on. For comparison it also reports the seed paper's way (thresholds
tuned on the training split) and the optimistic bound of thresholds tuned on
the test split itself.

``rebuild`` writes a run's whole report from the predictions ``evaluate``
saved in ``WORKDIR/report/`` (see ``hpajax.predictions``); ``evaluate`` itself
goes through it, so a report rebuilt later on a laptop, without JAX, is the
one ``evaluate`` wrote: ``python -m hpajax.report WORKDIR [--nofigures]``.

Files written to the report directory:

- ``metrics.json``: micro/macro/weighted/samples F1 and macro AUC of each
  split at threshold 0.5 and at each set of tuned thresholds;
- ``thresholds.json``: the tuned thresholds (used by ``predict``);
- ``per_class.csv`` and ``per_class.md``: the seed's Tables 5 and 7 for the
  test split at the validation-tuned thresholds;
- PNG figures, when matplotlib is installed: ``roc.png`` (Figure 9),
  ``training_curves.png`` (Figure 5), ``f1_per_class.png``, and
  ``best.png`` / ``worst.png`` montages of test samples (Figures 10-11).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Callable, Sequence

import numpy as np
from absl import app, flags

from hpajax import classes, evaluate, figures, predictions
from hpajax.files import write_atomic, write_json
from hpajax.predictions import Predictions
from hpajax.records import read_records

DECISION_RULE = "class predicted iff probability > threshold"
REPORT_DIR = "report"  # the report folder of a workdir
# The predictions files a report is built from, by role; "train" is optional.
ROLES = ("val", "test", "train")
# Every figure a report may hold: removed before a report is written, so that
# none is left over from an earlier one (another step, or figures now skipped).
FIGURES = ("roc.png", "f1_per_class.png", "training_curves.png", "best.png", "worst.png")


def summary(report: dict) -> dict[str, float]:
    """The headline numbers of a ``classification_report``."""
    out = {f"{avg}_f1": report[avg]["f1"] for avg in ("micro", "macro", "weighted", "samples")}
    out["macro_auc"] = report["macro"].get("auc", float("nan"))
    return out


def tuned_thresholds(val: Predictions, test: Predictions,
                     train: Predictions | None) -> dict[str, np.ndarray]:
    """Threshold sets by where they were tuned: val (ours), train (the seed's), test (bound)."""
    sets = {"tuned_on_val": evaluate.search_thresholds(val.labels, val.probs)}
    if train is not None:
        sets["tuned_on_train"] = evaluate.search_thresholds(train.labels, train.probs)
    sets["tuned_on_test"] = evaluate.search_thresholds(test.labels, test.probs)
    return sets


def metrics_table(val: Predictions, test: Predictions, sets: dict[str, np.ndarray],
                  names: tuple[str, str] = ("val", "test")) -> dict:
    """Summaries of val and test (keyed by ``names``) at 0.5 and at each threshold set."""
    half = np.full(classes.NUM_CLASSES, 0.5)
    out = {}
    for name, split, is_test in ((names[0], val, False), (names[1], test, True)):
        rows = {"threshold_0.5": summary(evaluate.classification_report(
            split.labels, split.probs, half))}
        for set_name, thresholds in sets.items():
            if set_name == "tuned_on_test" and not is_test:
                continue
            rows[set_name] = summary(evaluate.classification_report(split.labels, split.probs,
                                                                    thresholds))
        out[name] = {"samples": len(split.labels),
                     "no_skill_macro_f1": evaluate.no_skill_macro_f1(split.labels), **rows}
    return out


def write_report(out_dir: str | os.PathLike, val: Predictions, test: Predictions, *,
                 train: Predictions | None = None, names: tuple[str, str] = ("val", "test"),
                 step: int | None = None, records: Sequence[dict] | None = None,
                 images_of: Callable[[np.ndarray], np.ndarray] | None = None,
                 montage_size: int = 6, draw_figures: bool = True) -> dict:
    """Writes the report files (and figures, if asked and matplotlib is there); returns
    metrics.json.

    ``names`` are the split names of ``val`` and ``test`` (metrics.json's
    keys); ``records`` are the run's ``metrics.jsonl`` entries (for the
    training curves); ``images_of(rows)`` returns the uint8 images of those
    store rows (for the montages of ``test``).
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = tuned_thresholds(val, test, train)
    metrics = {"step": step, "decision_rule": DECISION_RULE,
               **metrics_table(val, test, sets, names)}
    write_json(out / "metrics.json", _finite(metrics))
    write_json(out / "thresholds.json", _thresholds_file(sets))
    report = evaluate.classification_report(test.labels, test.probs, sets["tuned_on_val"])
    write_atomic(out / "per_class.csv", evaluate.to_csv(report))
    write_atomic(out / "per_class.md", evaluate.to_markdown(report))
    print(f"report: {out}/ (metrics.json, thresholds.json, per_class.csv, per_class.md)")
    for name in FIGURES:
        (out / name).unlink(missing_ok=True)
    if not draw_figures:
        return metrics
    if not figures.plotting_available():
        print(f"report: no figures written; {figures.INSTALL_HINT}")
        return metrics
    half = evaluate.classification_report(test.labels, test.probs,
                                          np.full(classes.NUM_CLASSES, 0.5))
    written = [
        figures.roc_figure(out / "roc.png", roc_curves(test), classes.CLASS_NAMES),
        figures.f1_bars_figure(out / "f1_per_class.png", classes.CLASS_NAMES,
                               [c["f1"] for c in half["per_class"]],
                               [c["f1"] for c in report["per_class"]],
                               [c["support"] for c in report["per_class"]]),
    ]
    if records:
        written.append(figures.training_curves_figure(out / "training_curves.png", records))
    if images_of is not None:
        written += _montages(out, test, names[1], sets["tuned_on_val"], images_of, montage_size)
    print("report: figures " + ", ".join(p.name for p in written))
    return metrics


def roc_curves(split: Predictions) -> list[tuple[np.ndarray, np.ndarray, float] | None]:
    """Per class (fpr, tpr, auc), or None where a class has no positives or no negatives."""
    aucs = evaluate.roc_auc(split.labels, split.probs)
    curves = []
    for c, auc in enumerate(aucs):
        if np.isnan(auc):
            curves.append(None)
            continue
        fpr, tpr, _ = evaluate.roc_curve(split.labels[:, c], split.probs[:, c])
        curves.append((fpr, tpr, float(auc)))
    return curves


def montage_rows(y_true: np.ndarray, y_prob: np.ndarray, thresholds: np.ndarray,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the best and of the worst predicted samples, ``size`` each.

    Samples are ranked by the F1 of their predicted class set against the
    true one (1 for an exact match), ties broken by the smallest margin to
    any threshold (confident first for the best, doubtful first for the
    worst). The best are those with F1 > 0, the worst those with F1 < 1.
    """
    pred = y_prob > thresholds
    true = np.asarray(y_true, bool)
    overlap = (pred & true).sum(1)
    total = pred.sum(1) + true.sum(1)
    f1 = np.divide(2.0 * overlap, total, out=np.ones(len(true)), where=total > 0)
    margin = np.abs(y_prob - thresholds).min(1)
    best = np.lexsort((-margin, -f1))
    worst = np.lexsort((margin, f1))
    return best[f1[best] > 0][:size], worst[f1[worst] < 1][:size]


def _montages(out: pathlib.Path, test: Predictions, name: str, thresholds: np.ndarray,
              images_of: Callable[[np.ndarray], np.ndarray], size: int) -> list[pathlib.Path]:
    written = []
    for kind, positions in zip(("best", "worst"),
                               montage_rows(test.labels, test.probs, thresholds, size)):
        if not len(positions):
            continue
        written.append(figures.prediction_montage(
            out / f"{kind}.png", images_of(np.asarray(test.rows)[positions]),
            test.probs[positions], test.labels[positions], thresholds,
            [test.ids[p] for p in positions], f"{kind} predictions on the {name} split "
            "(by the F1 of each sample's predicted classes)"))
    return written


def _thresholds_file(sets: dict[str, np.ndarray]) -> dict:
    return {"decision_rule": DECISION_RULE, "grid": "0.00 to 1.00, step 0.01",
            "use": "tuned_on_val", "class_names": list(classes.CLASS_NAMES),
            **{name: [float(t) for t in values] for name, values in sets.items()}}


def _finite(obj):
    """NaN (e.g. an undefined AUC) as null, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def load_thresholds(report_dir: str | os.PathLike) -> np.ndarray:
    """The validation-tuned thresholds ``write_report`` saved."""
    path = pathlib.Path(report_dir) / "thresholds.json"
    data = json.loads(path.read_text())
    values = np.asarray(data[data["use"]], np.float64)
    if values.shape != (classes.NUM_CLASSES,):
        raise ValueError(f"{path}: expected {classes.NUM_CLASSES} thresholds, got {values.shape}")
    return values


def rebuild(workdir: str | os.PathLike, *, draw_figures: bool = True) -> dict:
    """Writes ``WORKDIR/report/`` from the predictions saved there; returns metrics.json.

    Reads ``report/predictions_{val,test}.npz`` (and ``predictions_train.npz``
    if saved, for the seed's thresholds), ``metrics.jsonl`` for the training
    curves and, for the montages, the test images from the run's store; no
    JAX. Without the store the report is written without montages.
    """
    workdir = pathlib.Path(workdir)
    out = workdir / REPORT_DIR
    saved = load_predictions(workdir)
    (val, val_info), (test, test_info) = saved["val"], saved["test"]
    print(f"report: rebuilding {out}/ from the predictions of step {test_info.step}")
    records = read_records(workdir / "metrics.jsonl")
    images_of = (_store_images(workdir, test)
                 if draw_figures and figures.plotting_available() else None)
    return write_report(out, val, test, train=saved["train"][0] if "train" in saved else None,
                        names=(val_info.split, test_info.split), step=test_info.step,
                        records=records, images_of=images_of, draw_figures=draw_figures)


def load_predictions(workdir: str | os.PathLike
                     ) -> dict[str, tuple[Predictions, predictions.Info]]:
    """The predictions files of ``WORKDIR/report/`` by role, checked to be of one checkpoint
    and one training data set (FileNotFoundError if val's or test's is missing)."""
    out = pathlib.Path(workdir) / REPORT_DIR
    paths = {role: out / predictions.file_name(role) for role in ROLES}
    missing = [paths[role].name for role in ("val", "test") if not paths[role].is_file()]
    if missing:
        raise FileNotFoundError(
            f"no {' or '.join(missing)} in {out}: run `python -m hpajax.main evaluate "
            f"--workdir={workdir}` first")
    saved = {role: predictions.load(path) for role, path in paths.items() if path.is_file()}
    test_info = saved["test"][1]
    for role, (_, info) in saved.items():
        if (info.step, info.data_fingerprint) != (test_info.step, test_info.data_fingerprint):
            raise ValueError(
                f"{paths[role]} (step {info.step}) and {paths['test']} (step "
                f"{test_info.step}) come from different checkpoints or data: run "
                f"`python -m hpajax.main evaluate --workdir={workdir}` again")
    return saved


def _store_images(workdir: pathlib.Path,
                  test: Predictions) -> Callable[[np.ndarray], np.ndarray] | None:
    """``images_of`` for the montages, reading the run's store; None, saying why, if the
    store cannot be opened or no longer holds the saved Ids at the saved rows."""
    try:
        location = json.loads((workdir / "config.json").read_text())["data"]["store"]
        from hpajax.data.store import open_store  # TensorStore: optional for a report
        store = open_store(location)
    except (ImportError, OSError, ValueError, KeyError, TypeError) as e:
        print(f"report: no montages: cannot open the run's store ({type(e).__name__}: {e})")
        return None
    rows = np.asarray(test.rows)
    if (rows.size and not 0 <= rows.min() <= rows.max() < len(store)) or \
            [store.ids[r] for r in rows] != list(test.ids):
        print(f"report: no montages: the store {location} changed since the evaluation "
              "(its Ids at the test rows are not the saved ones)")
        return None
    return lambda image_rows: store.images[np.asarray(image_rows)].read().result()


def main(argv: list[str]) -> None:
    """``python -m hpajax.report WORKDIR [--nofigures]``."""
    if len(argv) != 2:
        raise app.UsageError("usage: python -m hpajax.report WORKDIR [--nofigures]")
    try:
        rebuild(argv[1], draw_figures=flags.FLAGS.figures)
    except (ValueError, OSError) as e:  # missing or bad files: say what, no traceback
        sys.exit(f"report: error: {e}")


if __name__ == "__main__":
    # Defined only when run: hpajax.main and experiments/sweep.py import this module
    # and have flags of their own (sweep's is also called --figures).
    flags.DEFINE_bool("figures", True, "Draw the figures (needs matplotlib).")
    app.run(main)
