"""The report a user reads after training: tuned thresholds, metric tables, figures.

``write_report`` takes the ``Predictions`` of the validation and test splits
(NumPy only, no JAX), chooses per-class thresholds on the validation split and
reports on both, so the thresholds never see the test data they are scored
on. Without a test split (a fold run on folds with no test part) the tables
and figures show the validation split. The threshold sets, in the order reported:

- ``tuned_on_val``: the best-F1 grid search on the validation split;
- ``guarded`` (the one used): the same, except that classes with fewer than
  ``min_val_positives`` validation positives keep their rate-matched
  threshold on the validation split (0.5 when the class frequency is
  unknown): a search on one or two positives overfits them;
- ``rate``: per class, the threshold at which the predicted positive rate of
  the scored split itself matches the class's training frequency (no labels
  used; only when the predictions files hold the class frequency);
- ``tuned_on_train``: the seed paper's way, when train predictions exist;
- ``tuned_on_test``: the optimistic bound, on the test split only.

``rebuild`` writes a run's whole report from the predictions ``evaluate``
saved in ``WORKDIR/report/`` (see ``hpajax.predictions``); ``evaluate`` itself
goes through it, so a report rebuilt later on a laptop, without JAX, is the
one ``evaluate`` wrote: ``python -m hpajax.report WORKDIR [--nofigures]
[--min_val_positives=N]``.

Files written to the report directory:

- ``metrics.json``: micro/macro/weighted/samples F1 and macro AUC of each
  split at threshold 0.5 and at each threshold set above;
- ``thresholds.json``: the fixed threshold sets, ``use`` (the set ``predict``
  applies by default), and the class frequency the ``rate`` set is matched to;
- ``per_class.csv`` and ``per_class.md``: the seed's Tables 5 and 7 for the
  test split at the ``use`` thresholds;
- PNG figures, when matplotlib is installed: ``roc.png`` (Figure 9),
  ``training_curves.png`` (Figure 5), ``f1_per_class.png``, and
  ``best.png`` / ``worst.png`` montages of test samples (Figures 10-11).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
from absl import app, flags
from etils import epath

from hpajax import averaging, classes, evaluate, figures, predictions
from hpajax.files import make_folder, write_atomic, write_json
from hpajax.predictions import Predictions
from hpajax.records import read_records

DECISION_RULE = "class predicted iff probability > threshold"
MIN_VAL_POSITIVES = 5  # fewer validation positives: a class keeps its fallback threshold
# The threshold sets a report scores, in its order; "rate" depends on the scored split.
THRESHOLD_SETS = ("tuned_on_val", "guarded", "rate", "tuned_on_train", "tuned_on_test")
USE = "guarded"  # the set per_class tables, montages and predict use
# What ``prediction_thresholds`` can apply to new probabilities.
PREDICTION_THRESHOLDS = ("guarded", "tuned_on_val", "rate", "0.5")
REPORT_DIR = "report"  # the report folder of a workdir
# A cross-validation folder's files (``hpajax.cv``): its record, the folds' out-of-fold
# predictions (with array "fold") and their test predictions (mean, and "fold_probs").
CV_FILE, OOF_FILE, CV_TEST_FILE = "cv.json", "oof.npz", "test.npz"
# An ensemble folder's (``hpajax.ensemble``): its record, and each member's predictions
# in MEMBERS_DIR/{i}/predictions_{val,test}.npz.
ENSEMBLE_FILE, MEMBERS_DIR = "ensemble.json", "members"
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


def tuned_thresholds(val: Predictions, test: Predictions | None, train: Predictions | None,
                     class_frequency: Sequence[float] | np.ndarray | None = None,
                     min_val_positives: int = MIN_VAL_POSITIVES) -> dict[str, np.ndarray]:
    """The fixed threshold sets (all but "rate"), in ``THRESHOLD_SETS`` order.

    The guard's fallback is ``rate_thresholds`` on val when ``class_frequency``
    is known, else 0.5 (the untuned default).
    """
    fallback = (0.5 if class_frequency is None
                else evaluate.rate_thresholds(val.probs, class_frequency))
    sets = {"tuned_on_val": evaluate.search_thresholds(val.labels, val.probs),
            "guarded": evaluate.guarded_thresholds(val.labels, val.probs, fallback,
                                                   min_val_positives)}
    if train is not None:
        sets["tuned_on_train"] = evaluate.search_thresholds(train.labels, train.probs)
    if test is not None:
        sets["tuned_on_test"] = evaluate.search_thresholds(test.labels, test.probs)
    return sets


def scored_sets(sets: dict[str, np.ndarray], split: Predictions,
                class_frequency: Sequence[float] | np.ndarray | None,
                is_test: bool) -> dict[str, np.ndarray]:
    """The threshold sets ``split`` is scored at, in ``THRESHOLD_SETS`` order: the fixed
    ``sets``, "rate" matched on ``split`` itself (when ``class_frequency`` is known) and
    "tuned_on_test" on the test split only."""
    scored = dict(sets)
    if class_frequency is not None:
        scored["rate"] = evaluate.rate_thresholds(split.probs, class_frequency)
    if not is_test:
        scored.pop("tuned_on_test", None)
    return {name: scored[name] for name in THRESHOLD_SETS if name in scored}


def metrics_table(val: Predictions, test: Predictions | None, sets: dict[str, np.ndarray],
                  names: tuple[str, str] = ("val", "test"),
                  class_frequency: Sequence[float] | np.ndarray | None = None) -> dict:
    """Summaries of val and test (keyed by ``names``; test if given) at 0.5 and at each of
    their ``scored_sets``."""
    half = np.full(classes.NUM_CLASSES, 0.5)
    out = {}
    scored = ((names[0], val, False), (names[1], test, True))
    for name, split, is_test in scored[:1 if test is None else 2]:
        rows = {"threshold_0.5": summary(evaluate.classification_report(
            split.labels, split.probs, half))}
        for set_name, thresholds in scored_sets(sets, split, class_frequency,
                                                is_test).items():
            rows[set_name] = summary(evaluate.classification_report(split.labels, split.probs,
                                                                    thresholds))
        out[name] = {"samples": len(split.labels),
                     "no_skill_macro_f1": evaluate.no_skill_macro_f1(split.labels), **rows}
    return out


def write_report(out_dir: str | os.PathLike, val: Predictions, test: Predictions | None, *,
                 train: Predictions | None = None, names: tuple[str, str] = ("val", "test"),
                 step: int | None = None, records: Sequence[dict] | None = None,
                 images_of: Callable[[np.ndarray], np.ndarray] | None = None,
                 montage_size: int = 6, draw_figures: bool = True,
                 class_frequency: Sequence[float] | np.ndarray | None = None,
                 min_val_positives: int = MIN_VAL_POSITIVES, extra: dict | None = None) -> dict:
    """Writes the report files (and figures, if asked and matplotlib is there); returns
    metrics.json, with ``extra``'s entries added.

    ``names`` are the split names of ``val`` and ``test`` (metrics.json's
    keys); ``records`` are the run's ``metrics.jsonl`` entries (for the
    training curves); ``images_of(rows)`` returns the uint8 images of those
    store rows (for the montages of ``test``); ``class_frequency`` [28] is
    each class's positive rate in training (None: unknown, no "rate" set and
    the guard falls back to 0.5); ``min_val_positives`` is the guard's. The tables
    and figures are of ``test``, or of ``val`` when there is no test split.
    """
    out = epath.Path(out_dir)
    make_folder(out)
    sets = tuned_thresholds(val, test, train, class_frequency, min_val_positives)
    metrics = {"step": step, "decision_rule": DECISION_RULE,
               **metrics_table(val, test, sets, names, class_frequency), **(extra or {})}
    shown, shown_name = (val, names[0]) if test is None else (test, names[1])
    write_json(out / "metrics.json", _finite(metrics))
    write_json(out / "thresholds.json",
               _thresholds_file(sets, class_frequency, min_val_positives))
    report = evaluate.classification_report(shown.labels, shown.probs, sets[USE])
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
    half = evaluate.classification_report(shown.labels, shown.probs,
                                          np.full(classes.NUM_CLASSES, 0.5))
    written = [
        figures.roc_figure(out / "roc.png", roc_curves(shown), classes.CLASS_NAMES),
        figures.f1_bars_figure(out / "f1_per_class.png", classes.CLASS_NAMES,
                               [c["f1"] for c in half["per_class"]],
                               [c["f1"] for c in report["per_class"]],
                               [c["support"] for c in report["per_class"]]),
    ]
    if records:
        written.append(figures.training_curves_figure(out / "training_curves.png", records))
    if images_of is not None:
        written += _montages(out, shown, shown_name, sets[USE], images_of, montage_size)
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


def _montages(out: epath.Path, shown: Predictions, name: str, thresholds: np.ndarray,
              images_of: Callable[[np.ndarray], np.ndarray], size: int) -> list[epath.Path]:
    written = []
    for kind, positions in zip(("best", "worst"),
                               montage_rows(shown.labels, shown.probs, thresholds, size)):
        if not len(positions):
            continue
        written.append(figures.prediction_montage(
            out / f"{kind}.png", images_of(np.asarray(shown.rows)[positions]),
            shown.probs[positions], shown.labels[positions], thresholds,
            [shown.ids[p] for p in positions], f"{kind} predictions on the {name} split "
            "(by the F1 of each sample's predicted classes)"))
    return written


def _thresholds_file(sets: dict[str, np.ndarray],
                     class_frequency: Sequence[float] | np.ndarray | None,
                     min_val_positives: int) -> dict:
    """thresholds.json: the fixed sets, and the frequencies "rate" is matched to when known."""
    known = class_frequency is not None
    frequency = {"class_frequency": [float(f) for f in class_frequency]} if known else {}
    return {"decision_rule": DECISION_RULE, "grid": "0.00 to 1.00, step 0.01",
            "use": USE, "class_names": list(classes.CLASS_NAMES),
            "min_val_positives": int(min_val_positives),
            "guarded_fallback": "rate" if known else "0.5", **frequency,
            **{name: [float(t) for t in values] for name, values in sets.items()}}


def _finite(obj):
    """NaN (e.g. an undefined AUC) as null, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def prediction_thresholds(report_dir: str | os.PathLike, probs: np.ndarray,
                          how: str = "guarded") -> np.ndarray:
    """The thresholds [28] ``predict`` applies to ``probs`` [N, 28], chosen by ``how``.

    "guarded" (the default) and "tuned_on_val" are the sets ``write_report``
    saved in ``report_dir``; "rate" is matched on ``probs`` themselves to the
    training class frequency saved there; "0.5" reads nothing. ValueError for
    another ``how``, or for one that the saved thresholds.json cannot give (a
    file of an earlier hpajax has no "guarded" and no class frequency).
    """
    _check_known(how)
    path = epath.Path(report_dir) / "thresholds.json"
    saved = None if how == "0.5" else json.loads(path.read_text())
    return saved_thresholds(path, saved, probs, how)


