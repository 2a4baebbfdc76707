"""The data of one run, opened once and passed down: stores, split parts, training sources.

A run evaluates on the parts of one store's saved split and trains on a
list of sources, each a store's rows with a drawing weight: by default the
evaluation store's training part, or several stores' parts mixed with
``config.data.sources`` (e.g. the Kaggle store's ``train`` part with all of
HPAv18). Store locations are kept as the strings the config gave, so a
location may later be a URL (``s3://``, ``gs://``).

A fold run (``config.data.fold`` = k on a split with parts ``fold0`` ..
``fold{K-1}``, as ``tools/split.py --folds=K`` saves) trains on every other
fold (the part ``not_fold{k}``), validates on ``fold{k}`` and tests on the
split's ``test`` part if it has one; ``train_part``/``eval_part``/``test_part``
of the config are then unused. Its held-out fold and test part are taken out
of every source on the evaluation store, whatever part the source names
(``STORE:all:1`` is every other fold), before ``exclude`` and ``oversample``
apply; other stores' sources stay as given.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from hpajax.data.dedupe import read_exclusions
from hpajax.data.sources import Source, oversample_weights
from hpajax.data.store import Store, StoreError, open_store
from hpajax.files import sha256


@dataclasses.dataclass(frozen=True)
class RunData:
    """A run's evaluation store with its split parts, and its training sources."""

    location: str  # the evaluation store, as configured
    store: Store
    split: str
    parts: dict[str, np.ndarray]  # part name -> sorted store rows
    sources: tuple[Source, ...]
    oversample: float = 0.0  # the alpha the sources' draw_weights come from (0: none)
    mixed: bool = False  # whether config.data.sources chose the sources
    # The parts the run trains (without sources), validates and tests on; no test: None.
    train_part: str = "train"
    eval_part: str = "val"
    test_part: str | None = "test"

    def rows(self, part: str) -> np.ndarray:
        """The store rows of a part of the split; StoreError naming the parts if absent."""
        if part not in self.parts:
            raise StoreError(f"split {self.split!r} of {self.location} has no part {part!r} "
                             f"(its parts: {', '.join(sorted(self.parts))})")
        return self.parts[part]

    def train_part_frequency(self) -> np.ndarray:
        """Each class's positive rate in the evaluation store's training part: what the
        "rate" thresholds are matched to."""
        return self.store.labels[self.rows(self.train_part)].mean(0)

    def train_labels(self) -> np.ndarray:
        """The labels of every training sample, sources in order."""
        return np.concatenate([s.store.labels[s.rows] for s in self.sources])

    def fingerprint(self) -> dict:
        """What the training data order depends on: the store's Ids and the training rows;
        with config.data.sources or oversampling, also every source and its weights."""
        rows = np.concatenate([s.rows for s in self.sources]).astype(np.int64)
        out = {"store": self.location, "samples": len(self.store.ids),
               "ids_sha256": sha256("\n".join(self.store.ids).encode()),
               "train_split_sha256": sha256(rows.tobytes())}
        if self.mixed or self.oversample:
            out["sources"] = [{"store": str(s.store.path), "samples": len(s.store.ids),
                               "ids_sha256": sha256("\n".join(s.store.ids).encode()),
                               "rows_sha256": sha256(s.rows.astype(np.int64).tobytes()),
                               "weight": s.weight} for s in self.sources]
            out["oversample"] = self.oversample
        return out


def open_run_data(cfg: ml_collections.ConfigDict) -> RunData:
    """Opens a config's data (its ``data`` block) once: the stores, the split, the sources.

    Training reads ``cfg.sources`` ("LOCATION:PART:WEIGHT" each), or else the
    evaluation store's training part; Ids listed in ``cfg.exclude`` are left
    out of every source, and ``cfg.oversample`` gives each sample a drawing
    weight from its labels. ``cfg.fold`` >= 0 makes it a fold run (module
    docstring).
    """
    location = str(cfg.store)
    stores = {location: open_store(location)}
    data = _with_roles(RunData(location, stores[location], cfg.split,
                               stores[location].split(cfg.split), sources=()), cfg)
    specs = tuple(cfg.get("sources", ()))
    sources = ([_parse_source(spec, data, stores) for spec in specs] if specs
               else [Source(data.store, data.rows(data.train_part))])
    if specs and cfg.get("fold", -1) >= 0:
        sources = _outside_fold(sources, data)
    if cfg.get("exclude"):
        sources = _without(sources, read_exclusions(cfg.exclude), cfg.exclude)
    alpha = float(cfg.get("oversample", 0.0))
    if alpha:
        sources = _oversampled(sources, alpha)
    return dataclasses.replace(data, sources=tuple(sources), oversample=alpha,
                               mixed=bool(specs))


