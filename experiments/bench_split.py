"""Benchmarks hpajax's stratified split against the iterative-stratification package.

On the Kaggle 2019 labels, for 80/20, 70/10/20 and 5-fold splits, prints one
JSON line per implementation and split: mean seconds per split and, over all
seeds, the largest deviation of any class count and any part size from its
ideal share (fraction x count), in samples.

  .venv/bin/python experiments/bench_split.py [--csv=tests/data/hpa2019/train.csv] [--seeds=3]
  .venv/bin/python experiments/bench_split.py --csv=HPAv18RGBY_ENSG.csv --group_by=gene

With ``--group_by=gene|antibody`` (HPAv18 Ids) the splits keep each group in one
part, and each line also counts the groups found on more than one side (0).

``iterstrat`` (pip package ``iterative-stratification``) is only a comparison
here, not a dependency; its lines are replaced by a note when it is missing.
"""

import functools
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
_GROUP_BY = flags.DEFINE_enum("group_by", "none", ["none", *split.ID_GROUPS],
                              "Keep the Ids' genes or antibodies in one part (HPAv18 Ids).")
CONFIGS: tuple[tuple[float, ...], ...] = ((0.8, 0.2), (0.7, 0.1, 0.2), (0.2,) * 5)

Splitter = Callable[[np.ndarray, Sequence[float], int], list[np.ndarray]]


def read_targets(path: str) -> tuple[list[str], np.ndarray]:
    """Ids and multi-hot uint8 [N, 28] labels from a Kaggle ``Id,Target`` csv."""
    lines = pathlib.Path(path).read_text().splitlines()[1:]
    labels = np.zeros((len(lines), classes.NUM_CLASSES), np.uint8)
    for row, line in enumerate(lines):
        labels[row, [int(t) for t in line.split(",")[1].split()]] = 1
    return [line.split(",")[0] for line in lines], labels


def hpajax_split(labels: np.ndarray, fractions: Sequence[float], seed: int,
                 groups: Sequence[str] | None = None) -> list[np.ndarray]:
    """Ours: 5 equal fractions use the k-fold entry point."""
    if len(fractions) == 5:
        return split.stratified_kfold(labels, 5, seed, groups)
    return split.stratified_split(labels, fractions, seed, groups)


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


def groups_on_two_sides(parts: list[np.ndarray], groups: Sequence[str]) -> int:
    sides = {}
    for k, rows in enumerate(parts):
        for row in rows:
            sides.setdefault(groups[row], set()).add(k)
    return sum(len(s) > 1 for s in sides.values())


def measure(impl: str, splitter: Splitter, labels: np.ndarray,
            fractions: Sequence[float], seeds: int, groups: Sequence[str] | None) -> dict:
    """Mean seconds and worst deviations of one implementation over seeds."""
    seconds, class_dev, size_dev, split_groups = [], 0.0, 0.0, 0
    for seed in range(seeds):
        start = time.perf_counter()
        parts = splitter(labels, fractions, seed)
        seconds.append(time.perf_counter() - start)
        cdev, sdev = split.split_deviations(labels, parts, fractions)
        class_dev = max(class_dev, float(np.abs(cdev).max()))
        size_dev = max(size_dev, float(np.abs(sdev).max()))
        if groups is not None:
            split_groups = max(split_groups, groups_on_two_sides(parts, groups))
    out = {"bench": "split", "impl": impl, "fractions": list(fractions), "seeds": seeds,
           "seconds": round(float(np.mean(seconds)), 3),
           "max_class_dev": round(class_dev, 3), "max_size_dev": round(size_dev, 3)}
    if groups is not None:
        out.update(group_by=_GROUP_BY.value, groups=len(set(groups)),
                   groups_on_two_sides=split_groups)
    return out


def main(argv: Sequence[str]) -> None:
    del argv
    ids, labels = read_targets(_CSV.value)
    groups = None if _GROUP_BY.value == "none" else split.groups_from_ids(ids, _GROUP_BY.value)
    impls: list[tuple[str, Splitter]] = [
        ("hpajax", functools.partial(hpajax_split, groups=groups))]
    try:
        import iterstrat  # noqa: F401  (comparison only)
        impls.append(("iterstrat", iterstrat_split))
    except ImportError:
        print(json.dumps({"bench": "split", "impl": "iterstrat",
                          "note": "iterative-stratification not installed; skipped"}))
    for fractions in CONFIGS:
        for impl, splitter in impls:
            print(json.dumps(measure(impl, splitter, labels, fractions, _SEEDS.value, groups)),
                  flush=True)


if __name__ == "__main__":
    app.run(main)
