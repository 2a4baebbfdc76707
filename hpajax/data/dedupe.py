"""Near-duplicate images across two stores, to keep copies of held-out images out of training.

Many HPAv18 external images are Kaggle images' microscope fields again, at
another resolution and JPEG-recompressed; training on a copy of a validation or
test image leaks it. Every image gets a signature: per reference channel
(``SIGNATURE_CHANNELS``) an area-averaged ``SIGNATURE_SIZE`` px thumbnail,
mean-subtracted and L2-normalized, the channels concatenated and scaled by
``1/sqrt(C)``. The dot product of two signatures is then the mean over channels
of the thumbnails' correlation: near 1 for the same field at any store size,
gain or offset, low for unrelated fields. Each row of store B (``--store``) is
matched to its best row of store A (``--against``); rows scoring at least
``THRESHOLD`` are duplicates. ``tools/dedupe.py`` writes them as
``Id,duplicate_of,score``; ``read_exclusions`` reads such a file (or any CSV
with an ``Id`` column) for ``config.data.exclude``.

The signature's size, channels and threshold were chosen on synthetic
resized and recompressed copies (``experiments/bench_dedupe.py``; the figures
are in BENCHMARKS.md). The green channel is left out: a dim protein stain is
mostly camera noise, which recompression flattens.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from hpajax.data import store as storelib
from hpajax.data.labels import read_csv_rows
from hpajax.files import write_atomic

# The stains that draw the field's cells; 32 px separates only slightly better, for 4x
# the memory and matching time (BENCHMARKS.md, "Near-duplicates across stores").
SIGNATURE_CHANNELS: tuple[str, ...] = ("red", "blue", "yellow")
SIGNATURE_SIZE = 16
# In the measured gap between the best distinct pair and the worst copy (BENCHMARKS.md),
# nearer the copies: real sets have a thousand times more distinct pairs, so a higher
# best one, and copies milder than those measured.
THRESHOLD = 0.9
HEADER = ("Id", "duplicate_of", "score")
# Histogram bins of the summary, as offsets from the threshold.
_BIN_OFFSETS = (-0.3, -0.2, -0.1, 0.0, 0.05)
_READ_BATCH = 64  # images per store read; one more read is in flight while one is scored


@dataclasses.dataclass(frozen=True)
class Matches:
    """Every row of store B with its most similar row of store A."""

    ids: list[str]  # B's Ids, in store order
    match_ids: list[str]  # the best A Id of each B row
    scores: np.ndarray  # float32 [Nb]: signature dot product, in [-1, 1]


def area_weights(source: int, size: int) -> np.ndarray:
    """float32 [size, source]: how much of each source pixel every output pixel averages.

    Output pixel i covers source pixels ``[i, i+1) * source / size``; each row sums to 1.
    """
    edges = np.arange(size + 1) * (source / size)
    pixels = np.arange(source)
    overlap = (np.minimum(edges[1:, None], pixels[None, :] + 1)
               - np.maximum(edges[:-1, None], pixels[None, :]))
    return (np.maximum(overlap, 0.0) * (size / source)).astype(np.float32)


def thumbnails(images: np.ndarray, size: int) -> np.ndarray:
    """Area-averaged float32 [B, size, size, C] thumbnails of uint8 [B, S, S, C] images.

    A reshape-mean when ``size`` divides S (the usual store sizes), else the
    exact area weights along both axes.
    """
    n, side, _, channels = images.shape
    if side % size == 0:
        k = side // size
        return images.reshape(n, size, k, size, k, channels).mean((2, 4), dtype=np.float32)
    w = area_weights(side, size)
    rows = np.einsum("iy,nyxc->nixc", w, images.astype(np.float32), optimize=True)
    return np.einsum("jx,nixc->nijc", w, rows, optimize=True)


def signatures(images: np.ndarray, size: int = SIGNATURE_SIZE) -> np.ndarray:
    """float32 [B, C * size * size] signatures of uint8 [B, S, S, C] images (see the module doc).

    A flat channel (no variation) contributes zeros rather than dividing by zero.
    """
    n, channels = images.shape[0], images.shape[-1]
    planes = thumbnails(images, size).transpose(0, 3, 1, 2).reshape(n, channels, size * size)
    planes -= planes.mean(-1, keepdims=True)
    norms = np.linalg.norm(planes, axis=-1, keepdims=True)
    planes /= np.maximum(norms, np.float32(1e-6)) * np.float32(np.sqrt(channels))
    return planes.reshape(n, -1)


def _batches(store: storelib.Store, rows: np.ndarray) -> Iterator[np.ndarray]:
    """The signature channels of ``rows``' images in batches; the next read starts first."""
    channels = [store.channels.index(c) for c in SIGNATURE_CHANNELS]
    pending = None
    for start in range(0, len(rows), _READ_BATCH):
        future = store.images[rows[start:start + _READ_BATCH]].read()
        if pending is not None:
            yield pending.result()[..., channels]
        pending = future
    if pending is not None:
        yield pending.result()[..., channels]


def _check_pair(store: storelib.Store, against: storelib.Store, size: int) -> None:
    """StoreError unless two different stores both have the signature channels and size."""
    if store.path.resolve() == against.path.resolve():
        raise storelib.StoreError(f"{store.path}: a store cannot be matched against itself")
    for s in (store, against):
        missing = [c for c in SIGNATURE_CHANNELS if c not in s.channels]
        if missing:
            raise storelib.StoreError(f"{s.path}: no {', '.join(missing)} channel (has "
                                      f"{', '.join(s.channels)}); signatures need "
                                      f"{', '.join(SIGNATURE_CHANNELS)}")
        if s.image_size < size:
            raise storelib.StoreError(f"{s.path}: images of {s.image_size} px are smaller than "
                                      f"the {size} px signature")


