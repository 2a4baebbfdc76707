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

With ``groups`` (one key per sample: an HPAv18 image's gene or antibody, or
any column of a CSV) whole groups go to parts, so no group sits on two sides:
the same two stages run on the groups, each carrying its summed labels and
size. Entries then move by a group's counts, which the repair's step formulas
give exactly only for plain squares, so grouped splits drop the steep term
beyond one sample (out of reach anyway when whole groups move) and weight each
column by one over the square root of its total instead (``_group_cost``).
On the 77,430 HPAv18RGBY_ENSG.csv labels grouped by gene (10,418 groups once
genes sharing an antibody are joined) or by antibody (12,815), for 80/20,
70/10/20 and 5 folds with seeds 0-3, part sizes stay within one sample of
ideal and every class but one within 3.2; the rarest, class 15 (42 images in
6 genes of 6-12 images), is at its best possible deviation (2.4; 3.6 for 5
folds) in 22 of the 24 splits and at most 4.2 off. Stage 1 alone (by gene,
seed 0) left classes 13 and sizes 254 samples off. Each split takes 1-19 s.

Splits are saved with a store by ``split_store`` (``tools/split.py``); the
splitting itself is NumPy only.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
from collections.abc import Callable, Hashable, Sequence

import numpy as np

from hpajax.data import store as storelib
from hpajax.data.labels import read_csv_rows

METHOD = "iterative stratification (Sechidis et al. 2011) + swap repair"
DEFAULT_FRACTIONS: tuple[float, ...] = (0.7, 0.1, 0.2)
DEFAULT_PARTS: tuple[str, ...] = ("train", "val", "test")
# --group_by values that read the group from an HPAv18 Id.
ID_GROUPS: tuple[str, ...] = ("gene", "antibody")
# An HPAv18 Id: [Ensembl gene_]antibody_plate_well_field, as in HPAv18RGBY_ENSG.csv
# (ENSG00000000003_4109_24_H11_1) and HPAv18RBGY_wodpl.csv (4109_24_H11_1).
_HPA_ID = re.compile(r"(?:(ENS[A-Z]*G\d+)_)?(\d+)_[^_]")
# The repair's target bound on any deviation from ideal, in samples, and the
# weight of the excess over it in the repair cost (see _cost).
_TARGET_DEV = 1.0
_EXCESS_WEIGHT = 100.0
# A step must lower the repair cost by more than this to be taken, so that
# float rounding cannot make the local search cycle.
_MIN_GAIN = 1e-9
# The repair cost of per-entry deviations from ideal (see _cost).
_Cost = Callable[[np.ndarray], np.ndarray]


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