def fold_names(parts: dict[str, np.ndarray] | list[str]) -> list[str]:
    """The folds ``fold0``, ``fold1``, ... of a split's parts, in order (none: [])."""
    names = []
    while f"fold{len(names)}" in parts:
        names.append(f"fold{len(names)}")
    return names


def _with_roles(data: RunData, cfg: ml_collections.ConfigDict) -> RunData:
    """``data`` with the parts the config's run trains, validates and tests on."""
    fold = int(cfg.get("fold", -1))
    if fold < 0:
        return dataclasses.replace(data, train_part=cfg.train_part, eval_part=cfg.eval_part,
                                   test_part=cfg.test_part)
    folds = fold_names(data.parts)
    if len(folds) < 2:
        raise StoreError(f"config.data.fold={fold} needs a split with parts fold0, fold1, ... "
                         f"(tools/split.py --folds=K); split {data.split!r} of {data.location} "
                         f"has {', '.join(sorted(data.parts))}")
    if fold >= len(folds):
        raise ValueError(f"config.data.fold={fold}: split {data.split!r} has {len(folds)} "
                         f"folds, 0 to {len(folds) - 1}")
    rest = np.sort(np.concatenate([data.parts[f] for f in folds if f != f"fold{fold}"]))
    train = f"not_fold{fold}"
    return dataclasses.replace(data, parts={**data.parts, train: rest}, train_part=train,
                               eval_part=f"fold{fold}",
                               test_part="test" if "test" in data.parts else None)


def _outside_fold(sources: list[Source], data: RunData) -> list[Source]:
    """The sources less the fold run's validation and test rows of the evaluation store."""
    held_out = [data.rows(data.eval_part)]
    if data.test_part is not None:
        held_out.append(data.rows(data.test_part))
    held_out = np.concatenate(held_out)
    return [dataclasses.replace(s, rows=s.rows[~np.isin(s.rows, held_out)])
            if s.store is data.store else s for s in sources]


def _parse_source(spec: str, data: RunData, stores: dict[str, Store]) -> Source:
    """A "LOCATION:PART:WEIGHT" entry of config.data.sources as a Source.

    PART is "all" (every row), a part of the split the run evaluates on
    (``config.data.split``), or "SPLIT/PART".
    """
    fields = str(spec).rsplit(":", 2)
    what = f"config.data.sources entry {spec!r}"
    if len(fields) != 3 or not all(fields):
        raise ValueError(f"{what}: expected LOCATION:PART:WEIGHT, e.g. runs/hpav18/store:all:1")
    location, part, weight = fields
    try:
        weight = float(weight)
    except ValueError:
        raise ValueError(f"{what}: weight {weight!r} is not a number") from None
    if not (np.isfinite(weight) and weight > 0):
        raise ValueError(f"{what}: weight must be positive, got {weight}")
    if location not in stores:
        try:
            stores[location] = open_store(location)
        except StoreError as e:
            raise StoreError(f"{what}: {e}") from None
    store = stores[location]
    if store.labels is None:
        raise StoreError(f"{what}: {location} has no labels: cannot train on it")
    if part == "all":
        return Source(store, np.arange(len(store), dtype=np.int64), weight)
    split, _, name = part.rpartition("/")
    parts = store.split(split or data.split)
    if name not in parts:
        raise StoreError(f"{what}: split {split or data.split!r} of {location} has no part "
                         f"{name!r} (its parts: {', '.join(sorted(parts))}, or 'all')")
    return Source(store, parts[name], weight)


def _without(sources: list[Source], excluded: frozenset[str], path: str) -> list[Source]:
    """The sources less the rows whose Ids are excluded; says how many went."""
    kept = []
    for source in sources:
        keep = np.array([source.store.ids[r] not in excluded for r in source.rows], bool)
        print(f"config.data.exclude={path}: {int((~keep).sum())} of {len(keep)} training "
              f"samples of {source.store.path} left out")
        kept.append(dataclasses.replace(source, rows=source.rows[keep]))
    return kept


def _oversampled(sources: list[Source], alpha: float) -> list[Source]:
    """The sources with draw weights from their labels and the union's class frequencies."""
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"config.data.oversample={alpha}: choose 0 (off) or a positive alpha")
    labels = [s.store.labels[s.rows] for s in sources]
    frequency = np.concatenate(labels).mean(0)
    return [dataclasses.replace(s, draw_weights=oversample_weights(y, frequency, alpha))
            for s, y in zip(sources, labels)]


def whole_store(location: str) -> RunData:
    """Every row of a store as both the training source and the one part ``all``.

    For benchmarks and checks that read a store without a saved split.
    """
    store = open_store(location)
    rows = np.arange(len(store), dtype=np.int64)
    return RunData(str(location), store, "all", {"all": rows}, (Source(store, rows),),
                   train_part="all", eval_part="all", test_part=None)
