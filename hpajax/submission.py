"""The CSV files of a prediction: every probability, and a Kaggle submission.

Written through the ``csv`` module, which quotes an Id holding ',' or '"'.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

import numpy as np

from hpajax import classes


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

