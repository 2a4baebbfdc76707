"""Grain input pipeline: store rows -> host batches of uint8 images and labels.

Batches are dicts of NumPy arrays that stay uint8 on the host (conversion to
float and augmentation happen later, on device)::

    image  uint8 [B, S, S, C]   C = len(channels), channels last
    label  uint8 [B, 28]        multi-hot; zeros for unlabeled stores (eval only)
    index  int64 [B]            store row of each sample (-1 for eval padding)
    source int32 [B]            training only: which source (``index`` is a row of its store)
    mask   bool  [B]            eval only: True for real samples

Design:

* ``StoreSource`` is a Grain ``RandomAccessDataSource`` over rows of an
  opened store. Its pickled state is the store location plus small NumPy
  arrays (the rows, their labels); the store's TensorStore image array is
  used in the process that opened it, reopened on first use in any other,
  and dropped when pickled, because Grain starts its worker
  processes with ``spawn`` and a TensorStore handle must not cross a fork.
* A batch is read with one TensorStore read of an index array, so TensorStore
  decodes all the batch's chunks concurrently in its own thread pool instead
  of paying a Python read per sample (see BENCHMARKS.md, section "Measurements
  behind the defaults").
* Training shuffles globally and then shards: positions ``range(n)`` are
  shuffled (reshuffled every epoch: Grain folds the epoch into the shuffle
  seed when ``shuffle`` comes before ``repeat``), repeated forever, cut into
  global batches of ``K * B``, and process ``k`` of ``K`` takes the ``k``-th
  block of ``B`` of each. The ``K`` processes' step-``t`` batches, in process
  order, are exactly the single-process step-``t`` batch of size ``K * B``,
  in its order: the sample sequence, and which sample each row's
  augmentation and device get, do not depend on the number of hosts; within
  each epoch the shards are disjoint and cover the split.
* Training draws follow the sources' draw plan (``sources.draw_plan``):
  which (source, row) each global position is, from the seed alone; one
  source without draw weights is Grain's shuffle of its rows, reshuffled
  every epoch. A batch reads its draws with one read per source present.
* Evaluation gives each process a contiguous block of the split, in order, in
  batches padded with masked-out zero samples; every process yields the same
  number of batches (padding with fully masked batches) so that jitted
  collective steps line up.
* Iterator state (``it.get_state()``) is a small JSON-serializable dict of
  ints, also with worker processes, so it can go into Orbax checkpoints.

Nothing here imports JAX: the trainer passes ``jax.process_index()`` and
``jax.process_count()`` in as ``shard_index`` and ``shard_count``.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np
import tensorstore as ts
from absl import flags

from hpajax import classes
from hpajax.data import store as storelib
from hpajax.data.sources import Draws, Source, check_trainable, draw_plan
from hpajax.data.store import Store

Batch = dict[str, np.ndarray]

# Batches each process reads ahead (and reads concurrently) by default.
DEFAULT_PREFETCH = 2


def _check_channels(channels: Sequence[int] | None, num_channels: int) -> tuple[int, ...]:
    """Validates a channel subset (store channel numbers, in output order)."""
    if channels is None:
        return tuple(range(num_channels))
    chans = tuple(int(c) for c in channels)
    if not chans:
        raise ValueError("channels must not be empty")
    if len(set(chans)) != len(chans):
        raise ValueError(f"channels {chans} has duplicates")
    bad = [c for c in chans if not 0 <= c < num_channels]
    if bad:
        raise ValueError(f"channels {bad} out of range: the store has {num_channels} "
                         f"channels {classes.CHANNELS[:num_channels]}")
    return chans


def _channel_selection(channels: tuple[int, ...]) -> slice | np.ndarray:
    """How to select channels: a slice for an ascending run, else an index array.

    TensorStore copies a channel slice about as fast as the whole image but an
    index array on the channel axis slower than reading all channels and
    indexing in NumPy, so only runs are selected inside TensorStore (see
    BENCHMARKS.md, section "Measurements behind the defaults").
    """
    if channels == tuple(range(channels[0], channels[0] + len(channels))):
        return slice(channels[0], channels[-1] + 1)
    return np.asarray(channels, np.int64)


def _check_rows(rows: Sequence[int] | np.ndarray | None, num_samples: int) -> np.ndarray:
    """Validates store rows (None: all) and returns them as int64."""
    if rows is None:
        return np.arange(num_samples, dtype=np.int64)
    rows = np.asarray(rows)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"rows must be a 1-D integer array, got {rows.dtype} {rows.shape}")
    rows = rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= num_samples):
        raise ValueError(f"rows out of range [0, {num_samples})")
    return rows


class StoreSource:
    """Random access to some rows of a store (a Grain data source).

    Item ``i`` is the ``i``-th of ``rows`` (None: all of them):
    ``{"image": uint8 [S, S, C], "label": uint8 [28], "index": int64 store
    row}``. Unlabeled stores give zero labels. The pickled state holds no
    TensorStore handle: another process reopens the image array on its
    first read.
    """

    def __init__(
        self,
        store: Store,
        rows: Sequence[int] | np.ndarray | None = None,
        *,
        channels: Sequence[int] | None = None,
    ):
        self._path = str(store.path)
        self._rows = _check_rows(rows, len(store))
        self._labels = None if store.labels is None else (
            store.labels[self._rows].astype(np.uint8))
        num_channels = int(store.images.shape[3])
        self._channels = _check_channels(channels, num_channels)
        self._channel_selection = _channel_selection(self._channels)
        self._image_size = store.image_size
        self._images: ts.TensorStore | None = store.images

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return (f"StoreSource({self._path!r}, {len(self)} samples, "
                f"channels={self._channels})")

    def __getstate__(self) -> dict:
        """Pickles everything but the TensorStore handle (reopened on use)."""
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    @property
    def has_labels(self) -> bool:
        return self._labels is not None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """[S, S, C] of one output image."""
        return (self._image_size, self._image_size, len(self._channels))

    def _array(self) -> ts.TensorStore:
        """The image array, opened on first use in this process."""
        if self._images is None:
            self._images = storelib.open_images(self._path)
        return self._images

    def _read(self, rows: np.ndarray | int) -> np.ndarray:
        """Reads images of store rows (an int or an index array) in one read."""
        view = self._array()[rows]
        if isinstance(self._channel_selection, slice):
            return view[..., self._channel_selection].read().result()
        return view.read().result()[..., self._channel_selection]

    def _labels_at(self, positions: np.ndarray | int) -> np.ndarray:
        if self._labels is None:
            return np.zeros(np.shape(positions) + (classes.NUM_CLASSES,), np.uint8)
        return self._labels[positions]

    def __getitem__(self, position: int) -> Batch:
        position = int(position)
        row = int(self._rows[position])
        return {"image": self._read(row), "label": self._labels_at(position),
                "index": np.int64(row)}

    def read_batch(self, positions: np.ndarray) -> Batch:
        """Reads the samples at split positions as one batch (one TensorStore read)."""
        positions = np.asarray(positions, np.int64)
        rows = self._rows[positions]
        return {"image": self._read(rows), "label": self._labels_at(positions),
                "index": rows}

    def read_padded_batch(self, positions: np.ndarray) -> Batch:
        """Like ``read_batch``, but positions < 0 are padding: zero and masked out."""
        positions = np.asarray(positions, np.int64)
        mask = positions >= 0
        if mask.all():
            return {**self.read_batch(positions), "mask": mask}
        batch = {**_blank_batch(len(positions), self.image_shape), "mask": mask}
        if mask.any():
            for key, value in self.read_batch(positions[mask]).items():
                batch[key][mask] = value
        return batch


def _blank_batch(size: int, image_shape: tuple[int, int, int]) -> Batch:
    """``size`` zero samples of store row -1, to be filled in by mask."""
    return {"image": np.zeros((size, *image_shape), np.uint8),
            "label": np.zeros((size, classes.NUM_CLASSES), np.uint8),
            "index": np.full(size, -1, np.int64)}


def ensure_flags_parsed() -> None:
    """Marks absl flags parsed if nobody parsed them (pytest, notebooks).

    Grain's multiprocessing reads its absl flags; programs started with
    ``absl.app.run`` have parsed them already, other callers get the defaults.
    """
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _check_sharding(shard_index: int, shard_count: int) -> None:
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def to_iter(ds: grain.MapDataset, num_workers: int, prefetch: int) -> grain.IterDataset:
    """Turns a MapDataset of batches into an IterDataset with read-ahead.

    Each process reads ``prefetch`` batches ahead, concurrently in threads;
    ``num_workers > 0`` moves reading into that many worker processes, each
    producing every ``num_workers``-th batch.
    """
    if num_workers < 0 or prefetch < 0:
        raise ValueError(f"num_workers and prefetch must be >= 0, got {num_workers}, {prefetch}")
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch))
    if num_workers:
        ensure_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return it


def train_dataset(
    sources: Sequence[Source],
    *,
    batch_size: int,
    seed: int,
    channels: Sequence[int] | None = None,
    num_workers: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    prefetch: int = DEFAULT_PREFETCH,
) -> grain.IterDataset:
    """Endless training batches of this process's shard of draws from the sources.

    ``batch_size`` is per process. The draws, fixed by ``seed``, are those of
    ``sources.draw_plan``: one source without draw weights is reshuffled every
    epoch; several sources, or draw weights, are drawn per sample by weight
    (see ``hpajax.data.sources``). Each global batch of ``batch_size *
    shard_count`` draws is dealt to the processes in blocks of
    ``batch_size``; batches are full (they run on across epochs). A batch's
    ``source`` says which of ``sources`` each sample is from.

    All sources must give images of one shape: a batch has one, and resizing
    on the host would spend the CPU the pipeline is short of, so stores of
    different image sizes are refused (convert them at one size).
    """
    _check_batch_size(batch_size)
    _check_sharding(shard_index, shard_count)
    positions, draws = draw_plan(sources, seed)
    readers = _training_sources(sources, channels)
    total = sum(len(reader) for reader in readers)
    if total < batch_size * shard_count:
        raise ValueError(f"training data of {total} samples is smaller than one global "
                         f"batch ({shard_count} x {batch_size})")
    ds = (positions.batch(batch_size * shard_count, drop_remainder=True)
          .map(_BlockReader(readers, draws, shard_index * batch_size, batch_size)))
    return to_iter(ds, num_workers, prefetch)


def _training_source(source: Source, channels: Sequence[int] | None) -> StoreSource:
    """One source's rows as a StoreSource; a ValueError names its store."""
    where = source.store.path
    try:
        reader = StoreSource(source.store, source.rows, channels=channels)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    check_trainable(source)
    return reader


