"""Labels of synthetic samples: a built-in model with the Kaggle statistics, or real rows.

``sample_labels`` draws them for ``generate``: by default from a model whose
class marginals equal the Kaggle 2019 training set's and whose
co-occurrences follow the real file's (``_COMPANIONS``); or label sets
resampled from a real ``train.csv``. Each split has its own seeded stream.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from hpajax import classes
from hpajax.data import labels as labelslib

SPLITS = {"train": 0, "test": 1}  # RNG stream and Id namespace per split

# P(j present | c present) in the Kaggle 2019 train.csv for each class c's
# most frequent companions (up to 4 with P >= 0.05, rounded). Endosomes ->
# Lysosomes (0.62) is left out: every Lysosomes sample also has Endosomes, so
# Lysosomes enter as a primary class that brings Endosomes along.
_COMPANIONS: dict[int, dict[int, float]] = {
    0: {25: 0.28, 2: 0.13, 21: 0.10, 7: 0.08},
    1: {0: 0.48, 25: 0.21, 2: 0.12, 21: 0.06},
    2: {0: 0.48, 25: 0.22, 23: 0.06, 21: 0.06},
    3: {0: 0.37, 25: 0.17},
    4: {25: 0.18, 21: 0.07, 0: 0.05},
    5: {0: 0.32, 25: 0.22},
    6: {25: 0.15, 0: 0.09, 2: 0.08},
    7: {0: 0.39, 25: 0.15, 2: 0.07},
    8: {2: 0.21, 0: 0.09, 3: 0.08},
    9: {6: 0.24},
    10: {9: 1.00, 6: 0.39},
    11: {0: 0.24, 25: 0.13, 2: 0.07},
    12: {0: 0.29, 25: 0.23, 21: 0.19},
    13: {0: 0.33, 25: 0.23, 21: 0.21},
    14: {0: 0.20, 25: 0.15, 16: 0.10, 2: 0.07},
    15: {0: 0.57, 2: 0.48, 16: 0.43, 5: 0.38},
    16: {0: 0.54, 25: 0.28, 14: 0.19, 17: 0.15},
    17: {16: 0.37, 25: 0.36, 0: 0.36, 18: 0.23},
    18: {0: 0.31, 25: 0.29, 21: 0.07, 17: 0.05},
    19: {0: 0.41, 25: 0.19},
    20: {0: 0.34, 23: 0.10, 25: 0.05},
    21: {0: 0.36, 25: 0.24, 2: 0.06},
    22: {0: 0.41, 21: 0.16, 25: 0.14, 2: 0.06},
    23: {0: 0.27, 2: 0.08, 25: 0.07},
    24: {0: 0.24, 25: 0.16, 5: 0.09, 11: 0.06},
    25: {0: 0.44, 21: 0.11, 2: 0.10, 5: 0.07},
    26: {0: 0.35, 25: 0.16, 4: 0.05},
    27: {0: 0.64, 5: 0.36, 23: 0.18, 4: 0.09},
}



@functools.cache
def _label_model() -> tuple[np.ndarray, np.ndarray]:
    """Primary-class probabilities [28] and companion probabilities [28, 28].

    A sample draws one primary class ``c`` and then adds each class ``j``
    independently with probability ``companion[c, j]``, so every sample has a
    label and co-occurrences follow ``_COMPANIONS``. The companion table is
    scaled by one factor ``s``, and ``s`` and the primary probabilities are
    solved for so that the expected marginals ``primary + companion.T @
    primary`` equal the Kaggle class frequencies and the primary
    probabilities sum to one. This gives ~1.63 labels per sample with about
    the real 1/2/3/4-label shares.
    """
    target = np.asarray(classes.KAGGLE_TRAIN_COUNTS) / classes.KAGGLE_TRAIN_SIZE
    table = np.zeros((classes.NUM_CLASSES, classes.NUM_CLASSES))
    for c, row in _COMPANIONS.items():
        for j, p in row.items():
            table[c, j] = p

    def solve(scale: float) -> tuple[np.ndarray, np.ndarray]:
        companion = np.minimum(scale * table, 1.0)
        primary = np.linalg.solve(np.eye(classes.NUM_CLASSES) + companion.T, target)
        return primary, companion

    lo, hi = 0.0, 4.0  # the primary mass falls as the companion scale grows
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if solve(mid)[0].sum() > 1 else (lo, mid)
    primary, companion = solve(hi)
    assert primary.min() >= 0, "companion table inconsistent with the marginals"
    return primary / primary.sum(), companion


def _draw_model_labels(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Multi-hot labels [N, 28] from the built-in model (see ``_label_model``)."""
    primary_p, companion = _label_model()
    primary = rng.choice(classes.NUM_CLASSES, size=num_samples, p=primary_p)
    labels = rng.random((num_samples, classes.NUM_CLASSES)) < companion[primary]
    labels[np.arange(num_samples), primary] = True
    return labels.astype(np.uint8)


def read_label_sets(path: str | os.PathLike) -> np.ndarray:
    """Multi-hot labels [rows, 28] of a Kaggle-format ``train.csv``.

    Raises ``ValueError`` naming the file and line of the first bad row; a
    label model built on a partly wrong file would silently mislead.
    """
    table, problems = labelslib.read_labels_csv(path)
    if problems:
        first = problems[0]
        raise ValueError(f"{path}: {len(problems)} bad row(s); first at "
                         f"{first.where}: {first.why}")
    if table.labels is None:
        raise ValueError(f"{path}:1: no Target column; expected header 'Id,Target'")
    if not len(table.labels):
        raise ValueError(f"{path}: no label rows")
    return table.labels


def split_labels(num_samples: int, seed: int, labels_csv: str | os.PathLike | None,
            split: str) -> np.ndarray:
    """Labels of a split: one seeded stream, the model or the real rows."""
    rng = np.random.default_rng([seed, SPLITS[split], 0])
    if labels_csv is None:
        return _draw_model_labels(num_samples, rng)
    real = read_label_sets(labels_csv)
    return real[rng.integers(len(real), size=num_samples)]


def sample_labels(num_samples: int, seed: int,
                  labels_csv: str | os.PathLike | None = None) -> np.ndarray:
    """Multi-hot uint8 labels [N, 28] as ``generate`` draws them for train.

    Without ``labels_csv`` from the built-in model (Kaggle marginals, every
    sample at least one label); with it, rows of that real ``train.csv``
    drawn with replacement, so co-occurrence is exactly the real one.
    """
    check_positive("num_samples", num_samples)
    check_seed(seed)
    return split_labels(num_samples, seed, labels_csv, "train")




def check_positive(name: str, value: int) -> None:
    """ValueError naming ``name`` unless ``value`` is a positive int."""
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_seed(seed: int) -> None:
    """ValueError unless ``seed`` is a non-negative int (NumPy seeds are)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
