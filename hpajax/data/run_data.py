"""The data of one run, opened once and passed down: stores, split parts, training sources.

A run evaluates on the parts of one store's saved split and trains on a
list of sources, each a store's rows with a drawing weight. Today the list
holds the evaluation store's training part; mixing several stores comes
with ``config.data.sources``. Store locations are kept as the strings the
config gave, so a location may later be a URL (``s3://``, ``gs://``).
"""

from __future__ import annotations

import dataclasses
import hashlib

import ml_collections
import numpy as np

from hpajax.data.store import Store, StoreError, open_store


@dataclasses.dataclass(frozen=True)
class Source:
    """Training samples of one store: its rows and their share of the draws."""

    store: Store
    rows: np.ndarray  # int64 store rows
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class RunData:
    """A run's evaluation store with its split parts, and its training sources."""

    location: str  # the evaluation store, as configured
    store: Store
    split: str
    parts: dict[str, np.ndarray]  # part name -> sorted store rows
    sources: tuple[Source, ...]

    def rows(self, part: str) -> np.ndarray:
        """The store rows of a part of the split; StoreError naming the parts if absent."""
        if part not in self.parts:
            raise StoreError(f"split {self.split!r} of {self.location} has no part {part!r} "
                             f"(its parts: {', '.join(sorted(self.parts))})")
        return self.parts[part]

    def train_labels(self) -> np.ndarray:
        """The labels of every training sample, sources in order."""
        return np.concatenate([s.store.labels[s.rows] for s in self.sources])

    def fingerprint(self) -> dict:
        """What the training data order depends on: the store's Ids and the training rows."""
        rows = np.concatenate([s.rows for s in self.sources]).astype(np.int64)
        return {"store": self.location, "samples": len(self.store.ids),
                "ids_sha256": hashlib.sha256("\n".join(self.store.ids).encode()).hexdigest(),
                "train_split_sha256": hashlib.sha256(rows.tobytes()).hexdigest()}


def open_run_data(cfg: ml_collections.ConfigDict) -> RunData:
    """Opens a config's data (its ``data`` block) once: the store, the split, the sources."""
    location = str(cfg.store)
    store = open_store(location)
    parts = store.split(cfg.split)
    data = RunData(location, store, cfg.split, parts, sources=())
    train = Source(store, data.rows(cfg.train_part))
    return dataclasses.replace(data, sources=(train,))


def whole_store(location: str) -> RunData:
    """Every row of a store as both the training source and the one part ``all``.

    For benchmarks and checks that read a store without a saved split.
    """
    store = open_store(location)
    rows = np.arange(len(store), dtype=np.int64)
    return RunData(str(location), store, "all", {"all": rows}, (Source(store, rows),))