def _greedy_parts(counts: np.ndarray, f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stage 1, iterative stratification: the part index of every unit.

    ``counts`` [U, C+1] holds each unit's (sample's or group's) positives per
    class and, last, its size. Each unit goes to the part that most wants its
    visiting label, then the one that most wants samples at all, then a
    random one; the demands for its labels and the size then drop by its counts.
    """
    n, num_parts = counts.shape[0], f.size
    order, placed_by = _visit_order(counts[:, :-1] > 0, rng)
    ordered = counts[order]
    rows, cols = np.nonzero(ordered[:, :-1])
    starts = np.searchsorted(rows, np.arange(1, n))
    labels_of = np.split(cols, starts)
    amounts_of = np.split(ordered[rows, cols], starts)
    sizes = ordered[:, -1].tolist()
    # Remaining demand per label (indexed [label][part]) and per part size.
    demand = (counts[:, :-1].sum(0)[:, None] * f[None, :]).tolist()
    size_demand = (f * counts[:, -1].sum()).tolist()
    no_label = [0.0] * num_parts
    ties = rng.random((n, num_parts)).tolist()
    placed_by = placed_by.tolist()
    part = np.empty(n, np.int64)
    for i, unit in enumerate(order.tolist()):
        label = placed_by[unit]
        wanted = demand[label] if label >= 0 else no_label
        tie = ties[i]
        best = max(range(num_parts), key=lambda p: (wanted[p], size_demand[p], tie[p]))
        part[unit] = best
        size_demand[best] -= sizes[i]
        for other, amount in zip(labels_of[i].tolist(), amounts_of[i].tolist()):
            demand[other][best] -= amount
    return part


def _cost(dev: np.ndarray, weights: np.ndarray, excess_weight: float) -> np.ndarray:
    """Per-entry cost of deviations from ideal counts, in samples.

    The squared deviation spreads the error evenly; the steep extra term for
    the excess over the target bound (one sample), weighted ``excess_weight``,
    pushes the worst entries inside it first, which the squares alone
    sometimes trade away. ``weights`` [C+1] scales each column.
    """
    return weights * (dev**2 + excess_weight * np.maximum(np.abs(dev) - _TARGET_DEV, 0.0) ** 2)


def _sample_cost(counts: np.ndarray) -> _Cost:
    """The repair cost of a split of samples: unweighted, steep beyond one sample."""
    return functools.partial(_cost, weights=np.ones(counts.shape[1]),
                             excess_weight=_EXCESS_WEIGHT)


def _group_cost(counts: np.ndarray) -> _Cost:
    """The repair cost of a split of groups: plain squares, each column over sqrt(its total).

    Plain squares keep the step formulas exact for moves of several samples
    (``_best_step``); the weights count a rare class's few positives as much
    as a common class's many (on the HPAv18 genes unweighted squares left the
    rarest class up to 9.6 samples off in 5 folds, weighted 3.6).
    """
    weights = 1.0 / np.sqrt(np.maximum(counts.sum(0), 1))
    return functools.partial(_cost, weights=weights / weights.max(), excess_weight=0.0)


def _best_step(counts: np.ndarray, dev: np.ndarray, patterns: np.ndarray,
               cost: _Cost) -> tuple[int, int, int, int]:
    """The single move or swap of label sets that lowers the total cost most.

    ``counts`` [P, K] holds how many units of each label set (``patterns``
    [K, C+1]: positives per class, last the size) every part has, ``dev``
    [P, C+1] the deviations from ideal. With ``up``/``down`` the cost change
    of an entry going up/down by one, a change by d is taken as the quadratic
    through those, ``d * (up - down) / 2 + d**2 * h`` with ``h = (up + down) / 2``:
    exact for d in {-1, 0, 1} (0/1 label sets of samples) and, for plain
    squares, any d (groups). Moving a set ``u`` from part a to b then costs
    ``u . (down_a + up_b) + (u**2 - u) . (h_a + h_b)`` (the second term is 0
    for 0/1 sets); swapping it with ``v`` from b costs both moves minus
    ``2 (u * (h_a + h_b)) . v = (u * (down_a + up_b + up_a + down_b)) . v``.
    All moves and swaps of a pair of parts are thus a few matrix products, the
    swaps' over the sets each part holds only (most rare sets sit in one part).
    Returns (a, b, i, j): move set i from part a to b and, if j >= 0, set j
    from b to a; a = -1 if nothing lowers the cost.
    """
    base = cost(dev)
    up, down = cost(dev + 1) - base, cost(dev - 1) - base
    beyond_one = patterns * patterns - patterns
    best_gain, best = -_MIN_GAIN, (-1, -1, -1, -1)
    num_parts = counts.shape[0]
    for a in range(num_parts):
        for b in range(a + 1, num_parts):
            a_to_b, b_to_a = down[a] + up[b], up[a] + down[b]
            curvature = beyond_one @ ((a_to_b + b_to_a) / 2)
            held_a, held_b = counts[a] > 0, counts[b] > 0
            move_ab = np.where(held_a, patterns @ a_to_b + curvature, np.inf)
            move_ba = np.where(held_b, patterns @ b_to_a + curvature, np.inf)
            steps = [(move_ab.min(), (a, b, int(move_ab.argmin()), -1)),
                     (move_ba.min(), (b, a, int(move_ba.argmin()), -1))]
            rows, cols = np.flatnonzero(held_a), np.flatnonzero(held_b)
            if rows.size and cols.size:
                shared = (patterns[rows] * (a_to_b + b_to_a)) @ patterns[cols].T
                swap = move_ab[rows, None] + move_ba[None, cols] - shared
                i, j = np.unravel_index(swap.argmin(), swap.shape)
                steps.append((swap[i, j], (a, b, int(rows[i]), int(cols[j]))))
            for gain, step in steps:
                if gain < best_gain:
                    best_gain, best = gain, step
    return best


def _repair_counts(counts: np.ndarray, patterns: np.ndarray, ideal: np.ndarray,
                   cost: _Cost) -> np.ndarray:
    """Stage 2 on label-set counts: best moves/swaps until none lowers the cost.

    Terminates because every step lowers the cost and there are finitely many
    count matrices.
    """
    counts = counts.copy()
    while True:
        a, b, i, j = _best_step(counts, counts @ patterns - ideal, patterns, cost)
        if a < 0:
            return counts
        counts[a, i] -= 1
        counts[b, i] += 1
        if j >= 0:
            counts[b, j] -= 1
            counts[a, j] += 1


def _apply_counts(part: np.ndarray, pattern_of: np.ndarray, old: np.ndarray,
                  new: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reassigns units so each part has ``new`` [P, K] units per label set.

    For every label set whose counts changed, random units of it leave the
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


def _split_units(counts: np.ndarray, f: np.ndarray, rng: np.random.Generator,
                 cost: _Cost) -> np.ndarray:
    """Both stages on units with ``counts`` [U, C+1] (see ``_greedy_parts``): each unit's part."""
    part = _greedy_parts(counts, f, rng)
    patterns, pattern_of = np.unique(counts, axis=0, return_inverse=True)
    pattern_of = pattern_of.ravel()
    held = np.zeros((f.size, len(patterns)), np.int64)
    np.add.at(held, (part, pattern_of), 1)
    ideal = f[:, None] * counts.sum(0)[None, :]
    repaired = _repair_counts(held, patterns.astype(np.float64), ideal, cost)
    return _apply_counts(part, pattern_of, held, repaired, rng)


