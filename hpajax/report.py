"""The report a user reads after training: tuned thresholds, metric tables, figures.

``write_report`` takes labels and probabilities (NumPy only, no JAX), tunes
per-class thresholds on the validation split and reports on the test split,
so the thresholds never see the data they are scored on. For comparison it
also reports the seed paper's way (thresholds tuned on the training split)
and the optimistic bound of thresholds tuned on the test split itself.

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

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from hpajax import classes, evaluate, figures
from hpajax.files import write_atomic, write_json

DECISION_RULE = "class predicted iff probability > threshold"


@dataclasses.dataclass(frozen=True)
class Scores:
    """Labels and predicted probabilities of one split."""

    name: str
    y_true: np.ndarray  # 0/1 [N, 28]
    y_prob: np.ndarray  # [N, 28] in [0, 1]


def summary(report: dict) -> dict[str, float]:
    """The headline numbers of a ``classification_report``."""
    out = {f"{avg}_f1": report[avg]["f1"] for avg in ("micro", "macro", "weighted", "samples")}
    out["macro_auc"] = report["macro"].get("auc", float("nan"))
    return out


def tuned_thresholds(val: Scores, test: Scores, train: Scores | None) -> dict[str, np.ndarray]:
    """Threshold sets by where they were tuned: val (ours), train (the seed's), test (bound)."""
    sets = {"tuned_on_val": evaluate.search_thresholds(val.y_true, val.y_prob)}
    if train is not None:
        sets["tuned_on_train"] = evaluate.search_thresholds(train.y_true, train.y_prob)
    sets["tuned_on_test"] = evaluate.search_thresholds(test.y_true, test.y_prob)
    return sets


def metrics_table(val: Scores, test: Scores, sets: dict[str, np.ndarray]) -> dict:
    """Summaries of val and test at 0.5 and at each threshold set."""
    half = np.full(classes.NUM_CLASSES, 0.5)
    out = {}
    for split in (val, test):
        rows = {"threshold_0.5": summary(evaluate.classification_report(
            split.y_true, split.y_prob, half))}
        for name, thresholds in sets.items():
            if split is val and name == "tuned_on_test":
                continue
            rows[name] = summary(evaluate.classification_report(split.y_true, split.y_prob,
                                                                thresholds))
        out[split.name] = {"samples": len(split.y_true),
                           "no_skill_macro_f1": evaluate.no_skill_macro_f1(split.y_true), **rows}
    return out


def write_report(out_dir: str | os.PathLike, val: Scores, test: Scores, *,
                 train: Scores | None = None, step: int | None = None,
                 records: Sequence[dict] | None = None,
                 images_of: Callable[[np.ndarray], np.ndarray] | None = None,
                 test_ids: Sequence[str] | None = None, montage_size: int = 6,
                 draw_figures: bool = True) -> dict:
    """Writes the report files (and figures, if asked and matplotlib is there); returns
    metrics.json.

    ``records`` are the run's ``metrics.jsonl`` entries (for the training
    curves); ``images_of(positions)`` returns the uint8 images of those test
    rows (for the montages), ``test_ids`` their Ids.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = tuned_thresholds(val, test, train)
    metrics = {"step": step, "decision_rule": DECISION_RULE,
               **metrics_table(val, test, sets)}
    write_json(out / "metrics.json", _finite(metrics))
    write_json(out / "thresholds.json", _thresholds_file(sets))
    report = evaluate.classification_report(test.y_true, test.y_prob, sets["tuned_on_val"])
    write_atomic(out / "per_class.csv", evaluate.to_csv(report))
    write_atomic(out / "per_class.md", evaluate.to_markdown(report))
    print(f"report: {out}/ (metrics.json, thresholds.json, per_class.csv, per_class.md)")
    if not draw_figures:
        return metrics
    if not figures.plotting_available():
        print(f"report: no figures written; {figures.INSTALL_HINT}")
        return metrics
    half = evaluate.classification_report(test.y_true, test.y_prob,
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
        written += _montages(out, test, sets["tuned_on_val"], images_of, test_ids, montage_size)
    print("report: figures " + ", ".join(p.name for p in written))
    return metrics


def roc_curves(scores: Scores) -> list[tuple[np.ndarray, np.ndarray, float] | None]:
    """Per class (fpr, tpr, auc), or None where a class has no positives or no negatives."""
    aucs = evaluate.roc_auc(scores.y_true, scores.y_prob)
    curves = []
    for c, auc in enumerate(aucs):
        if np.isnan(auc):
            curves.append(None)
            continue
        fpr, tpr, _ = evaluate.roc_curve(scores.y_true[:, c], scores.y_prob[:, c])
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


def _montages(out: pathlib.Path, test: Scores, thresholds: np.ndarray,
              images_of: Callable[[np.ndarray], np.ndarray], ids: Sequence[str] | None,
              size: int) -> list[pathlib.Path]:
    written = []
    for name, rows in zip(("best", "worst"),
                          montage_rows(test.y_true, test.y_prob, thresholds, size)):
        if not len(rows):
            continue
        row_ids = [ids[r] if ids is not None else f"#{r}" for r in rows]
        written.append(figures.prediction_montage(
            out / f"{name}.png", images_of(rows), test.y_prob[rows], test.y_true[rows],
            thresholds, row_ids, f"{name} predictions on the {test.name} split "
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
