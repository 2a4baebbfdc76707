"""Weighted means of several models' predictions of the same images (NumPy only).

An ensemble's members, or a cross-validation's folds, may have predicted
from different stores of the same images (a 512 px and a 1024 px
conversion), so their rows need not agree: predictions are matched by
sample Id and come out in the first set's order, with its rows and labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hpajax.predictions import Predictions


def normalized(weights: Sequence[float]) -> np.ndarray:
    """``weights`` scaled to sum to 1; ValueError unless all are finite and positive."""
    w = np.asarray(weights, np.float64)
    if not len(w) or not (np.isfinite(w) & (w > 0)).all():
        raise ValueError(f"weights must be positive numbers, got {list(weights)}")
    return w / w.sum()


def aligned(first: Predictions, other: Predictions) -> np.ndarray:
    """The positions in ``other`` of ``first``'s Ids; ValueError if the Id sets differ."""
    position = {sample_id: i for i, sample_id in enumerate(other.ids)}
    missing = [i for i in first.ids if i not in position]
    if missing or len(other.ids) != len(first.ids):
        extra = len(set(other.ids) - set(first.ids))
        raise ValueError(f"not the same images: {len(missing)} Id(s) missing (e.g. "
                         f"{missing[:1]}), {extra} more")
    return np.array([position[i] for i in first.ids], np.int64)


def weighted_mean(scored: Sequence[Predictions], weights: Sequence[float] | None = None
                  ) -> Predictions:
    """The ``weights``-weighted mean (default equal) of probabilities of the same Ids.

    The labels must agree too (ValueError otherwise); the loss is not computed.
    """
    w = normalized([1.0] * len(scored) if weights is None else weights)
    first = scored[0]
    total = np.zeros(np.shape(first.probs), np.float64)
    for p, weight in zip(scored, w):
        order = aligned(first, p)
        if not np.array_equal(np.asarray(p.labels)[order], first.labels):
            raise ValueError("the same Ids carry different labels")
        total += weight * np.asarray(p.probs, np.float64)[order]
    return Predictions(ids=first.ids, rows=first.rows, labels=first.labels,
                       probs=total.astype(np.float32), loss=float("nan"))