def saved_thresholds(where: str | os.PathLike, saved: dict | None, probs: np.ndarray,
                     how: str) -> np.ndarray:
    """``prediction_thresholds``' set ``how`` from ``saved``, thresholds.json's content as
    read from ``where`` (a report's file, or an export's manifest; "0.5" needs none)."""
    _check_known(how)
    if how == "0.5":
        return np.full(classes.NUM_CLASSES, 0.5)
    if how != "rate":
        return _fixed_set(where, saved, how)
    if "class_frequency" not in saved:
        raise ValueError(f"{where} has no class_frequency for \"rate\" thresholds (its "
                         "predictions were saved without it): run `python -m hpajax.main "
                         "evaluate` again, or choose another of "
                         + ", ".join(repr(h) for h in PREDICTION_THRESHOLDS if h != "rate"))
    return evaluate.rate_thresholds(probs, saved["class_frequency"])


def _check_known(how: str) -> None:
    if how not in PREDICTION_THRESHOLDS:
        raise ValueError(f"unknown thresholds {how!r}: choose one of "
                         + ", ".join(repr(h) for h in PREDICTION_THRESHOLDS))


def load_thresholds(report_dir: str | os.PathLike, name: str | None = None) -> np.ndarray:
    """The fixed threshold set ``name`` ``write_report`` saved (default: its ``use`` set).

    ValueError if thresholds.json lacks it (written by an earlier hpajax: rebuild
    the report) or it is not 28 thresholds in [0, 1].
    """
    path, data = _read_thresholds(report_dir)
    return _fixed_set(path, data, data["use"] if name is None else name)


