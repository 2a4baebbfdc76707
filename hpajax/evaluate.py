"""Multi-label evaluation in pure NumPy: F1, per-class threshold search, ROC/AUC, reports.

Thresholds come three ways: searched for the best F1 on labeled data
(``search_thresholds``), matched to the classes' training frequencies without
labels (``rate_thresholds``), or searched with a guard that keeps a fallback
for classes with too few positives to tune on (``guarded_thresholds``).

Why NumPy only: the trainer's periodic evaluation, the ``evaluate`` command and
the tests must import this without JAX, TensorStore, scikit-learn or
matplotlib (importing it loads only NumPy, the standard library and
``hpajax.classes``). scikit-learn is the *reference*: every number here is
defined to equal its counterpart there, and the tests check that.

Conventions used by every function in this module:

* Inputs are ``y_true`` (0/1 or bool, [N, C]) and ``y_prob`` (probabilities in
  [0, 1], [N, C]); ``check_inputs`` validates them and raises ValueError saying
  what is wrong and where. Probabilities are widened to float64 before any
  comparison.
* Decision rule: a sample is predicted positive for class c iff
  ``y_prob[:, c] > threshold[c]`` (strict), so threshold 1.0 means "never".
* Ratios with a zero denominator are 0 (scikit-learn's ``zero_division=0``):
  precision, recall, F1, specificity, FPR and FNR alike. F1 is
  ``2*tp / (2*tp + fp + fn)`` in float64, exactly as scikit-learn computes it.
* AUC is NaN for a class without positives or without negatives (undefined;
  scikit-learn raises there).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence

import numpy as np

from hpajax import classes

DEFAULT_GRID: np.ndarray = np.round(np.arange(101) * 0.01, 2)  # 0.00, 0.01, ..., 1.00
NEVER: float = 1.0  # threshold of a class that never occurs: never predict it
AVERAGES: tuple[str, ...] = ("micro", "macro", "weighted", "samples")
CSV_COLUMNS: tuple[str, ...] = (
    "class", "name", "support", "tp", "fp", "tn", "fn", "precision", "recall", "f1",
    "specificity", "fpr", "fnr", "auc", "threshold",
)


# ---------------------------------------------------------------- validation


def _where(mask: np.ndarray) -> str:
    """'(row r, class c)' of the first True entry of a 2-D mask."""
    row, col = np.argwhere(mask)[0]
    return f"(row {row}, class {col})"


def check_inputs(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validates labels and probabilities; returns (bool [N, C], float64 [N, C]).

    Raises ValueError naming the problem: shapes that differ, not 2-D, empty,
    NaN/inf probabilities, probabilities outside [0, 1], labels other than 0/1.
    """
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    if y_true.shape != y_prob.shape:
        raise ValueError(f"shape mismatch: y_true {y_true.shape} vs y_prob {y_prob.shape}")
    if y_prob.ndim != 2:
        raise ValueError(f"inputs must be 2-D [samples, classes], got shape {y_prob.shape}")
    if y_prob.size == 0:
        raise ValueError(f"empty inputs: shape {y_prob.shape}")
    prob = y_prob.astype(np.float64)
    finite = np.isfinite(prob)
    if not finite.all():
        raise ValueError(f"y_prob has {int((~finite).sum())} NaN or inf values, "
                         f"first at {_where(~finite)}")
    outside = (prob < 0) | (prob > 1)
    if outside.any():
        r, c = np.argwhere(outside)[0]
        raise ValueError(f"y_prob outside [0, 1]: {prob[r, c].item()!r} at {_where(outside)}")
    if y_true.dtype != bool:
        not01 = ~((y_true == 0) | (y_true == 1))
        if not01.any():
            r, c = np.argwhere(not01)[0]
            raise ValueError(f"y_true must be 0/1: got {y_true[r, c].item()!r} at {_where(not01)}")
    return y_true.astype(bool), prob


