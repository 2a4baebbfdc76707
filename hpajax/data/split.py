"""Multi-label stratified splits: iterative stratification plus a repair pass.

``stratified_split`` divides N multi-hot labelled samples into parts of given
fractions so that every part holds about ``fraction * count`` positives of
every class (and ``fraction * N`` samples). It runs in two stages:

1. Iterative stratification (Sechidis et al., 2011): repeatedly take the
   label with the fewest unplaced samples and place each of them in the part
   with the largest remaining demand for that label, ties broken by the
   largest remaining demand for samples, then at random. Samples without
   labels come last and only fill sizes.
2. Repair: the greedy pass bounds neither the part sizes (on the Kaggle
   labels they end up 40-90 samples off) nor the deviations of classes that
   co-occur with rarer ones. A local search therefore
   takes the single move of a sample to another part, or swap of two samples,
   that most lowers a cost on the deviations from the ideal counts of all
   classes and the sizes (squares, plus a steep penalty beyond one sample),
   until no step lowers it. Samples with the same label set are
   interchangeable here, so it works on counts of distinct label sets (577 in
   the Kaggle train.csv) with a few matrix products per step.

On the Kaggle 2019 train.csv this puts every class and every part size within
one sample of its ideal for 80/20, 70/10/20 and 5-fold splits, in about a
second; the ``iterative-stratification`` package (stage 1 only) matches it on
classes but leaves part sizes 30-100 samples off (``experiments/bench_split.py``).

Splits are saved with a store by ``split_store`` (``tools/split.py``); the
splitting itself is NumPy only.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np

from hpajax.data import store as storelib

METHOD = "iterative stratification (Sechidis et al. 2011) + swap repair"
DEFAULT_FRACTIONS: tuple[float, ...] = (0.7, 0.1, 0.2)
DEFAULT_PARTS: tuple[str, ...] = ("train", "val", "test")
# The repair's target bound on any deviation from ideal, in samples, and the
# weight of the excess over it in the repair cost (see _cost).
_TARGET_DEV = 1.0
_EXCESS_WEIGHT = 100.0
# A step must lower the repair cost by more than this to be taken, so that
# float rounding cannot make the local search cycle.
_MIN_GAIN = 1e-9


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Returns labels as a bool [N, C] array; ValueError unless 2-D and 0/1."""
    y = np.asarray(labels)
    if y.ndim != 2 or y.shape[1] == 0:
        raise ValueError(f"labels must be 2-D [N, C] multi-hot with C >= 1, got shape {y.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be multi-hot: every value 0 or 1")
    return y.astype(bool)


def _check_fractions(fractions: Sequence[float], num_samples: int) -> np.ndarray:
    """Returns fractions as float64; ValueError unless positive, summing to 1."""
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"fractions must be a non-empty list of numbers, got {fractions!r}")
    if not np.all(np.isfinite(f) & (f > 0)):
        raise ValueError(f"fractions must all be positive, got {f.tolist()}")
    if abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1 (within 1e-6), got {f.tolist()} "
                         f"summing to {f.sum():.8g}")
    if num_samples < f.size:
        raise ValueError(f"cannot split {num_samples} samples into {f.size} parts: "
                         "N is smaller than the number of parts")
    return f