def _training_sources(train: Sequence[Source],
                      channels: Sequence[int] | None) -> list[StoreSource]:
    """The sources' rows as StoreSources (at least one); refuses any that cannot share a batch."""
    readers = [_training_source(source, channels) for source in train]
    first, (size, _, depth) = train[0].store.path, readers[0].image_shape
    for source, reader in zip(train[1:], readers[1:]):
        other, (other_size, _, other_depth) = source.store.path, reader.image_shape
        if other_size != size:
            raise ValueError(f"{first} has {size} px images but {other} {other_size} px: "
                             "a batch has one image size; convert them at one size")
        if other_depth != depth:
            raise ValueError(f"{first} gives {depth} channels but {other} {other_depth}: "
                             "select channels that both have")
    return readers


def _read_draws(readers: Sequence[StoreSource], which: np.ndarray, at: np.ndarray) -> Batch:
    """Reads draws (source, position in its rows) as one batch, with their ``source``.

    One read per source present, put back in draw order; draws of one
    source (always so with a single source) are its batch as read, uncopied.
    """
    present = np.unique(which)
    if len(present) == 1:
        return {**readers[present[0]].read_batch(at), "source": which}
    batch = {**_blank_batch(len(which), readers[0].image_shape), "source": which}
    for s in present:
        mask = which == s
        for key, value in readers[s].read_batch(at[mask]).items():
            batch[key][mask] = value
    return batch


