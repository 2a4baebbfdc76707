"""Benchmarks hpajax's stratified split against the iterative-stratification package.

On the Kaggle 2019 labels, for 80/20, 70/10/20 and 5-fold splits, prints one
JSON line per implementation and split: mean seconds per split and, over all
seeds, the largest deviation of any class count and any part size from its
ideal share (fraction x count), in samples.

  .venv/bin/python experiments/bench_split.py [--csv=tests/data/hpa2019/train.csv] [--seeds=3]

``iterstrat`` (pip package ``iterative-stratification``) is only a comparison
here, not a dependency; its lines are replaced by a note when it is missing.
"""

import json
import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import app, flags

from hpajax import classes
from hpajax.data import split

_REPO = pathlib.Path(__file__).resolve().parents[1]
_CSV = flags.DEFINE_string("csv", str(_REPO / "tests/data/hpa2019/train.csv"),
                           "Kaggle train.csv (Id,Target).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per implementation and split (0..seeds-1).")
CONFIGS: tuple[tuple[float, ...], ...] = ((0.8, 0.2), (0.7, 0.1, 0.2), (0.2,) * 5)

Splitter = Callable[[np.ndarray, Sequence[float], int], list[np.ndarray]]


def read_targets(path: str) -> np.ndarray:
    """Multi-hot uint8 [N, 28] labels from a Kaggle ``Id,Target`` csv."""
    lines = pathlib.Path(path).read_text().splitlines()[1:]
    labels = np.zeros((len(lines), classes.NUM_CLASSES), np.uint8)
    for row, line in enumerate(lines):
        labels[row, [int(t) for t in line.split(",")[1].split()]] = 1
    return labels


def hpajax_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Ours: 5 equal fractions use the k-fold entry point."""
    if len(fractions) == 5:
        return split.stratified_kfold(labels, 5, seed)
    return split.stratified_split(labels, fractions, seed)


def iterstrat_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """The package: its public classes where they fit, else its core function.

    80/20 uses MultilabelStratifiedShuffleSplit, 5-fold
    MultilabelStratifiedKFold(shuffle=True); 70/10/20 has no public entry, so
    it calls IterativeStratification on shuffled rows the way the shuffle
    split does.
    """
    from iterstrat import ml_stratifiers as ms

    dummy = np.zeros(len(labels))
    if len(fractions) == 2:
        splitter = ms.MultilabelStratifiedShuffleSplit(
            n_splits=1, test_size=fractions[1], random_state=seed)
        return list(next(splitter.split(dummy, labels)))
    if len(fractions) == 5:
        kfold = ms.MultilabelStratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
        return [test for _, test in kfold.split(dummy, labels)]
    rng = np.random.RandomState(seed)
    perm = rng.permutation(len(labels))
    fold = np.empty(len(labels), int)
    fold[perm] = ms.IterativeStratification(labels[perm].astype(bool), np.asarray(fractions), rng)
    return [np.flatnonzero(fold == p) for p in range(len(fractions))]


def measure(impl: str, splitter: Splitter, labels: np.ndarray,
            fractions: Sequence[float], seeds: int) -> dict:
    """Mean seconds and worst deviations of one implementation over seeds."""
    seconds, class_dev, size_dev = [], 0.0, 0.0
    for seed in range(seeds):
        start = time.perf_counter()
        parts = splitter(labels, fractions, seed)
        seconds.append(time.perf_counter() - start)
        cdev, sdev = split.split_deviations(labels, parts, fractions)
        class_dev = max(class_dev, float(np.abs(cdev).max()))
        size_dev = max(size_dev, float(np.abs(sdev).max()))
    return {"bench": "split", "impl": impl, "fractions": list(fractions), "seeds": seeds,
            "seconds": round(float(np.mean(seconds)), 3),
            "max_class_dev": round(class_dev, 3), "max_size_dev": round(size_dev, 3)}


def main(argv: Sequence[str]) -> None:
    del argv
    labels = read_targets(_CSV.value)
    impls: list[tuple[str, Splitter]] = [("hpajax", hpajax_split)]
    try:
        import iterstrat  # noqa: F401  (comparison only)
        impls.append(("iterstrat", iterstrat_split))
    except ImportError:
        print(json.dumps({"bench": "split", "impl": "iterstrat",
                          "note": "iterative-stratification not installed; skipped"}))
    for fractions in CONFIGS:
        for impl, splitter in impls:
            print(json.dumps(measure(impl, splitter, labels, fractions, _SEEDS.value)), flush=True)


if __name__ == "__main__":
    app.run(main)