def _visit_order(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sechidis' visiting order, and the label each sample is placed by.

    Repeatedly takes the label with the fewest (but at least one) unvisited
    samples, random among ties, and visits those samples in random order.
    Samples without labels come last (label -1).
    """
    unvisited = np.ones(y.shape[0], bool)
    placed_by = np.full(y.shape[0], -1)
    remaining = y.sum(0)
    batches = []
    while remaining.any():
        fewest = np.flatnonzero(remaining == remaining[remaining > 0].min())
        label = fewest[rng.integers(fewest.size)]
        batch = rng.permutation(np.flatnonzero(unvisited & y[:, label]))
        batches.append(batch)
        placed_by[batch] = label
        unvisited[batch] = False
        remaining -= y[batch].sum(0)
    batches.append(rng.permutation(np.flatnonzero(unvisited)))
    return np.concatenate(batches), placed_by


def _greedy_parts(y: np.ndarray, f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stage 1, iterative stratification: the part index of every sample.

    Each sample goes to the part that most wants its visiting label, then the
    one that most wants samples at all, then a random one; the demands for
    all its labels and the size then drop by one.
    """
    n, num_parts = y.shape[0], f.size
    order, placed_by = _visit_order(y, rng)
    rows, cols = np.nonzero(y[order])
    labels_of = np.split(cols, np.searchsorted(rows, np.arange(1, n)))
    # Remaining demand per label (indexed [label][part]) and per part size.
    demand = (y.sum(0)[:, None] * f[None, :]).tolist()
    size_demand = (f * n).tolist()
    no_label = [0.0] * num_parts
    ties = rng.random((n, num_parts)).tolist()
    placed_by = placed_by.tolist()
    part = np.empty(n, np.int64)
    for i, sample in enumerate(order.tolist()):
        label = placed_by[sample]
        wanted = demand[label] if label >= 0 else no_label
        tie = ties[i]
        best = max(range(num_parts), key=lambda p: (wanted[p], size_demand[p], tie[p]))
        part[sample] = best
        size_demand[best] -= 1
        for other in labels_of[i].tolist():
            demand[other][best] -= 1
    return part


def _cost(dev: np.ndarray) -> np.ndarray:
    """Per-entry cost of deviations from ideal counts, in samples.

    The squared deviation spreads the error evenly; the steep extra term for
    the excess over the target bound (one sample) pushes the worst entries
    inside it first, which the squares alone sometimes trade away.
    """
    return dev**2 + _EXCESS_WEIGHT * np.maximum(np.abs(dev) - _TARGET_DEV, 0.0) ** 2


def _best_step(counts: np.ndarray, dev: np.ndarray,
               patterns: np.ndarray) -> tuple[int, int, int, int]:
    """The single move or swap of label sets that lowers the total cost most.

    ``counts`` [P, K] holds how many samples of each label set (``patterns``
    [K, C+1] 0/1, last column all ones for the size) every part has, ``dev``
    [P, C+1] the deviations from ideal. Moving a set ``u`` changes each of
    its entries by exactly one, so with ``up``/``down`` the cost change of an
    entry going up/down by one, moving ``u`` from part a to b costs
    ``u . (down_a + up_b)``; swapping it with ``v`` from b costs both moves
    minus the entries they share, ``(u * (down_a + up_b + up_a + down_b)) . v``.
    All moves and swaps of a pair of parts are thus a few matrix products.
    Returns (a, b, i, j): move set i from part a to b and, if j >= 0, set j
    from b to a; a = -1 if nothing lowers the cost.
    """
    base = _cost(dev)
    up, down = _cost(dev + 1) - base, _cost(dev - 1) - base
    best_gain, best = -_MIN_GAIN, (-1, -1, -1, -1)
    num_parts = counts.shape[0]
    for a in range(num_parts):
        for b in range(a + 1, num_parts):
            a_to_b, b_to_a = down[a] + up[b], up[a] + down[b]
            move_ab = np.where(counts[a] > 0, patterns @ a_to_b, np.inf)
            move_ba = np.where(counts[b] > 0, patterns @ b_to_a, np.inf)
            shared = (patterns * (a_to_b + b_to_a)) @ patterns.T
            swap = move_ab[:, None] + move_ba[None, :] - shared
            i, j = np.unravel_index(swap.argmin(), swap.shape)
            for gain, step in ((move_ab.min(), (a, b, int(move_ab.argmin()), -1)),
                               (move_ba.min(), (b, a, int(move_ba.argmin()), -1)),
                               (swap[i, j], (a, b, int(i), int(j)))):
                if gain < best_gain:
                    best_gain, best = gain, step
    return best


def _repair_counts(counts: np.ndarray, patterns: np.ndarray,
                   ideal: np.ndarray) -> np.ndarray:
    """Stage 2 on label-set counts: best moves/swaps until none lowers the cost.

    Terminates because every step lowers the cost and there are finitely many
    count matrices.
    """
    counts = counts.copy()
    while True:
        a, b, i, j = _best_step(counts, counts @ patterns - ideal, patterns)
        if a < 0:
            return counts
        counts[a, i] -= 1
        counts[b, i] += 1
        if j >= 0:
            counts[b, j] -= 1
            counts[a, j] += 1


def _apply_counts(part: np.ndarray, pattern_of: np.ndarray, old: np.ndarray,
                  new: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reassigns samples so each part has ``new`` [P, K] samples per label set.

    For every label set whose counts changed, random samples of it leave the
    parts with a surplus and fill the parts with a deficit.
    """
    part = part.copy()
    for k in np.flatnonzero((old != new).any(0)):
        members = np.flatnonzero(pattern_of == k)
        change = new[:, k] - old[:, k]
        leaving = [rng.choice(members[part[members] == p], -change[p], replace=False)
                   for p in np.flatnonzero(change < 0)]
        gaining = np.flatnonzero(change > 0)
        part[np.concatenate(leaving)] = np.repeat(gaining, change[gaining])
    return part


def stratified_split(labels: np.ndarray, fractions: Sequence[float] = (0.8, 0.2),
                     seed: int = 0) -> list[np.ndarray]:
    """Splits multi-hot ``labels`` [N, C] into parts of the given fractions.

    Returns one sorted int64 index array per fraction; the parts are disjoint
    and cover ``0..N-1``. Every part gets close to ``fraction * count``
    positives of every class and ``fraction * N`` samples (see the module
    docstring). The result depends only on the labels, fractions and seed.
    Raises ValueError for labels that are not 2-D 0/1, fractions that are not
    positive or do not sum to 1, or fewer samples than parts.
    """
    y = _check_labels(labels)
    f = _check_fractions(fractions, y.shape[0])
    rng = np.random.default_rng(seed)
    part = _greedy_parts(y, f, rng)
    with_size = np.concatenate([y, np.ones((y.shape[0], 1), bool)], 1)
    patterns, pattern_of = np.unique(with_size, axis=0, return_inverse=True)
    pattern_of = pattern_of.ravel()
    counts = np.zeros((f.size, len(patterns)), np.int64)
    np.add.at(counts, (part, pattern_of), 1)
    ideal = f[:, None] * with_size.sum(0)[None, :]
    repaired = _repair_counts(counts, patterns.astype(np.float64), ideal)
    part = _apply_counts(part, pattern_of, counts, repaired, rng)
    return [np.flatnonzero(part == p).astype(np.int64) for p in range(f.size)]


def stratified_kfold(labels: np.ndarray, k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """The k held-out folds of a stratified k-fold split (sorted, disjoint, covering).

    Fold i's training set is the union of the other folds. Raises ValueError
    for k < 2 and as ``stratified_split`` does.
    """
    if int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    return stratified_split(labels, [1.0 / k] * int(k), seed)


def split_deviations(labels: np.ndarray, parts: Sequence[np.ndarray],
                     fractions: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """How far a split is from ideal, in samples.

    Returns (class_dev [P, C], size_dev [P]): per part, positives of each class
    minus ``fraction * class count``, and size minus ``fraction * N``.
    """
    y = np.asarray(labels, np.int64)
    f = np.asarray(fractions, np.float64)
    class_dev = np.stack([y[idx].sum(0) for idx in parts]) - f[:, None] * y.sum(0)
    size_dev = np.array([len(idx) for idx in parts]) - f * len(y)
    return class_dev, size_dev


def _summary(names: Sequence[str], parts: Sequence[np.ndarray], labels: np.ndarray,
             fractions: Sequence[float]) -> list[str]:
    """One line per part: size vs ideal and the class deviation range."""
    class_dev, _ = split_deviations(labels, parts, fractions)
    width = max(len(n) for n in names)
    return [f"  {name:<{width}}  size {len(idx):>6} (ideal {f * len(labels):>8.1f})  "
            f"class deviation min {cdev.min():+.2f} max {cdev.max():+.2f}"
            for name, idx, f, cdev in zip(names, parts, fractions, class_dev)]


def split_store(
    store_path: str | os.PathLike,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    parts: Sequence[str] = DEFAULT_PARTS,
    seed: int = 0,
    name: str = "default",
    folds: int | None = None,
) -> tuple[pathlib.Path, str]:
    """Makes and saves a stratified split of a labelled store (``tools/split.py``).

    With ``folds`` = K, saves the K held-out folds as split ``kfoldK`` with
    parts ``fold0..fold{K-1}`` (``fractions``, ``parts`` and ``name`` are then
    unused); otherwise saves split ``name`` with one part per fraction.
    Returns the split file written and a summary of sizes and class
    deviations. Raises ValueError (StoreError for the store) naming the bad
    argument.
    """
    if folds is not None:
        if folds < 2:
            raise ValueError(f"folds must be >= 2, got {folds}")
        fractions = [1.0 / folds] * folds
        parts = [f"fold{i}" for i in range(folds)]
        name = f"kfold{folds}"
    if len(fractions) != len(parts):
        raise ValueError(f"fractions has {len(fractions)} values but parts has "
                         f"{len(parts)} names; give one part name per fraction")
    if len(set(parts)) != len(parts):
        raise ValueError(f"parts must be distinct names, got {list(parts)}")
    storelib.check_name(name, "--name")
    for part in parts:
        storelib.check_name(part, "--parts")
    store = storelib.open_store(store_path)
    if store.labels is None:
        raise storelib.StoreError(f"store {store.path} is unlabelled (no {storelib.LABELS}); "
                                   "a stratified split needs labels")
    indices = stratified_split(store.labels, fractions, seed)
    info = {"seed": seed, "fractions": [float(x) for x in fractions], "method": METHOD}
    path = storelib.save_split(store.path, name, dict(zip(parts, indices)), info)
    lines = [f"split {name!r} of {store.path}: {len(store)} samples, seed {seed}",
             *_summary(parts, indices, store.labels, fractions),
             f"wrote {path}"]
    return path, "\n".join(lines)