def check_thresholds(thresholds: float | Sequence[float] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Validates thresholds; returns float64 [num_classes] (a scalar is broadcast).

    Raises ValueError if the length is not ``num_classes`` or a value is NaN or
    outside [0, 1].
    """
    th = np.asarray(thresholds, np.float64)
    return _unit_vector(np.full(num_classes, th) if th.ndim == 0 else th, num_classes,
                        "thresholds")


def check_frequency(frequency: Sequence[float] | np.ndarray, num_classes: int) -> np.ndarray:
    """Validates per-class positive rates (e.g. of the training labels); returns float64
    [num_classes].

    Raises ValueError if the shape is not ``(num_classes,)`` (no scalar) or a
    rate is NaN or outside [0, 1].
    """
    return _unit_vector(frequency, num_classes, "frequency")


def _unit_vector(values: Sequence[float] | np.ndarray, num_classes: int,
                 what: str) -> np.ndarray:
    """``values`` as float64 [num_classes], each in [0, 1]; ValueError naming ``what`` if not."""
    values = np.asarray(values, np.float64)
    if values.shape != (num_classes,):
        raise ValueError(f"{what} must have shape ({num_classes},), got {values.shape}")
    bad = ~((values >= 0) & (values <= 1))  # also catches NaN
    if bad.any():
        c = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what} must be in [0, 1]: {values[c].item()!r} for class {c}")
    return values


def _check_grid(grid: Sequence[float] | np.ndarray | None) -> np.ndarray:
    """Sorted unique finite float64 candidate thresholds (the default grid if None)."""
    if grid is None:
        return DEFAULT_GRID
    g = np.asarray(grid, np.float64)
    if g.ndim != 1 or g.size == 0 or not np.isfinite(g).all():
        raise ValueError(f"grid must be a non-empty 1-D array of finite values, got {g!r}")
    return np.unique(g)


# ------------------------------------------------------------------ counting


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den in float64, 0 where den == 0 (zero_division=0)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 from counts, as scikit-learn defines them."""
    return {"precision": _div(tp, tp + fp), "recall": _div(tp, tp + fn),
            "f1": _div(2 * tp, 2 * tp + fp + fn)}


def _confusion(y_true: np.ndarray, y_pred: np.ndarray, axis: int) -> dict[str, np.ndarray]:
    """tp, fp, tn, fn (int64) of bool arrays, counted along ``axis``."""
    tp = np.count_nonzero(y_true & y_pred, axis=axis)
    fp = np.count_nonzero(y_pred, axis=axis) - tp
    fn = np.count_nonzero(y_true, axis=axis) - tp
    return {"tp": tp, "fp": fp, "tn": y_true.shape[axis] - tp - fp - fn, "fn": fn}


def f1_per_class(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class F1 and support of 0/1 predictions [N, C] (F1 0 when undefined)."""
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    counts = _confusion(y_true, y_pred, axis=0)
    return _prf(counts["tp"], counts["fp"], counts["fn"])["f1"], counts["tp"] + counts["fn"]


def f1_scores(y_true: np.ndarray, y_prob: np.ndarray,
              threshold: float | np.ndarray = 0.5) -> dict[str, float]:
    """Macro and support-weighted F1 with positives ``y_prob > threshold`` (scalar or [C]).

    Macro averages over all classes (the Kaggle metric); weighted is 0 when no
    class has a positive.
    """
    y_true, y_prob = check_inputs(y_true, y_prob)
    th = check_thresholds(threshold, y_prob.shape[1])
    f1, support = f1_per_class(y_true, y_prob > th)
    weighted = float((f1 * support).sum() / support.sum()) if support.sum() else 0.0
    return {"macro_f1": float(f1.mean()), "weighted_f1": weighted}


def no_skill_macro_f1(y_true: np.ndarray) -> float:
    """Macro-F1 of the best input-blind rule per class: always positive, F1 =
    2p / (1 + p) at prevalence p (never positive scores 0). The floor a model must beat."""
    y_true, _ = check_inputs(y_true, np.zeros(np.shape(y_true)))
    prevalence = y_true.mean(axis=0)
    return float((2 * prevalence / (1 + prevalence)).mean())


# --------------------------------------------------------- threshold search


def _counts_above(bins: np.ndarray, y_true: np.ndarray,
                  num_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """For bin indices [N, C] in 0..num_bins-1: per class and k, how many samples
    (all, and positives) have a bin index > k. Returns two int64 [C, num_bins-1]."""
    num_classes = bins.shape[1]
    flat = bins + np.arange(num_classes) * num_bins  # one block of bins per class
    size = num_classes * num_bins

    def above(keys: np.ndarray) -> np.ndarray:
        hist = np.bincount(keys, minlength=size).reshape(num_classes, num_bins)
        return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # sum over bins > k

    return above(flat.ravel()), above(flat[y_true])


def search_thresholds(y_true: np.ndarray, y_prob: np.ndarray,
                      grid: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Per class, the grid threshold with the highest F1 (the seed paper's search).

    Returns float64 [C]. ``grid`` defaults to 0.00, 0.01, ..., 1.00 and is used
    sorted and de-duplicated. Ties: the smallest grid value with the maximal
    F1 (F1 values are bit-identical to scikit-learn's, so this equals the
    first maximum of a brute-force loop over ``sklearn.metrics.f1_score``).
    A class without positives in ``y_true`` has F1 0 at every threshold; it
    gets 1.0, i.e. it is never predicted.

    Cost: one searchsorted of all probabilities in the grid and two bincounts;
    no loop over thresholds or classes.
    """
    y_true, y_prob = check_inputs(y_true, y_prob)
    grid = _check_grid(grid)
    # p > grid[k]  <=>  k < (number of grid values < p)  <=>  k < bin
    bins = np.searchsorted(grid, y_prob, side="left")
    predicted, tp = _counts_above(bins, y_true, grid.size + 1)
    positives = np.count_nonzero(y_true, axis=0)
    f1 = _div(2 * tp, positives[:, None] + predicted)  # 2tp / (2tp + fp + fn)
    best = grid[np.argmax(f1, axis=1)]
    return np.where(positives > 0, best, NEVER)


def guarded_thresholds(y_true: np.ndarray, y_prob: np.ndarray,
                       fallback: float | Sequence[float] | np.ndarray,
                       min_positives: int) -> np.ndarray:
    """``search_thresholds(y_true, y_prob)``, except that a class with fewer than
    ``min_positives`` positives in ``y_true`` keeps its ``fallback`` (scalar or [C]).

    Why: an F1 search on one or two positives fits them, not the class: a
    rare class gets a threshold near 0 and is predicted for most test
    samples, which costs micro-F1 (BENCHMARKS.md, "Threshold guard", measures
    it with ``experiments/bench_guard.py``). A class without
    positives also gets ``fallback`` (when ``min_positives`` > 0), not never;
    ``min_positives`` 0 keeps every searched threshold. Returns float64 [C].
    """
    y_true, y_prob = check_inputs(y_true, y_prob)
    fallback = check_thresholds(fallback, y_prob.shape[1])
    if not isinstance(min_positives, (int, np.integer)) or min_positives < 0:
        raise ValueError(f"min_positives must be an integer >= 0, got {min_positives!r}")
    positives = np.count_nonzero(y_true, axis=0)
    return np.where(positives >= min_positives, search_thresholds(y_true, y_prob), fallback)


def rate_thresholds(y_prob: np.ndarray,
                    frequency: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per class, the threshold at which the share of ``y_prob`` predicted positive
    matches the class's ``frequency`` (its positive rate in training) [C].

    The Kaggle HPA 2019 winner's way: it needs no labels of the scored set.
    Class c aims at k = round(frequency[c] * N) positives (half to even, as
    Python's ``round``). Without ties that is exact: the threshold is the
    (k+1)-th largest probability, so exactly k are above it (the decision
    rule is strict); k = 0 gives 1.0 (``NEVER``), k = N gives 0.0 (so a
    probability of exactly 0 stays negative). With ties at the boundary the
    count cannot be k: the threshold is then the one whose count is closest
    to k, below or above it, and on equal distance the one with fewer
    positives (the tied group goes negative). In one rule: the highest of the
    candidate thresholds 0.0, 1.0 and the class's probabilities whose count
    of ``y_prob > t`` is closest to k. Returns float64 [C].
    """
    _, y_prob = check_inputs(np.zeros(np.shape(y_prob), bool), y_prob)
    wanted = np.rint(check_frequency(frequency, y_prob.shape[1]) * len(y_prob))
    return np.array([_rate_threshold(y_prob[:, c], int(k)) for c, k in enumerate(wanted)])


def _rate_threshold(scores: np.ndarray, k: int) -> float:
    """The highest candidate threshold whose count of ``scores`` above it is closest to k."""
    candidates = np.unique(np.r_[0.0, scores, NEVER])  # ascending
    above = len(scores) - np.searchsorted(np.sort(scores), candidates, side="right")
    distance = np.abs(above - k)
    return float(candidates[np.flatnonzero(distance == distance.min())[-1]])


# ------------------------------------------------------------------ ROC, AUC


def roc_curve(y_true_1d: np.ndarray,
              y_score_1d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of one class, as ``sklearn.metrics.roc_curve(...,
    drop_intermediate=False)``: one point per distinct score, descending, after
    a first point (0, 0) at threshold inf. fpr (tpr) is all NaN when there are
    no negatives (positives)."""
    y_true_1d, y_score_1d = np.asarray(y_true_1d), np.asarray(y_score_1d)
    if y_true_1d.ndim != 1 or y_true_1d.shape != y_score_1d.shape:
        raise ValueError(f"roc_curve takes two 1-D arrays of one length, got shapes "
                         f"{y_true_1d.shape} and {y_score_1d.shape}")
    y_true, score = check_inputs(y_true_1d[:, None], y_score_1d[:, None])
    order = np.argsort(score[:, 0], kind="stable")[::-1]
    score, y_true = score[order, 0], y_true[order, 0]
    last = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]  # end of each tie group
    tps = np.r_[0, np.cumsum(y_true)[last]].astype(np.float64)
    fps = np.r_[0, last + 1].astype(np.float64) - tps
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, np.r_[np.inf, score[last]]


def _positive_rank_sum(sorted_scores: np.ndarray, positive_scores: np.ndarray) -> float:
    """Sum of the 1-based ranks of ``positive_scores`` among ``sorted_scores``
    (ascending), tied scores sharing the mean rank of their group."""
    below = np.searchsorted(sorted_scores, positive_scores, side="left")
    up_to = np.searchsorted(sorted_scores, positive_scores, side="right")
    return float((below + up_to + 1).sum() / 2)  # mean of ranks below+1 .. up_to


def _roc_auc(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """roc_auc on checked inputs: Mann-Whitney U / (positives * negatives)."""
    scores, labels = np.ascontiguousarray(y_prob.T), np.ascontiguousarray(y_true.T)
    ranked = np.sort(scores, axis=1)
    rank_sum = np.array([_positive_rank_sum(ranked[c], scores[c, labels[c]])
                         for c in range(len(scores))])
    pos = np.count_nonzero(labels, axis=1).astype(np.float64)
    neg = labels.shape[1] - pos
    defined = (pos > 0) & (neg > 0)
    u = rank_sum - pos * (pos + 1) / 2
    return np.where(defined, u / np.where(defined, pos * neg, 1), np.nan)


def roc_auc(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """Exact per-class ROC AUC, float64 [C] (ties count one half).

    Equals ``sklearn.metrics.roc_auc_score`` per class; NaN for a class with
    no positives or no negatives, where AUC is undefined.
    """
    return _roc_auc(*check_inputs(y_true, y_prob))


# ------------------------------------------------------------------- reports


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """The given names, the HPA names for 28 classes, else 'class i'."""
    if class_names is None:
        if num_classes == classes.NUM_CLASSES:
            return list(classes.CLASS_NAMES)
        return [f"class {c}" for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    return [str(name) for name in class_names]


def _averages(per_class: dict[str, np.ndarray], y_true: np.ndarray,
              y_pred: np.ndarray) -> dict[str, dict[str, float]]:
    """Micro, macro, weighted and samples precision/recall/F1 (+ macro AUC)."""
    keys = ("precision", "recall", "f1")
    support = per_class["tp"] + per_class["fn"]
    weights = support if support.sum() > 0 else None  # sklearn ignores all-zero weights
    micro = _prf(*(per_class[k].sum() for k in ("tp", "fp", "fn")))
    counts = _confusion(y_true, y_pred, axis=1)  # per sample
    samples = _prf(counts["tp"], counts["fp"], counts["fn"])
    auc = per_class["auc"][~np.isnan(per_class["auc"])]
    return {
        "micro": {k: float(micro[k]) for k in keys},
        "macro": {**{k: float(per_class[k].mean()) for k in keys},
                  "auc": float(auc.mean()) if auc.size else math.nan},
        "weighted": {k: float(np.average(per_class[k], weights=weights)) for k in keys},
        "samples": {k: float(samples[k].mean()) for k in keys},
    }


def classification_report(y_true: np.ndarray, y_prob: np.ndarray,
                          thresholds: float | Sequence[float] | np.ndarray,
                          class_names: Sequence[str] | None = None) -> dict:
    """Everything the seed paper's Tables 5 and 7 report, at per-class thresholds.

    Returns a JSON-serializable dict (plain Python numbers; NaN only for an
    undefined AUC):
    ``per_class``: one dict per class with class, name, support, tp, fp, tn,
    fn, precision, recall, f1, specificity = tn/(tn+fp), fpr = fp/(fp+tn),
    fnr = fn/(fn+tp), auc and threshold (ratios 0 when undefined);
    ``micro``/``macro``/``weighted``/``samples``: precision, recall and f1 as
    ``sklearn.metrics.precision_recall_fscore_support(average=...,
    zero_division=0)`` (a sample with no true and no predicted label counts 0);
    ``macro`` also has ``auc``, the mean over classes whose AUC is defined
    (NaN if none); ``thresholds``: the thresholds used.
    """
    y_true, y_prob = check_inputs(y_true, y_prob)
    th = check_thresholds(thresholds, y_prob.shape[1])
    names = _class_names(class_names, y_prob.shape[1])
    y_pred = y_prob > th
    stats = _confusion(y_true, y_pred, axis=0)
    tp, fp, tn, fn = stats["tp"], stats["fp"], stats["tn"], stats["fn"]
    stats.update(_prf(tp, fp, fn), support=tp + fn, specificity=_div(tn, tn + fp),
                 fpr=_div(fp, fp + tn), fnr=_div(fn, fn + tp), auc=_roc_auc(y_true, y_prob),
                 threshold=th)
    per_class = [{"class": c, "name": names[c], **{k: stats[k][c].item() for k in CSV_COLUMNS[2:]}}
                 for c in range(len(names))]
    return {"per_class": per_class, **_averages(stats, y_true, y_pred), "thresholds": th.tolist()}


def report_rows(report: dict) -> list[dict]:
    """Flat rows with the ``CSV_COLUMNS``: one per class, then one per average
    ('micro avg', ...; support is the total of positive labels, counts and
    per-class-only ratios are None)."""
    total = sum(row["support"] for row in report["per_class"])
    rows = [{k: row[k] for k in CSV_COLUMNS} for row in report["per_class"]]
    for avg in AVERAGES:
        rows.append({**dict.fromkeys(CSV_COLUMNS), "class": f"{avg} avg", "name": "",
                     "support": total, **report[avg]})
    return rows


def to_csv(report: dict) -> str:
    """The ``report_rows`` as CSV text (full float precision; None as an empty cell)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(report_rows(report))
    return out.getvalue()


def _cell(value: object) -> str:
    """A Markdown cell: floats to 3 decimals, NaN as n/a, None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _md_table(title: str, columns: Sequence[tuple[str, str]], rows: list[dict]) -> str:
    """A titled Markdown table; ``columns`` are (header, row key) pairs, text left-aligned."""
    header = "| " + " | ".join(h for h, _ in columns) + " |"
    align = "|" + "|".join("---" if k == "name" else "---:" for _, k in columns) + "|"
    body = ["| " + " | ".join(_cell(row[k]) for _, k in columns) + " |" for row in rows]
    return "\n".join([f"**{title}**", "", header, align, *body]) + "\n"


def to_markdown(report: dict) -> str:
    """Two Markdown tables shaped like the seed paper's Table 5 (precision,
    recall, F1, support per class and averages) and Table 7 (confusion counts,
    specificity, FPR, FNR, AUC per class)."""
    rows = report_rows(report)
    n = len(report["per_class"])
    table5 = _md_table(
        "Table 5: per-class precision, recall and F1 at the chosen thresholds",
        [("class", "class"), ("name", "name"), ("precision", "precision"),
         ("recall", "recall"), ("F1", "f1"), ("support", "support")], rows)
    table7 = _md_table(
        "Table 7: per-class confusion counts, specificity, FPR, FNR and AUC",
        [("class", "class"), ("name", "name"), ("TP", "tp"), ("FP", "fp"), ("TN", "tn"),
         ("FN", "fn"), ("specificity", "specificity"), ("FPR", "fpr"), ("FNR", "fnr"),
         ("AUC", "auc")], rows[:n])
    return table5 + "\n" + table7
