#!/usr/bin/env python3
"""Data-path throughput, one JSON line per figure.

  python experiments/bench_data.py [--num_samples=512 --image_size=512]

Measures, on one synthetic Kaggle-layout set, side by side:
  * memcpy of uint8 samples (the physical ceiling),
  * a single-process PIL loop decoding the PNG quads (the baseline converter),
  * tools/convert.py's converter with 1 and 2 workers,
  * the Grain training pipeline over the store per codec (bytes/sample on
    disk, warm and cold page cache) with 0/1/2 worker processes,
  * the same Grain pipeline decoding the PNG quads per sample instead,
  * the Grain pipeline over the same store on S3 (``--remote_delays_ms``): a
    local S3-compatible server (moto), directly and behind a proxy that delays
    every request (experiments/delay_proxy.py), against the store on disk.
"""

import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import grain
import numpy as np
import portpicker
from absl import app, flags
from etils import epath
from PIL import Image

from delay_proxy import DelayProxy  # a sibling: the script's folder is on sys.path
from hpajax import synthetic
from hpajax.data import convert, images, pipeline, run_data, store
from hpajax.files import files_under

REPO = pathlib.Path(__file__).resolve().parents[1]

flags.DEFINE_string("workdir", "/tmp/hpajax_bench_data", "Scratch directory (reused).")
flags.DEFINE_integer("num_samples", 512, "Synthetic samples.")
flags.DEFINE_integer("image_size", 512, "Image side.")
flags.DEFINE_integer("batch_size", 32, "Pipeline batch size.")
flags.DEFINE_integer("batches", 24, "Timed pipeline batches per figure.")
flags.DEFINE_list("codecs", sorted(store.CODECS), "Codecs to compare.")
flags.DEFINE_list("workers", ["0", "1", "2"], "Pipeline worker processes to compare.")
flags.DEFINE_list("remote_delays_ms", ["0", "20"], "Per-request delays of the S3 figures "
                  "(empty: none; needs hpajax[s3] and moto[server]).")
flags.DEFINE_integer("remote_shard_samples", None, "Samples per shard object of the S3 "
                     "figures' store (default: the zstd1 store's). moto copies a whole "
                     "object per ranged read: smaller objects show less of the server.")
FLAGS = flags.FLAGS


def emit(**fields) -> None:
    print(json.dumps({"bench": "data", **fields}), flush=True)


def dir_bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def drop_cache(path: pathlib.Path) -> None:
    """Evicts a tree's files from the page cache (no root needed)."""
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def warm_cache(path: pathlib.Path) -> None:
    """Reads a tree's files once so they sit in the page cache."""
    for f in path.rglob("*"):
        if f.is_file():
            f.read_bytes()