def _group_index(groups: Sequence[Hashable], num_samples: int, num_parts: int) -> np.ndarray:
    """Each sample's group as 0..G-1 (groups in sorted key order); ValueError if too few."""
    keys = np.asarray(groups)
    if keys.shape != (num_samples,):
        raise ValueError(f"groups must hold one key per sample ({num_samples}), "
                         f"got shape {keys.shape}")
    _, index = np.unique(keys, return_inverse=True)
    if index.max() + 1 < num_parts:
        raise ValueError(f"cannot split {index.max() + 1} groups into {num_parts} parts: "
                         "fewer groups than parts")
    return index.ravel()


def stratified_split(labels: np.ndarray, fractions: Sequence[float] = (0.8, 0.2),
                     seed: int = 0,
                     groups: Sequence[Hashable] | None = None) -> list[np.ndarray]:
    """Splits multi-hot ``labels`` [N, C] into parts of the given fractions.

    Returns one sorted int64 index array per fraction; the parts are disjoint
    and cover ``0..N-1``. Every part gets close to ``fraction * count``
    positives of every class and ``fraction * N`` samples (see the module
    docstring). With ``groups`` (one key per sample) samples of a group
    share a part. The result depends only on the labels, fractions, seed
    and groups. Raises ValueError for labels that are not 2-D 0/1, fractions
    that are not positive or do not sum to 1, fewer samples (or groups) than
    parts, or groups that leave a part empty.
    """
    y = _check_labels(labels)
    f = _check_fractions(fractions, y.shape[0])
    with_size = np.concatenate([y, np.ones((y.shape[0], 1), bool)], 1).astype(np.int64)
    if groups is None:
        unit_of, counts = np.arange(y.shape[0]), with_size
        cost = _sample_cost(counts)
    else:
        unit_of = _group_index(groups, y.shape[0], f.size)
        counts = np.zeros((unit_of.max() + 1, with_size.shape[1]), np.int64)
        np.add.at(counts, unit_of, with_size)
        cost = _group_cost(counts)
    part = _split_units(counts, f, np.random.default_rng(seed), cost)[unit_of]
    empty = np.setdiff1d(np.arange(f.size), part)
    if groups is not None and empty.size:
        raise ValueError(f"part {empty[0]} (fraction {f[empty[0]]:g}) got no group: "
                         f"{len(counts)} groups are too few or too large for these fractions")
    return [np.flatnonzero(part == p).astype(np.int64) for p in range(f.size)]


