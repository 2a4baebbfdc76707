"""Multi-label metrics in pure NumPy (importable without JAX).

The trainer's periodic evaluation reports F1 at a fixed threshold here; the
per-class threshold search and the seed paper's full report build on it.
Definitions follow scikit-learn's ``f1_score`` with ``zero_division=0``: a
class with no true and no predicted positives has F1 0, macro averages over
all classes (the Kaggle metric), weighted averages by class support.
"""

from __future__ import annotations

import numpy as np


def f1_per_class(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class F1 and support of 0/1 arrays [N, C]."""
    y_true = np.asarray(y_true, bool)
    y_pred = np.asarray(y_pred, bool)
    tp = (y_true & y_pred).sum(0)
    denom = y_true.sum(0) + y_pred.sum(0)
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(denom.shape, np.float64), where=denom > 0)
    return f1, y_true.sum(0)


def f1_scores(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Macro and support-weighted F1 of probabilities thresholded at ``threshold``."""
    f1, support = f1_per_class(y_true, np.asarray(y_prob) >= threshold)
    weighted = float((f1 * support).sum() / support.sum()) if support.sum() else 0.0
    return {"macro_f1": float(f1.mean()), "weighted_f1": weighted}