def bench_memcpy(size: int) -> None:
    src = np.random.default_rng(0).integers(0, 255, (256 << 20,), np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    start, reps = time.perf_counter(), 8
    for _ in range(reps):
        np.copyto(dst, src)
    gbps = reps * src.nbytes / (time.perf_counter() - start) / 2**30
    emit(figure="memcpy", gib_per_s=round(gbps, 2),
         samples_per_s=round(gbps * 2**30 / (size * size * 4)))


def decode_quad(train: pathlib.Path, sample_id: str) -> np.ndarray:
    paths = images.channel_paths(str(train), sample_id, "kaggle")
    return np.stack([np.asarray(Image.open(p)) for p in paths], axis=-1)


def bench_pil_loops(train: pathlib.Path, ids: list[str], size: int, out: pathlib.Path) -> float:
    """Single-process PIL loops: decode only (a floor for any one-process
    converter), and a plain converter that decodes and writes each shard to a
    zarr3 array with the same codec. Returns the plain converter's rate."""
    start = time.perf_counter()
    for sample_id in ids:
        decode_quad(train, sample_id)
    emit(figure="convert", impl="pil_decode_only_1proc",
         samples_per_s=round(len(ids) / (time.perf_counter() - start), 1))
    start = time.perf_counter()
    array = store.create_images(out, len(ids), size, codec=store.DEFAULT_CODEC)
    k = store.shard_samples_of(array)
    for first in range(0, len(ids), k):
        shard = np.stack([decode_quad(train, i) for i in ids[first:first + k]])
        array[first:first + len(shard)].write(shard).result()
    rate = len(ids) / (time.perf_counter() - start)
    emit(figure="convert", impl="pil_loop_1proc", codec=store.DEFAULT_CODEC,
         samples_per_s=round(rate, 1))
    shutil.rmtree(out)
    return rate


def bench_convert(raw: pathlib.Path, out: pathlib.Path, workers: int, codec: str,
                  baseline: float | None) -> None:
    """Times the real command, process start-up and imports included."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "tools" / "convert.py"), "--format=kaggle",
                    f"--input_dir={raw / 'train'}", f"--labels_csv={raw / 'train.csv'}",
                    f"--output_dir={out}", f"--image_size={FLAGS.image_size}",
                    f"--workers={workers}", f"--codec={codec}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rate = len(store.open_store(out)) / (time.perf_counter() - start)
    fields = dict(figure="convert", impl="hpajax", workers=workers, codec=codec,
                  samples_per_s=round(rate, 1))
    if baseline:
        fields["vs_pil_loop"] = round(rate / baseline, 2)
    emit(**fields)


class PngSource:
    """Decodes a Kaggle PNG quad per sample: the usual PyTorch-script data path."""

    def __init__(self, train: pathlib.Path, ids: list[str]):
        self.train, self.ids = train, ids

    def read_batch(self, positions: np.ndarray) -> dict:
        return {"image": np.stack([decode_quad(self.train, self.ids[i]) for i in positions])}


def time_pipeline(ds: grain.IterDataset, batch_size: int, batches: int,
                  cold: pathlib.Path | None = None) -> float:
    """Samples/s after two warm-up batches (which also start the workers).

    With ``cold``, that tree is evicted from the page cache after the warm-up.
    """
    it = iter(ds)
    for _ in range(2):
        next(it)
    if cold is not None:
        drop_cache(cold)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    assert batch["image"].dtype == np.uint8
    return batches * batch_size / (time.perf_counter() - start)


def measure_pipeline(make_ds, files: pathlib.Path, bs: int, batches: int, cold_batches: int,
                     workers: int, **fields) -> None:
    """Warm-cache samples/s, and cold-cache too in-process (worker read-ahead blurs it)."""
    if workers == 0:
        fields["cold_samples_per_s"] = round(
            time_pipeline(make_ds(), bs, cold_batches, cold=files))
    warm_cache(files)
    warm = time_pipeline(make_ds(), bs, batches)
    emit(figure="pipeline", workers=workers, warm_samples_per_s=round(warm), **fields)


def png_dataset(train: pathlib.Path, ids: list[str], batch_size: int, workers: int):
    source = PngSource(train, ids)
    ds = (grain.MapDataset.range(len(ids)).shuffle(0).repeat()
          .batch(batch_size, drop_remainder=True).map(source.read_batch))
    return pipeline.to_iter(ds, workers, pipeline.DEFAULT_PREFETCH)


def store_dataset(location: str, batch_size: int, workers: int):
    return pipeline.train_dataset(run_data.whole_store(location).sources,
                                  batch_size=batch_size, seed=0, num_workers=workers)


@contextlib.contextmanager
def moto_server() -> Iterator[int]:
    """A local S3-compatible server (moto) in its own process, so that serving does not
    contend for the pipeline's interpreter; yields its port."""
    port = portpicker.pick_unused_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        server.kill()
        server.wait()


def bench_remote(local: pathlib.Path, bs: int, batches: int, delays_ms: list[int]) -> None:
    """The pipeline over ``local`` copied into a moto bucket, reached directly or through a
    DelayProxy, each figure beside the same pipeline over ``local`` in the same run."""
    import boto3
    import s3fs

    with moto_server() as port:
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_REGION="us-east-1", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
        boto3.client("s3").create_bucket(Bucket="bench")
        url = "s3://bench/store"
        for f in files_under(local):
            (epath.Path(url) / str(f.relative_to(local))).write_bytes(f.read_bytes())
        warm_cache(local)
        for delay in delays_ms:
            with DelayProxy("127.0.0.1", port, delay / 1000) as proxy:
                os.environ["AWS_ENDPOINT_URL"] = proxy.url
                s3fs.S3FileSystem.clear_instance_cache()
                disk = time_pipeline(store_dataset(str(local), bs, 0), bs, batches)
                remote = time_pipeline(store_dataset(url, bs, 0), bs, batches)
            emit(figure="pipeline_s3", delay_ms=delay, batch_size=bs,
                 local_samples_per_s=round(disk), s3_samples_per_s=round(remote),
                 vs_local=round(remote / disk, 2))


def main(argv):
    del argv
    size, bs, n = FLAGS.image_size, FLAGS.batch_size, FLAGS.batches
    work = pathlib.Path(FLAGS.workdir)
    raw = work / "raw"
    if not (raw / "train.csv").is_file():
        synthetic.generate(raw, FLAGS.num_samples, image_size=size, seed=0)
    ids = [line.split(",")[0] for line in (raw / "train.csv").read_text().splitlines()[1:]]
    emit(figure="setup", samples=len(ids), image_size=size, batch_size=bs, cpus=os.cpu_count())
    # Cold batches stay inside the first epoch, past the warm-up and read-ahead.
    cold_batches = max(1, min(n, len(ids) // bs - 4))
    bench_memcpy(size)
    emit(figure="bytes_per_sample", impl="png_quads",
         bytes=round(dir_bytes(raw / "train") / len(ids)))
    baseline = bench_pil_loops(raw / "train", ids, size, work / "pil_loop")
    for workers in (1, 2):
        bench_convert(raw, work / "store", workers, store.DEFAULT_CODEC, baseline)
    for codec in FLAGS.codecs:
        out = work / f"store_{codec}"
        if not (out / store.METADATA).is_file():
            bench_convert(raw, out, 2, codec, None)
        emit(figure="bytes_per_sample", impl="store", codec=codec,
             bytes=round(dir_bytes(out / "images") / len(ids)))
        for workers in map(int, FLAGS.workers):
            ds = lambda: store_dataset(str(out), bs, workers)  # noqa: E731
            measure_pipeline(ds, out, bs, n, cold_batches, workers,
                             impl="store", codec=codec)
    for workers in map(int, FLAGS.workers):
        ds = lambda: png_dataset(raw / "train", ids, bs, workers)  # noqa: E731
        measure_pipeline(ds, raw / "train", bs, n, cold_batches, workers, impl="png_quads")
    if FLAGS.remote_delays_ms:
        local = work / f"store_{store.DEFAULT_CODEC}"
        if FLAGS.remote_shard_samples:
            local = work / f"store_shard{FLAGS.remote_shard_samples}"
            convert.convert(convert.Options(
                format="kaggle", input_dir=raw / "train", output_dir=local,
                labels_csv=raw / "train.csv", image_size=size, workers=2,
                shard_samples=FLAGS.remote_shard_samples))
        bench_remote(local, bs, n, [int(d) for d in FLAGS.remote_delays_ms])


if __name__ == "__main__":
    app.run(main)