def _fixed_set(where: str | os.PathLike, saved: dict, name: str) -> np.ndarray:
    if name not in saved:
        raise ValueError(f"{where} has no {name!r} thresholds (written by an earlier hpajax): "
                         "rebuild the report with `python -m hpajax.report WORKDIR`")
    try:
        return evaluate.check_thresholds(saved[name], classes.NUM_CLASSES)
    except ValueError as e:
        raise ValueError(f"{where}: {name}: {e}") from None


def _read_thresholds(report_dir: str | os.PathLike) -> tuple[epath.Path, dict]:
    """The path and the content of a report's thresholds.json."""
    path = epath.Path(report_dir) / "thresholds.json"
    return path, json.loads(path.read_text())


def rebuild(workdir: str | os.PathLike, *, draw_figures: bool = True,
            min_val_positives: int = MIN_VAL_POSITIVES) -> dict:
    """Writes ``WORKDIR/report/`` from the predictions saved there; returns metrics.json.

    Reads ``report/predictions_{val,test}.npz`` (and ``predictions_train.npz``
    if saved, for the seed's thresholds; the class frequency comes from the
    val file), ``metrics.jsonl`` for the training curves and, for the
    montages, the test images from the run's store; no JAX. Without the
    store the report is written without montages. A cross-validation folder
    is reported from its out-of-fold predictions instead (``rebuild_cv``), an
    ensemble from its members' (``rebuild_ensemble``).
    """
    workdir = epath.Path(workdir)
    for marker, rebuild_other in ((OOF_FILE, rebuild_cv), (ENSEMBLE_FILE, rebuild_ensemble)):
        if (workdir / marker).is_file():
            return rebuild_other(workdir, draw_figures=draw_figures,
                                 min_val_positives=min_val_positives)
    out = workdir / REPORT_DIR
    saved = load_predictions(workdir)
    val, val_info = saved["val"]
    test, test_info = saved.get("test", (None, val_info))
    print(f"report: rebuilding {out}/ from the predictions of step {val_info.step}")
    records = read_records(workdir / "metrics.jsonl")
    images_of = _images_of(workdir / "config.json", val if test is None else test, draw_figures)
    return write_report(out, val, test, train=saved["train"][0] if "train" in saved else None,
                        names=(val_info.split, test_info.split), step=val_info.step,
                        records=records, images_of=images_of, draw_figures=draw_figures,
                        class_frequency=val_info.class_frequency,
                        min_val_positives=min_val_positives)


