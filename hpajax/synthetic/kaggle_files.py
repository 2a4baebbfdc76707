"""Writing a synthetic set in the Kaggle 2019 layout: Ids, PNG planes, the CSV."""

from __future__ import annotations

import csv
import multiprocessing
import os
import pathlib
import struct
import uuid
import zlib

import numpy as np
import tqdm

from hpajax import classes
from hpajax.synthetic import label_model
from hpajax.synthetic import render as render_lib

_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "hpajax/synthetic")
_CHUNK = 8  # samples per task handed to a worker process


def sample_id(seed: int, index: int, split: str = "train") -> str:
    """Kaggle-like UUID-shaped Id of sample ``index``; differs between splits."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{split}/{seed}/{index}"))


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Sample ``index``'s own generator, so output ignores the worker count."""
    return np.random.default_rng([seed, label_model.SPLITS[split], 1, index])


def _png(plane: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a uint8 [H, W] plane.

    Every row uses PNG's "Sub" filter, deflated at zlib level 1: faster to
    write than PIL's per-row filter search and, like the real Kaggle PNGs,
    as costly to decode, so data-path benchmarks on synthetic sets see the
    real decoding cost (BENCHMARKS.md, "Measurements behind the defaults").
    """
    height, width = plane.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 1  # filter type "Sub": each byte minus its left neighbour, mod 256
    rows[:, 1] = plane[:, 0]
    np.subtract(plane[:, 1:], plane[:, :-1], out=rows[:, 2:])
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY)
    data = packer.compress(rows.tobytes()) + packer.flush()

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def _write_chunk(task: tuple[str, str, int, int, int, np.ndarray]) -> int:
    """Render and write samples ``start...``; returns how many (worker entry)."""
    image_dir, split, seed, image_size, start, labels = task
    for k, row in enumerate(labels):
        index = start + k
        planes = render_lib.render_planes(row, image_size, sample_rng(seed, split, index))
        stem = os.path.join(image_dir, sample_id(seed, index, split))
        for channel, plane in zip(classes.CHANNELS, planes):
            pathlib.Path(f"{stem}_{channel}.png").write_bytes(_png(plane))
    return len(labels)


def generate(out_dir: str | os.PathLike, num_samples: int, image_size: int = 512,
             seed: int = 0, workers: int | None = None,
             labels_csv: str | os.PathLike | None = None, test: bool = False) -> pathlib.Path:
    """Write a synthetic data set in the Kaggle 2019 layout; returns the csv.

    Train: ``out_dir/train/{Id}_{channel}.png`` and ``out_dir/train.csv``
    (``Id,Target``, row ``i`` is sample ``i``). With ``test``:
    ``out_dir/test/`` and ``out_dir/sample_submission.csv`` (``Id,Predicted``,
    all ``0``), with Ids disjoint from train's. Labels come from
    ``sample_labels`` (or, for test, the same draw in the test stream).
    ``workers`` processes render in parallel (default: all cores); the
    output does not depend on it. The csv is written last.
    """
    label_model.check_positive("num_samples", num_samples)
    label_model.check_seed(seed)
    render_lib.check_image_size(image_size)
    workers = (os.cpu_count() or 1) if workers is None else workers
    label_model.check_positive("workers", workers)
    split = "test" if test else "train"
    labels = label_model.split_labels(num_samples, seed, labels_csv, split)
    out = pathlib.Path(out_dir)
    image_dir = out / split
    image_dir.mkdir(parents=True, exist_ok=True)

    tasks = [(str(image_dir), split, seed, image_size, start, labels[start:start + _CHUNK])
             for start in range(0, num_samples, _CHUNK)]
    workers = min(workers, len(tasks))
    with tqdm.tqdm(total=num_samples, desc=f"synthetic {split}", unit="sample") as bar:
        if workers == 1:
            for task in tasks:
                bar.update(_write_chunk(task))
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for done in pool.imap_unordered(_write_chunk, tasks):
                    bar.update(done)

    csv_path = out / ("sample_submission.csv" if test else "train.csv")
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Id", "Predicted" if test else "Target"])
        for index, row in enumerate(labels):
            target = "0" if test else " ".join(str(c) for c in np.flatnonzero(row))
            writer.writerow([sample_id(seed, index, split), target])
    return csv_path
