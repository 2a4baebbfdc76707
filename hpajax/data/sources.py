"""Training sources, their weights and the per-sample draw plan of training.

A ``Source`` is a store's training rows with its share of the draws and,
with oversampling, a draw weight per row (``oversample_weights``). The draw
plan (``draw_plan``) says which (source, row) each training draw is, from
the sources' sizes and weights and the seed alone: the pipeline reads the
images of these draws, and ``drawn_label_frequency`` counts their labels
without reading any. Run data (``run_data``) builds the sources from a
config; the pipeline (``pipeline``) turns the plan into batches.

Several sources (or per-row draw weights) are mixed per sample, not in a
fixed interleaving: the positions are global draw numbers ``p`` and a
stateless seeded map (``_Mixer``) sends each to a (source, row). Draw ``p``
is draw ``p % L`` of virtual epoch ``p // L``, ``L`` the sources' total
rows; an epoch draws each source its weight's share of ``L`` exactly
(largest remainder), in an order shuffled by (seed, epoch). A source
without draw weights continues one endless chain of permutations of its
rows, so every row comes once per pass over it; with draw weights its draws
are chosen with replacement by them. Since the map depends on the position
alone, the iterator state stays one index, resumption is exact, and
sharding is the same as for one source. One source without draw weights
keeps Grain's shuffle, so runs that had one source see the order they
always saw.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence

import grain
import numpy as np

from hpajax.data.store import Store

# Training draws: positions -> (source int32 [B], position in the source's rows int64 [B]).
Draws = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Source:
    """Training samples of one store: its rows and their share of the draws."""

    store: Store
    rows: np.ndarray  # int64 store rows
    weight: float = 1.0  # share of the draws, relative to the other sources'
    draw_weights: np.ndarray | None = None  # per row (oversampling); None: uniform


def check_trainable(source: Source) -> None:
    """Refuses a source without labels or without rows, naming its store."""
    where = source.store.path
    if source.store.labels is None:
        raise ValueError(f"{where} has no labels: cannot train on it")
    if len(source.rows) == 0:
        raise ValueError(f"{where}: cannot train on an empty split (no rows)")


def drawn_label_frequency(sources: Sequence[Source], seed: int, num_draws: int) -> np.ndarray:
    """Class frequencies (float64 [28]) among the first ``num_draws`` training draws.

    What the model of a run with ``seed`` sees, against the sources' own
    frequencies, from the draws alone: no image is read. The draws are the
    global ones, the same for every number of processes.
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be positive, got {num_draws}")
    positions, draws = draw_plan(sources, seed)
    for source in sources:
        check_trainable(source)
    which, at = draws(positions.batch(num_draws)[0])
    counts = sum(source.store.labels[source.rows[at[which == s]]].sum(axis=0, dtype=np.int64)
                 for s, source in enumerate(sources))
    return counts / num_draws


def oversample_weights(labels: np.ndarray, class_frequency: np.ndarray,
                       alpha: float) -> np.ndarray:
    """Per-sample draw weights that favour rare classes: float64 [N], mean 1.

    ``labels`` are multi-hot [N, K] (K = 28 here); ``class_frequency`` [K]
    is each class's fraction of the samples of all the training sources
    together. A sample weighs the largest ``(1 / class_frequency[c]) **
    alpha`` over its classes ``c``: its rarest class decides, so rare classes
    are drawn more often even beside a common one (as nucleoplasm, class 0,
    mostly is). A sample without classes weighs as the most common class
    does, the least a labeled sample can. ``alpha`` 0 draws uniformly; the
    larger it is, the more rare classes are favoured.
    """
    labels = np.asarray(labels)
    freq = np.asarray(class_frequency, np.float64)
    if labels.ndim != 2 or not len(labels):
        raise ValueError(f"labels must be multi-hot [N >= 1, classes], got {labels.shape}")
    if freq.shape != labels.shape[1:] or not ((freq >= 0) & (freq <= 1)).all():
        raise ValueError(f"class_frequency must be {labels.shape[1]} values in [0, 1], one "
                         f"per class of labels {labels.shape}; got {freq.shape}: {freq}")
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be finite and >= 0, got {alpha}")
    unseen = np.flatnonzero(labels.astype(bool).any(axis=0) & (freq == 0))
    if unseen.size:
        raise ValueError(f"classes {unseen.tolist()} occur in labels but have "
                         "class_frequency 0: pass the frequency of these labels' union")
    if not freq.any():
        raise ValueError("class_frequency is all zero: no class to oversample")
    weights = np.where(labels.astype(bool), freq, freq.max()).min(axis=1) ** -float(alpha)
    return weights / weights.mean()


def shuffle_seed(seed: int) -> int:
    """A 32-bit shuffle seed hashed from ``seed``.

    Grain shuffles epoch ``e`` with seed ``seed + e``, so runs with seeds 0 and
    1 would see the same permutations one epoch apart; hashing decorrelates them.
    """
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def _draw_probabilities(source: Source) -> np.ndarray | None:
    """Checks a source's weight and draw weights; its rows' draw probabilities (None: uniform)."""
    where, weight = source.store.path, float(source.weight)
    if not (np.isfinite(weight) and weight > 0):
        raise ValueError(f"{where}: weight must be positive and finite, got {source.weight}")
    if source.draw_weights is None:
        return None
    w = np.asarray(source.draw_weights, np.float64)
    if w.shape != (len(source.rows),):
        raise ValueError(f"{where}: draw_weights has shape {w.shape}, but the source has "
                         f"{len(source.rows)} rows")
    if not np.isfinite(w).all() or (w < 0).any() or not w.any():
        raise ValueError(f"{where}: draw_weights must be finite, >= 0 and not all zero "
                         f"(min {w.min()}, max {w.max()}, sum {w.sum()})")
    return w / w.sum()