def rebuild_cv(workdir: str | os.PathLike, *, draw_figures: bool = True,
               min_val_positives: int = MIN_VAL_POSITIVES) -> dict:
    """Writes a cross-validation's ``WORKDIR/report/`` from its ``oof.npz`` and
    ``test.npz``: thresholds tuned on the out-of-fold predictions, scored there
    and on the folds' mean test probabilities, and each fold's own figures
    (``folds`` in metrics.json); no JAX."""
    workdir = epath.Path(workdir)
    oof, info = predictions.load(workdir / OOF_FILE)
    fold_of = predictions.extra_arrays(workdir / OOF_FILE, ("fold",))["fold"]
    test, fold_probs = None, None
    if (workdir / CV_TEST_FILE).is_file():
        test, test_info = predictions.load(workdir / CV_TEST_FILE)
        fold_probs = predictions.extra_arrays(workdir / CV_TEST_FILE, ("fold_probs",))
        if test_info.data_fingerprint != info.data_fingerprint:
            raise ValueError(f"{workdir / CV_TEST_FILE} and {workdir / OOF_FILE} come from "
                             "different fold checkpoints: run `python -m hpajax.main cv` again")
    print(f"report: rebuilding {workdir / REPORT_DIR}/ from the out-of-fold predictions of "
          f"{int(fold_of.max()) + 1} folds")
    sets = tuned_thresholds(oof, test, None, info.class_frequency, min_val_positives)
    table = fold_table(oof, fold_of, test, None if test is None else fold_probs["fold_probs"],
                       sets[USE], info.data_fingerprint.get("cv", {}).get("steps"))
    images_of = _images_of(workdir / CV_FILE, oof if test is None else test, draw_figures)
    return write_report(workdir / REPORT_DIR, oof, test, names=("oof", "test"),
                        images_of=images_of, draw_figures=draw_figures,
                        class_frequency=info.class_frequency,
                        min_val_positives=min_val_positives, extra={"folds": table})