class _BlockReader:
    """Reads one process's block of a global batch of positions (picklable for workers)."""

    def __init__(self, readers: Sequence[StoreSource], draws: Draws, start: int, size: int):
        self.readers, self.draws, self.start, self.size = list(readers), draws, start, size

    def __call__(self, positions: np.ndarray) -> Batch:
        which, at = self.draws(positions[self.start:self.start + self.size])
        return _read_draws(self.readers, which, at)


def eval_positions(num_samples: int, batch_size: int, shard_index: int,
                   shard_count: int) -> np.ndarray:
    """Split positions of a process's eval batches, [num_batches, B], -1 = padding.

    Process ``k`` gets the ``k``-th of ``shard_count`` near-equal contiguous
    blocks; every process gets the number of batches of the largest block.
    """
    block = -(-num_samples // shard_count)
    num_batches = -(-block // batch_size)
    mine = np.array_split(np.arange(num_samples, dtype=np.int64), shard_count)[shard_index]
    table = np.full(num_batches * batch_size, -1, np.int64)
    table[:len(mine)] = mine
    return table.reshape(num_batches, batch_size)


def eval_dataset(
    store: Store,
    rows: Sequence[int] | np.ndarray | None,
    *,
    batch_size: int,
    channels: Sequence[int] | None = None,
    num_workers: int = 0,
    shard_index: int = 0,
    shard_count: int = 1,
    prefetch: int = DEFAULT_PREFETCH,
) -> grain.IterDataset:
    """Each of this process's share of store ``rows`` once, in order, in masked batches.

    Batches carry ``mask`` (bool [B], True for real samples); padding samples
    are zeros with index -1. All processes yield the same number of batches
    and their masked-in indices together are exactly ``rows``. Works on
    unlabeled stores, whose labels are zeros.
    """
    _check_batch_size(batch_size)
    _check_sharding(shard_index, shard_count)
    source = StoreSource(store, rows, channels=channels)
    if len(source) == 0:
        raise ValueError("cannot evaluate an empty split")
    table = eval_positions(len(source), batch_size, shard_index, shard_count)
    ds = grain.MapDataset.source(list(table)).map(source.read_padded_batch)
    return to_iter(ds, num_workers, prefetch)