def _draw_counts(total: int, weights: Sequence[float]) -> np.ndarray:
    """``total`` draws shared in proportion to ``weights``, rounded by largest remainder.

    Each count is ``total * w / sum(weights)`` rounded down or up, the
    largest fractional parts up (the earlier on ties), so they sum to ``total``.
    """
    quotas = total * np.asarray(weights, np.float64) / np.sum(weights)
    counts = np.floor(quotas).astype(np.int64)
    counts[np.argsort(counts - quotas, kind="stable")[:total - counts.sum()]] += 1
    return counts


def draw_plan(train: Sequence[Source], seed: int) -> tuple[grain.MapDataset, Draws]:
    """The endless training draws: a dataset of positions, and their map to samples.

    One source without draw weights (of any weight) keeps the order runs had
    before mixing: Grain's shuffle of its rows, a new one every epoch.
    Otherwise the positions are global draw numbers, mapped by a ``_Mixer``.
    """
    if not train:
        raise ValueError("no training sources")
    probabilities = [_draw_probabilities(source) for source in train]
    if len(train) == 1 and probabilities[0] is None:
        shuffled = grain.MapDataset.range(len(train[0].rows)).shuffle(shuffle_seed(seed))
        return shuffled.repeat(), _one_source
    sizes = [len(source.rows) for source in train]
    weights = [float(source.weight) for source in train]
    counts = _draw_counts(sum(sizes), weights)
    for source, weight, count in zip(train, weights, counts):
        if not count:
            raise ValueError(f"{source.store.path}: weight {weight} of {sum(weights)} in "
                             f"all gets none of the {sum(sizes)} draws of a virtual epoch "
                             "(the sources' rows in all): raise it")
    return grain.MapDataset.range(sys.maxsize), _Mixer(sizes, counts, probabilities, seed)


def _one_source(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The draws of a single source: the positions themselves, all of source 0."""
    return np.zeros(len(positions), np.int32), np.asarray(positions, np.int64)


# Tags of the random streams of mixed training, each key's first value.
_ORDER, _PASS, _CHOICE = 0, 1, 2


def _rng(*key: int) -> np.random.Generator:
    """A generator seeded by a tuple: a stream tag, the hashed seed, what the stream depends on.

    Tuples, never sums such as ``seed + epoch``, so streams do not coincide:
    a tag's keys have one length and 32-bit values (the seed enters hashed
    by ``shuffle_seed``), so distinct keys give distinct entropy.
    """
    return np.random.default_rng(np.random.SeedSequence(key))


class _Mixer:
    """The draws of mixed training: global position -> (source, position in its rows).

    Position ``p`` is draw ``p % L`` of virtual epoch ``p // L``, ``L`` the
    sources' rows in all. An epoch holds ``counts[s]`` draws of source
    ``s``, in an order shuffled by (seed, epoch). Without draw
    probabilities, a source's ``j``-th draw since the start is row ``j % n``
    of permutation ``j // n`` of its ``n`` rows (seeded by seed, source and
    ``j // n``): every row once per pass over the source, across epochs.
    With them, an epoch's draws of the source are chosen with replacement,
    seeded by (seed, source, epoch). Everything follows from the position,
    so any process or worker maps it alike; each keeps the tables of the
    last two epochs it used (not pickled), so a batch costs O(batch).
    """

    def __init__(self, sizes: Sequence[int], counts: Sequence[int],
                 probabilities: Sequence[np.ndarray | None], seed: int):
        self._sizes = [int(n) for n in sizes]
        self._counts = [int(c) for c in counts]
        self._probabilities = list(probabilities)
        self._length = sum(self._sizes)
        self._key = shuffle_seed(seed)
        self._recent: tuple[tuple[int, tuple[np.ndarray, np.ndarray]], ...] = ()

    def __getstate__(self) -> dict:
        """Pickles without the cached tables (rebuilt on use)."""
        return {**self.__dict__, "_recent": ()}

    def __call__(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        epochs, offsets = np.divmod(np.asarray(positions, np.int64), self._length)
        which = np.empty(len(offsets), np.int32)
        at = np.empty(len(offsets), np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            sources, rows = self._table(int(epoch))
            which[mask], at[mask] = sources[offsets[mask]], rows[offsets[mask]]
        return which, at

    def _table(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """An epoch's draws, source [L] and position in its rows [L], built once."""
        for cached, table in self._recent:
            if cached == epoch:
                return table
        table = self._build(epoch)
        # Replaced whole, never changed in place: reader threads share it.
        self._recent = (*self._recent[-1:], (epoch, table))
        return table

    def _build(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(len(self._sizes), dtype=np.int32), self._counts)
        sources = _rng(_ORDER, self._key, epoch).permutation(labels)
        rows = np.empty(self._length, np.int64)
        rows[np.argsort(sources, kind="stable")] = np.concatenate(
            [self._source_draws(s, epoch) for s in range(len(self._sizes))])
        return sources, rows

    def _source_draws(self, s: int, epoch: int) -> np.ndarray:
        """Source ``s``'s draws in ``epoch``, in order, as positions in its rows."""
        n, count, p = self._sizes[s], self._counts[s], self._probabilities[s]
        if p is not None:
            return _rng(_CHOICE, self._key, s, epoch).choice(n, count, p=p)
        draws = epoch * count + np.arange(count)  # numbers among all the source's draws
        first, last = int(draws[0]) // n, int(draws[-1]) // n
        chain = np.concatenate([_rng(_PASS, self._key, s, k).permutation(n)
                                for k in range(first, last + 1)])
        return chain[draws - first * n]