def rebuild_ensemble(workdir: str | os.PathLike, *, draw_figures: bool = True,
                     min_val_positives: int = MIN_VAL_POSITIVES) -> dict:
    """Writes an ensemble's ``WORKDIR/report/`` from its members' saved predictions: their
    weighted mean, thresholds tuned on the mean of what each member's were tuned on, and
    each member's own figures (``members`` in metrics.json); no JAX."""
    workdir = epath.Path(workdir)
    record = json.loads((workdir / ENSEMBLE_FILE).read_text())
    weights = [m["weight"] for m in record["members"]]
    saved = [_member_predictions(workdir / MEMBERS_DIR / str(i)) for i in range(len(weights))]
    print(f"report: rebuilding {workdir / REPORT_DIR}/ from {len(weights)} members' predictions")
    val = averaging.weighted_mean([s["val"][0] for s in saved], weights)
    has_test = all("test" in s for s in saved)
    test = averaging.weighted_mean([s["test"][0] for s in saved], weights) if has_test else None
    frequencies = [s["val"][1].class_frequency for s in saved]
    frequency = (None if any(f is None for f in frequencies)
                 else np.average(np.asarray(frequencies), axis=0, weights=weights))
    table = {f"member{i}": {"workdir": m["workdir"], "weight": m["weight"], **member_figures(
                 s["val"][0], s["test"][0] if has_test else None, s["val"][1].class_frequency,
                 min_val_positives)}
             for i, (m, s) in enumerate(zip(record["members"], saved))}
    images_of = _images_of(workdir / ENSEMBLE_FILE, val if test is None else test, draw_figures)
    return write_report(workdir / REPORT_DIR, val, test, names=tuple(record["names"]),
                        images_of=images_of, draw_figures=draw_figures,
                        class_frequency=frequency, min_val_positives=min_val_positives,
                        extra={"members": table})


def _member_predictions(folder: epath.Path) -> dict[str, tuple[Predictions, predictions.Info]]:
    """A member's saved predictions by role: "val", and "test" if it has a test part."""
    paths = {role: folder / predictions.file_name(role) for role in ("val", "test")}
    return {role: predictions.load(path) for role, path in paths.items()
            if role == "val" or path.is_file()}


def member_figures(val: Predictions, test: Predictions | None,
                   class_frequency: Sequence[float] | None, min_val_positives: int) -> dict:
    """One model's headline figures on val and test, at 0.5 and at its own ``USE``
    thresholds (tuned on its own val)."""
    thresholds = tuned_thresholds(val, test, None, class_frequency, min_val_positives)[USE]
    return _headlines(thresholds, val=(val.labels, val.probs),
                      **({} if test is None else {"test": (test.labels, test.probs)}))


def _headlines(thresholds: np.ndarray, **scored: tuple[np.ndarray, np.ndarray]) -> dict:
    """``summary`` of each named (labels, probs) at 0.5 and at ``thresholds``."""
    half = np.full(classes.NUM_CLASSES, 0.5)
    return {role: {f"threshold_{name}": summary(evaluate.classification_report(labels, probs, t))
                   for name, t in (("0.5", half), (USE, thresholds))}
            for role, (labels, probs) in scored.items()}