def stratified_kfold(labels: np.ndarray, k: int = 5, seed: int = 0,
                     groups: Sequence[Hashable] | None = None) -> list[np.ndarray]:
    """The k held-out folds of a stratified k-fold split (sorted, disjoint, covering).

    Fold i's training set is the union of the other folds. Raises ValueError
    for k < 2 and as ``stratified_split`` does.
    """
    if int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    return stratified_split(labels, [1.0 / k] * int(k), seed, groups)


def _join_genes(genes: list[str], antibodies: list[str]) -> list[str]:
    """Each gene's group: genes linked by a shared antibody are one (union-find).

    An antibody against several genes lists the same images under each gene
    (1,728 images of HPAv18RGBY_ENSG.csv); apart, they would sit on two sides.
    """
    parent: dict[str, str] = {}

    def root(gene: str) -> str:
        while parent.setdefault(gene, gene) != gene:
            parent[gene] = parent[parent[gene]]  # path halving
            gene = parent[gene]
        return gene

    first_gene: dict[str, str] = {}
    for gene, antibody in zip(genes, antibodies):
        a, b = root(gene), root(first_gene.setdefault(antibody, gene))
        parent[max(a, b)] = min(a, b)
    return [root(gene) for gene in genes]


def groups_from_ids(ids: Sequence[str], by: str) -> list[str]:
    """Each HPAv18 Id's group: its antibody, or its gene (genes sharing an antibody joined).

    Ids are ``[GENE_]ANTIBODY_PLATE_WELL_FIELD``: the antibody is the number
    after the optional Ensembl gene, so HPAv18RBGY_wodpl.csv Ids group by
    antibody too; only gene-prefixed Ids (HPAv18RGBY_ENSG.csv) group by gene.
    Raises ValueError naming the first row whose Id has no such ``by`` field.
    """
    if by not in ID_GROUPS:
        raise ValueError(f"--group_by={by!r}: choose one of {', '.join(ID_GROUPS)}")
    genes, antibodies = [], []
    for row, sample_id in enumerate(ids):
        match = _HPA_ID.match(sample_id)
        if match is None or (by == "gene" and match[1] is None):
            form = "ENSG00000000003_4109_24_H11_1" if by == "gene" else "4109_24_H11_1"
            raise ValueError(f"row {row}: Id {sample_id!r} has no {by} to group by "
                             f"(expected an HPAv18 Id like {form})")
        genes.append(match[1])
        antibodies.append(match[2])
    return antibodies if by == "antibody" else _join_genes(genes, antibodies)


def groups_from_csv(path: str | os.PathLike, column: str, ids: Sequence[str]) -> list[str]:
    """Each Id's value in ``column`` of a CSV with an ``Id`` column (other rows ignored).

    Raises ValueError naming the file (and line) when it cannot be read, lacks
    a column, gives an Id two values or an empty one, or misses one of ``ids``.
    """
    path = pathlib.Path(path)
    rows = read_csv_rows(path, "the groups file")
    header = rows[0] if rows else []
    missing = [c for c in ("Id", column) if c not in header]
    if missing:
        raise ValueError(f"{path}:1: no {' or '.join(missing)} column in the header "
                         f"(got {','.join(header)})")
    id_col, group_col = header.index("Id"), header.index(column)
    group_of: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # blank line
        if len(row) != len(header):
            raise ValueError(f"{path}:{line}: {len(row)} fields, expected {len(header)}")
        if not row[group_col]:
            raise ValueError(f"{path}:{line}: empty {column} for Id {row[id_col]!r}")
        if group_of.setdefault(row[id_col], row[group_col]) != row[group_col]:
            raise ValueError(f"{path}:{line}: Id {row[id_col]!r} has a second {column} "
                             f"{row[group_col]!r} (first {group_of[row[id_col]]!r})")
    absent = [(row, i) for row, i in enumerate(ids) if i not in group_of]
    if absent:
        raise ValueError(f"{path}: no row for {len(absent)} Id(s) of the store, the first "
                         f"{absent[0][1]!r} (store row {absent[0][0]})")
    return [group_of[i] for i in ids]


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


