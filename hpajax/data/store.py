"""The converted-data store: a folder (local, ``s3://`` or ``gs://``) every later stage reads.

Layout of ``STORE/``::

    images/            TensorStore zarr3 array [N, S, S, C] uint8, channels last
                       (red, green, blue, yellow); one chunk per sample, chunks
                       grouped into shard files of ``shard_samples`` samples.
    ids.txt            one sample Id per line, in array order.
    labels.npy         multi-hot uint8 [N, 28] (absent for unlabeled sets).
    metadata.json      source, size, channels, codec, creation command; written
                       last, so its presence marks a complete store (object
                       storage has no rename: this object is the commit).
    splits/NAME.json   named index splits (see ``hpajax.data.split``).
    bad_samples.csv    samples left out by ``convert --skip_bad``, and why.

Everything here is plain NumPy/JSON, read and written through ``etils.epath``,
except the image array, which TensorStore opens on the same location's kvstore
(``kvstores.spec``); nothing imports JAX.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from typing import Any

import numpy as np
import tensorstore as ts
from etils import epath

from hpajax import classes
from hpajax.data import kvstores
from hpajax.files import location, make_folder, storage_errors, write_atomic, write_json

IMAGES = "images"
IDS = "ids.txt"
LABELS = "labels.npy"
METADATA = "metadata.json"
SPLITS = "splits"
BAD_SAMPLES = "bad_samples.csv"

# Codec name -> zarr3 inner codecs after "bytes". Chosen by
# experiments/bench_data.py; see BENCHMARKS.md.
CODECS: dict[str, list[dict[str, Any]]] = {
    "raw": [],
    "zstd1": [{"name": "zstd", "configuration": {"level": 1}}],
    "zstd3": [{"name": "zstd", "configuration": {"level": 3}}],
    "lz4": [{"name": "blosc", "configuration": {
        "cname": "lz4", "clevel": 5, "shuffle": "noshuffle", "typesize": 1}}],
}
DEFAULT_CODEC = "zstd1"
# Aim for shard files of about this many uncompressed bytes, and at most this
# many samples, so small images still give enough shards to convert in parallel.
_SHARD_BYTES = 64 << 20
_MAX_SHARD_SAMPLES = 256


class StoreError(ValueError):
    """A store is missing, incomplete or inconsistent."""


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def check_name(name: str, what: str = "split name") -> None:
    """Refuses a split or part name that is not a plain identifier: names become file names.

    ``what`` says where the name came from (e.g. ``--name``), for the message.
    """
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        shown = f"{what}={name!r}" if what.startswith("--") else f"{what} {name!r}"
        raise StoreError(f"{shown}: not a plain name (letters, digits, '_' and '-', "
                         "not starting with '-')")


def default_shard_samples(image_size: int, channels: int) -> int:
    """Samples per shard file: ~64 MiB raw, so 31,072 samples make few files."""
    return max(1, min(_MAX_SHARD_SAMPLES, _SHARD_BYTES // (image_size * image_size * channels)))


def _images_spec(path: str | os.PathLike, name: str) -> dict[str, Any]:
    return {
        "driver": "zarr3",
        "kvstore": kvstores.spec(epath.Path(path) / name),
        # Shard indices are tiny and read on every access: keep them cached.
        "context": {"cache_pool": {"total_bytes_limit": 16 << 20}},
    }


def create_images(
    path: str | os.PathLike,
    num_samples: int,
    image_size: int,
    channels: int = classes.NUM_CHANNELS,
    shard_samples: int | None = None,
    codec: str = DEFAULT_CODEC,
    name: str = IMAGES,
) -> ts.TensorStore:
    """Creates (replacing any old one) the image array of a store for writing."""
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(CODECS)}")
    shard_samples = shard_samples or default_shard_samples(image_size, channels)
    sample = [1, image_size, image_size, channels]
    spec = _images_spec(path, name)
    spec["metadata"] = {
        "shape": [num_samples, image_size, image_size, channels],
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {
            "chunk_shape": [shard_samples, *sample[1:]]}},
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": sample,
            "codecs": [{"name": "bytes"}, *CODECS[codec]],
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                             {"name": "crc32c"}],
            "index_location": "end",
        }}],
        "dimension_names": ["sample", "y", "x", "channel"],
    }
    # Deleted through epath: TensorStore's delete_existing lists by key range, which the
    # GCS emulator the tests use ignores (it would delete the store's other arrays).
    (epath.Path(path) / name).rmtree(missing_ok=True)
    return ts.open(spec, create=True).result()


def open_images(path: str | os.PathLike, *, write: bool = False,
                name: str = IMAGES) -> ts.TensorStore:
    """Opens the image array of a store (also an unfinished one, for writers)."""
    mode = {"open": True, "read": True, "write": write}
    return ts.open(_images_spec(path, name), **mode).result()


def shard_samples_of(images: ts.TensorStore) -> int:
    """Samples per shard file of an image array."""
    return int(images.chunk_layout.write_chunk.shape[0])


@dataclasses.dataclass(frozen=True)
class Store:
    """A converted data set: images in TensorStore, the rest in memory."""

    path: epath.Path
    images: ts.TensorStore
    ids: list[str]
    labels: np.ndarray | None
    metadata: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.metadata["channels"])

    def split(self, name: str = "default") -> dict[str, np.ndarray]:
        """The named split saved with the store: part name -> sorted indices."""
        return load_split(self.path, name)

    def split_names(self) -> list[str]:
        return sorted(p.stem for p in (self.path / SPLITS).glob("*.json"))


def open_store(path: str | os.PathLike) -> Store:
    """Opens a complete store for reading; raises StoreError if it is not one."""
    try:
        path = location(path, "store")
    except ValueError as e:
        raise StoreError(str(e)) from None
    try:
        meta_path = path / METADATA
        if not meta_path.is_file():
            hint = (" (an unfinished conversion: rerun the same convert command)"
                    if (path / IMAGES).exists() else "")
            raise StoreError(f"{path} is not a complete hpajax store: no {METADATA}{hint}")
        metadata = json.loads(meta_path.read_text())
        ids = (path / IDS).read_text().splitlines()
        labels_path = path / LABELS
        labels = _load_labels(labels_path, len(ids)) if labels_path.exists() else None
        images = open_images(path)
    except StoreError:
        raise
    except storage_errors() as e:  # a bucket, endpoint or credentials problem
        raise StoreError(f"{path}: cannot read the store: {e}") from None
    n = len(ids)
    if images.shape[0] != n:
        raise StoreError(f"{path}: inconsistent store: {n} ids, images {tuple(images.shape)}")
    return Store(path=path, images=images, ids=ids, labels=labels, metadata=metadata)


def _load_labels(file: epath.Path, n: int) -> np.ndarray:
    """``labels.npy`` as uint8 [n, 28] multi-hot; a StoreError says what is wrong with it.

    Checked here because every consumer (loss, split, metrics) trusts 0/1 labels.
    """
    try:
        labels = np.load(io.BytesIO(file.read_bytes()))
    except (OSError, ValueError, EOFError) as e:
        raise StoreError(f"{file}: cannot read: {e}") from None
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise StoreError(f"{file}: dtype {labels.dtype}, expected integers or bool (0/1)")
    if labels.shape != (n, classes.NUM_CLASSES):
        raise StoreError(f"{file}: shape {labels.shape}, expected ({n}, "
                         f"{classes.NUM_CLASSES}) for the store's {n} ids")
    bad = np.argwhere((labels != 0) & (labels != 1))
    if bad.size:
        row, col = bad[0]
        raise StoreError(f"{file}: values other than 0/1 (found {labels[row, col]} at row "
                         f"{row}, class {col}; {len(bad)} such values)")
    return labels.astype(np.uint8)


def finalize(
    path: str | os.PathLike,
    ids: list[str],
    labels: np.ndarray | None,
    metadata: dict[str, Any],
) -> None:
    """Writes ids, labels and (last, marking completion) metadata of a store."""
    path = epath.Path(path)
    write_atomic(path / IDS, "".join(f"{i}\n" for i in ids))
    if labels is not None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(labels, np.uint8))
        write_atomic(path / LABELS, buffer.getvalue())
    write_json(path / METADATA, metadata)


def write_store(
    path: str | os.PathLike,
    images: np.ndarray,
    ids: list[str],
    labels: np.ndarray | None,
    metadata: dict[str, Any] | None = None,
    *,
    shard_samples: int | None = None,
    codec: str = DEFAULT_CODEC,
) -> Store:
    """Writes a whole in-memory data set as a store (for tests and small sets)."""
    n, size, _, c = images.shape
    arr = create_images(path, n, size, c, shard_samples, codec)
    arr.write(np.asarray(images, np.uint8)).result()
    meta = {"source": "in-memory", "image_size": size, "codec": codec,
            "channels": list(classes.CHANNELS[:c]), "num_samples": n}
    finalize(path, list(ids), labels, {**meta, **(metadata or {})})
    return open_store(path)


def save_split(
    path: str | os.PathLike,
    name: str,
    parts: dict[str, np.ndarray],
    info: dict[str, Any] | None = None,
) -> epath.Path:
    """Saves a named split (part name -> indices) with the store."""
    check_name(name)
    for part in parts:
        check_name(part, "part name")
    out = epath.Path(path) / SPLITS / f"{name}.json"
    make_folder(out.parent)
    write_json(out, {"info": info or {},
                     "parts": {k: np.sort(v).astype(int).tolist() for k, v in parts.items()}})
    return out


def load_split(path: str | os.PathLike, name: str = "default") -> dict[str, np.ndarray]:
    """Loads a named split saved with ``save_split``."""
    parts = _split_file(path, name)["parts"]
    return {k: np.asarray(v, np.int64) for k, v in parts.items()}


def split_info(path: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """The info a saved split was made with, with its part names under "parts";
    None if the store has no such split."""
    check_name(name)
    if not (epath.Path(path) / SPLITS / f"{name}.json").is_file():
        return None
    saved = _split_file(path, name)
    return {**saved["info"], "parts": list(saved["parts"])}


def _split_file(path: str | os.PathLike, name: str) -> dict[str, Any]:
    check_name(name)
    f = epath.Path(path) / SPLITS / f"{name}.json"
    if not f.is_file():
        raise StoreError(f"{path}: no split named {name!r} ({f} missing); "
                         "create it with tools/split.py")
    return json.loads(f.read_text())