def fold_table(oof: Predictions, fold_of: np.ndarray, test: Predictions | None,
               fold_probs: np.ndarray | None, thresholds: np.ndarray,
               steps: Sequence[int] | None = None) -> dict:
    """Each fold's model on its held-out fold ("oof") and alone on the test part, at 0.5
    and at ``thresholds``, then their mean and sd over the folds."""
    table = {}
    for k in range(int(fold_of.max()) + 1):
        mine = fold_of == k
        scored = {"oof": (oof.labels[mine], oof.probs[mine])}
        if test is not None:
            scored["test"] = (test.labels, fold_probs[k])
        table[f"fold{k}"] = {"samples": int(mine.sum()),
                             **({} if steps is None else {"step": int(steps[k])}),
                             **_headlines(thresholds, **scored)}
    folds = list(table.values())
    for statistic, reduce in (("mean", np.mean), ("sd", np.std)):
        table[statistic] = {role: {rule: {key: float(reduce([f[role][rule][key] for f in folds]))
                                          for key in folds[0][role][rule]}
                                   for rule in folds[0][role]}
                            for role in ("oof", "test") if role in folds[0]}
    return table


def load_predictions(workdir: str | os.PathLike
                     ) -> dict[str, tuple[Predictions, predictions.Info]]:
    """The predictions files of ``WORKDIR/report/`` by role, checked to be of one checkpoint
    and one training data set (FileNotFoundError if val's is missing; a run without a test
    part has no test file)."""
    out = epath.Path(workdir) / REPORT_DIR
    paths = {role: out / predictions.file_name(role) for role in ROLES}
    if not paths["val"].is_file():
        raise FileNotFoundError(
            f"no {paths['val'].name} in {out}: run `python -m hpajax.main evaluate "
            f"--workdir={workdir}` first")
    saved = {role: predictions.load(path) for role, path in paths.items() if path.is_file()}
    val_info = saved["val"][1]
    for role, (_, info) in saved.items():
        if (info.step, info.data_fingerprint) != (val_info.step, val_info.data_fingerprint):
            raise ValueError(
                f"{paths[role]} (step {info.step}) and {paths['val']} (step "
                f"{val_info.step}) come from different checkpoints or data: run "
                f"`python -m hpajax.main evaluate --workdir={workdir}` again")
    return saved


def _images_of(record: epath.Path, shown: Predictions,
               draw_figures: bool) -> Callable[[np.ndarray], np.ndarray] | None:
    """``images_of`` for the montages of ``shown``, from the store named in ``record`` (a
    run's config.json, a cv.json or an ensemble.json); None when no figures are drawn or,
    saying why, when the store cannot be read."""
    if not (draw_figures and figures.plotting_available()):
        return None
    try:
        location = json.loads(record.read_text())["data"]["store"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"report: no montages: no store location in {record} ({type(e).__name__}: {e})")
        return None
    return _store_images(location, shown)


def _store_images(location: str, test: Predictions) -> Callable[[np.ndarray], np.ndarray] | None:
    """``images_of`` for the montages, reading the run's store; None, saying why, if the
    store cannot be opened or no longer holds the saved Ids at the saved rows."""
    try:
        from hpajax.data.store import open_store  # TensorStore: optional for a report
        store = open_store(location)
    except (ImportError, OSError, ValueError) as e:
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
    """``python -m hpajax.report WORKDIR [--nofigures] [--min_val_positives=N]``."""
    if len(argv) != 2:
        raise app.UsageError("usage: python -m hpajax.report WORKDIR [--nofigures] "
                             "[--min_val_positives=N]")
    try:
        rebuild(argv[1], draw_figures=flags.FLAGS.figures,
                min_val_positives=flags.FLAGS.min_val_positives)
    except (ValueError, OSError) as e:  # missing or bad files: say what, no traceback
        sys.exit(f"report: error: {e}")


if __name__ == "__main__":
    # Defined only when run: hpajax.main and experiments/sweep.py import this module
    # and have flags of their own (sweep's is also called --figures).
    flags.DEFINE_bool("figures", True, "Draw the figures (needs matplotlib).")
    flags.DEFINE_integer("min_val_positives", MIN_VAL_POSITIVES,
                         "In the guarded thresholds, classes with fewer validation positives "
                         "keep their fallback (rate-matched on val; 0.5 without the class "
                         "frequency) instead of the F1 search's; 0: no guard.", lower_bound=0)
    app.run(main)