def match_stores(store: storelib.Store, against: storelib.Store,
                 against_rows: np.ndarray | None = None,
                 size: int = SIGNATURE_SIZE) -> Matches:
    """Finds for every row of ``store`` its best match among ``against_rows`` of ``against``.

    Holds ``against``'s signatures in memory and scores ``store`` one read
    batch at a time, so memory stays at [Na, D] plus [batch, Na] scores.
    """
    _check_pair(store, against, size)
    rows = np.arange(len(against)) if against_rows is None else np.asarray(against_rows)
    if rows.size == 0:
        raise storelib.StoreError(f"{against.path}: no rows to match against")
    known = np.concatenate([signatures(x, size) for x in _batches(against, rows)]).T
    best, scores = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for images in _batches(store, np.arange(len(store))):
        block = signatures(images, size) @ known
        best.append(block.argmax(1))
        scores.append(block.max(1))
    return Matches(ids=list(store.ids),
                   match_ids=[against.ids[r] for r in rows[np.concatenate(best)]],
                   scores=np.concatenate(scores))


def write_duplicates(path: str | os.PathLike, matches: Matches, threshold: float) -> int:
    """Writes the rows scoring at least ``threshold`` as ``Id,duplicate_of,score``, atomically.

    Sorted by score, highest first (then by Id); returns how many rows.
    """
    keep = np.flatnonzero(matches.scores >= threshold)
    keep = keep[np.lexsort((np.array(matches.ids, object)[keep], -matches.scores[keep]))]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows((matches.ids[i], matches.match_ids[i], f"{matches.scores[i]:.4f}")
                     for i in keep)
    write_atomic(path, text.getvalue())
    return len(keep)


def read_exclusions(path: str | os.PathLike) -> frozenset[str]:
    """The Ids of a CSV's ``Id`` column: ``tools/dedupe.py``'s output or any such list.

    Raises ValueError naming the file (and line) if it cannot be read, has no
    ``Id`` column or a row without an Id.
    """
    path = pathlib.Path(path)
    rows = read_csv_rows(path, "the exclusion list")
    if not rows or "Id" not in rows[0]:
        raise ValueError(f"{path}:1: no Id column in the header (got {rows[0] if rows else []})")
    column = rows[0].index("Id")
    ids = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # blank line
        if column >= len(row) or not row[column]:
            raise ValueError(f"{path}:{line}: no Id in this row")
        ids.append(row[column])
    return frozenset(ids)


def _histogram(scores: np.ndarray, threshold: float) -> list[str]:
    """Counts of best scores in bins around the threshold, one line each."""
    edges = [threshold + offset for offset in _BIN_OFFSETS]
    counts = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(edges) + 1)
    names = ([f"below {edges[0]:g}"]
             + [f"{lo:g} to {hi:g}" for lo, hi in zip(edges, edges[1:])]
             + [f"{edges[-1]:g} and above"])
    marks = ["duplicate" if i > _BIN_OFFSETS.index(0.0) else "" for i in range(len(names))]
    return [f"  {name:<14} {count:>7}  {mark}".rstrip()
            for name, count, mark in zip(names, counts, marks)]


def _against_rows(against: storelib.Store, parts: Sequence[str] | None,
                  split: str) -> np.ndarray | None:
    """The rows of the named parts of ``against``'s split, sorted; None for every row."""
    if not parts:
        return None
    saved = against.split(split)
    unknown = [p for p in parts if p not in saved]
    if unknown:
        raise storelib.StoreError(f"{against.path}: split {split!r} has no part "
                                  f"{', '.join(unknown)} (parts: {', '.join(saved)})")
    return np.unique(np.concatenate([saved[p] for p in parts]))


def dedupe_stores(store_path: str | os.PathLike, against_path: str | os.PathLike,
                  output: str | os.PathLike, against_parts: Sequence[str] | None = None,
                  split: str = "default", threshold: float = THRESHOLD) -> tuple[int, str]:
    """Writes the rows of one store that copy rows of another (``tools/dedupe.py``).

    Matches every row of ``store_path`` against the rows of ``against_parts``
    of ``against_path``'s ``split`` (all rows if None) and writes those scoring
    at least ``threshold`` to ``output``. Returns how many, and a summary with
    the histogram of best scores. Raises ValueError (StoreError for a store).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"--threshold={threshold}: must be in (0, 1]")
    if not pathlib.Path(output).parent.is_dir():
        raise ValueError(f"--output={output}: folder {pathlib.Path(output).parent} does not exist")
    store, against = storelib.open_store(store_path), storelib.open_store(against_path)
    rows = _against_rows(against, against_parts, split)
    matches = match_stores(store, against, rows)
    count = write_duplicates(output, matches, threshold)
    which = (f"parts {', '.join(against_parts)} of split {split!r} ({len(rows)} rows)"
             if rows is not None else f"all {len(against)} rows")
    lines = [f"matched {len(store)} rows of {store.path} against {which} of {against.path}",
             f"  {'best score':<14} {'rows':>7}",
             *_histogram(matches.scores, threshold),
             f"{count} duplicates (score >= {threshold:g}) written to {output}"]
    return count, "\n".join(lines)