def _store_groups(ids: Sequence[str], group_by: str,
                  groups_csv: str | os.PathLike | None) -> list[str] | None:
    """The group of every Id for ``split_store``'s options; None for "none"."""
    if groups_csv is not None:
        if group_by == "none":
            raise ValueError(f"--groups_csv={groups_csv} needs --group_by=COLUMN, "
                             "the column holding the groups")
        return groups_from_csv(groups_csv, group_by, ids)
    if group_by == "none":
        return None
    if group_by not in ID_GROUPS:
        raise ValueError(f"--group_by={group_by!r}: choose none, {' or '.join(ID_GROUPS)}, "
                         "or a column of --groups_csv")
    return groups_from_ids(ids, group_by)


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
    group_by: str = "none",
    groups_csv: str | os.PathLike | None = None,
    test_fraction: float = 0.0,
    overwrite: bool = False,
) -> tuple[pathlib.Path, str]:
    """Makes and saves a stratified split of a labelled store (``tools/split.py``).

    With ``folds`` = K, saves K folds as split ``kfoldK`` with parts
    ``fold0..fold{K-1}``, and with ``test_fraction`` > 0 a part ``test`` of that
    share first, stratified jointly with the folds (``fractions``, ``parts`` and
    ``name`` are then unused); otherwise saves split ``name`` with one part per
    fraction. ``group_by`` "gene" or "antibody" keeps the groups of the Ids
    (``groups_from_ids``) in one part; with ``groups_csv`` it names that
    file's group column (``groups_from_csv``). A saved split of that name made
    otherwise is kept unless ``overwrite``: runs trained on it would no longer
    match it. Returns the split file written and a summary of sizes, class
    deviations and grouping. Raises ValueError (StoreError for the store)
    naming the bad argument.
    """
    if folds is not None:
        fractions, parts, name = _fold_parts(folds, test_fraction)
    elif test_fraction:
        raise ValueError(f"--test_fraction={test_fraction:g} needs --folds=K; without folds "
                         "give the test share in --fractions and --parts")
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
    groups = _store_groups(store.ids, group_by, groups_csv)
    info = {"seed": seed, "fractions": [float(x) for x in fractions], "method": METHOD}
    header = f"split {name!r} of {store.path}: {len(store)} samples, seed {seed}"
    if groups is not None:
        info["groups"] = group_by if groups_csv is None else f"{groups_csv}:{group_by}"
        header += f", grouped by {info['groups']}: {len(set(groups))} groups, each in one part"
    if test_fraction:
        info["test_fraction"] = float(test_fraction)
    if not overwrite:
        _check_unchanged(store, name, {**info, "parts": list(parts)})
    indices = stratified_split(store.labels, fractions, seed, groups)
    path = storelib.save_split(store.path, name, dict(zip(parts, indices)), info)
    lines = [header,
             *_summary(parts, indices, store.labels, fractions),
             f"wrote {path}"]
    return path, "\n".join(lines)


def _fold_parts(folds: int, test_fraction: float) -> tuple[list[float], list[str], str]:
    """The fractions, part names and split name of K folds after a test share."""
    if int(folds) != folds or folds < 2:
        raise ValueError(f"--folds must be an integer >= 2, got {folds}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"--test_fraction must be in [0, 1), got {test_fraction:g}")
    fold_names = [f"fold{i}" for i in range(folds)]
    share = (1.0 - test_fraction) / folds
    if not test_fraction:
        return [share] * folds, fold_names, f"kfold{folds}"
    return [test_fraction] + [share] * folds, ["test", *fold_names], f"kfold{folds}"


def _check_unchanged(store: storelib.Store, name: str, made: dict) -> None:
    """Refuses to replace a saved split ``name`` made with other options than ``made``."""
    saved = storelib.split_info(store.path, name)
    if saved is None or saved == made:
        return
    differ = [f"{key} {saved.get(key)!r}, now {made.get(key)!r}"
              for key in sorted(set(saved) | set(made)) if saved.get(key) != made.get(key)]
    raise ValueError(f"split {name!r} of {store.path} exists, made with other options "
                     f"({'; '.join(differ)}): runs trained on it would no longer match it; "
                     "pass --overwrite to replace it")
