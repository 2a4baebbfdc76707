"""Parallel, resumable conversion of raw image quads into a store.

The conversion is planned first (label file and file listing checked, every
input file stat-ed), then samples are decoded in worker processes, in order,
and written shard by shard. After each shard commits, a progress file records
how far the plan got, so a conversion killed at any moment resumes from its
last whole shard and ends bit-identical to an uninterrupted one. The plan's
fingerprint (inputs, their sizes and mtimes, options) guards the resume and
makes rerunning a finished conversion a no-op.

Bad samples are never written as zeros: they are left out, listed with the
file or CSV line and the reason, and the store is only finalized if there are
none or the user asked for ``skip_bad``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import pathlib
import shutil
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import tqdm

import hpajax
from hpajax import classes
from hpajax.data import images as imagelib
from hpajax.data import labels as labelslib
from hpajax.data import store as storelib
from hpajax.data.labels import Problem

PROGRESS = ".convert_progress.json"


class ConversionError(RuntimeError):
    """The conversion cannot go on or finish; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Options:
    """What to convert and how (the command-line flags of tools/convert.py)."""

    format: str
    input_dir: pathlib.Path
    output_dir: pathlib.Path
    labels_csv: pathlib.Path | None = None
    image_size: int = 512
    workers: int = 1
    skip_bad: bool = False
    codec: str = storelib.DEFAULT_CODEC
    shard_samples: int | None = None
    command: str = ""


@dataclasses.dataclass(frozen=True)
class Plan:
    """The samples to decode, in store order, and the problems found so far."""

    ids: list[str]
    labels: np.ndarray | None
    paths: list[list[str]]
    problems: list[Problem]
    spec: imagelib.DecodeSpec
    shard_samples: int
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class Result:
    """What a finished conversion produced."""

    path: pathlib.Path
    num_samples: int
    problems: list[Problem]
    already_done: bool


def convert(opts: Options) -> Result:
    """Converts (or resumes converting) ``opts.input_dir`` into a store."""
    _check_options(opts)
    plan = make_plan(opts)
    out = opts.output_dir
    if _finished(out, plan.fingerprint):
        return Result(out, len(storelib.open_store(out)), plan.problems, already_done=True)
    progress = _start_or_resume(out, plan, opts)
    progress = _convert_images(plan, progress, opts)
    return _finish(plan, progress, opts)


def _check_options(opts: Options) -> None:
    if opts.format not in imagelib.FORMATS:
        raise ConversionError(f"--format={opts.format!r}: choose one of {sorted(imagelib.FORMATS)}")
    if not opts.input_dir.is_dir():
        raise ConversionError(f"--input_dir={opts.input_dir}: not a directory")
    if opts.labels_csv is not None and not opts.labels_csv.is_file():
        raise ConversionError(f"--labels_csv={opts.labels_csv}: no such file")
    if opts.image_size < 8:
        raise ConversionError(f"--image_size={opts.image_size}: must be at least 8")
    if opts.codec not in storelib.CODECS:
        raise ConversionError(f"--codec={opts.codec!r}: choose one of {sorted(storelib.CODECS)}")
    if opts.workers < 1:
        raise ConversionError(f"--workers={opts.workers}: must be at least 1")


# ---------------------------------------------------------------- planning


def make_plan(opts: Options) -> Plan:
    """Lists the samples, checks labels and file presence, fingerprints it all."""
    if opts.labels_csv is not None:
        try:
            table, problems = labelslib.read_labels_csv(opts.labels_csv)
        except ValueError as e:
            raise ConversionError(str(e)) from None
    else:
        table, problems = _table_from_files(opts.input_dir, opts.format)
    keep, stats = [], []
    for i, sample_id in enumerate(table.ids):
        paths = imagelib.channel_paths(str(opts.input_dir), sample_id, opts.format)
        sample_stats, missing = _stat_files(paths)
        if missing:
            problems.append(Problem(missing[0], sample_id, "missing channel file"
                                    + "".join(f"; missing {m}" for m in missing[1:])))
            continue
        keep.append(i)
        stats.append(sample_stats)
    ids = [table.ids[i] for i in keep]
    labels = None if table.labels is None else table.labels[keep]
    paths = [imagelib.channel_paths(str(opts.input_dir), i, opts.format) for i in ids]
    spec = imagelib.DecodeSpec(opts.format, opts.image_size, _source_size(opts, paths))
    shard = opts.shard_samples or storelib.default_shard_samples(
        opts.image_size, classes.NUM_CHANNELS)
    fingerprint = _fingerprint(ids, labels, stats, spec, shard, opts.codec)
    return Plan(ids, labels, paths, problems, spec, shard, fingerprint)


def _table_from_files(directory: pathlib.Path, fmt: str) -> tuple[labelslib.LabelTable, list[Problem]]:
    """Ids from the file names (sorted), when no label file is given."""
    suffixes = [f"_{c}.{imagelib.FORMATS[fmt]}" for c in classes.CHANNELS]
    ids = sorted({name[: -len(s)] for name in os.listdir(directory)
                  for s in suffixes if name.endswith(s)})
    return labelslib.LabelTable(ids, None, [str(directory)] * len(ids)), []


def _stat_files(paths: list[str]) -> tuple[list[tuple[int, int]], list[str]]:
    stats, missing = [], []
    for path in paths:
        try:
            st = os.stat(path)
            stats.append((st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            missing.append(path)
    return stats, missing


def _source_size(opts: Options, paths: list[list[str]]) -> int | None:
    """Kaggle quads share one size: the most common among the first headers."""
    if opts.format != "kaggle":
        return None
    sizes = Counter(imagelib.header_size(p[0]) for p in paths[:32])
    sizes.pop(None, None)
    if not sizes:
        return None
    (width, height), _ = sizes.most_common(1)[0]
    if width < opts.image_size:
        raise ConversionError(
            f"--image_size={opts.image_size} is larger than the source images "
            f"({width}x{height}); choose --image_size <= {width}")
    return width


def _fingerprint(ids, labels, stats, spec, shard_samples, codec) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([dataclasses.asdict(spec), shard_samples, codec, ids, stats]).encode())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- progress


def _finished(out: pathlib.Path, fingerprint: str) -> bool:
    """True if ``out`` already holds this very conversion; refuses other stores."""
    meta_path = out / storelib.METADATA
    if not meta_path.is_file():
        return False
    if json.loads(meta_path.read_text()).get("fingerprint") != fingerprint:
        raise ConversionError(
            f"--output_dir={out} holds a store converted from other inputs or options; "
            "choose another --output_dir or delete it")
    (out / PROGRESS).unlink(missing_ok=True)
    return True


def _start_or_resume(out: pathlib.Path, plan: Plan, opts: Options) -> dict:
    """Returns the progress to continue from, creating the image array if new."""
    progress_path = out / PROGRESS
    if progress_path.is_file():
        progress = json.loads(progress_path.read_text())
        if progress["fingerprint"] == plan.fingerprint:
            print(f"Resuming the conversion in {out} at sample {progress['next']} "
                  f"of {len(plan.ids)}")
            return progress
        print(f"Inputs or options changed since the interrupted conversion in {out}; "
              "starting over")
        shutil.rmtree(out / storelib.IMAGES, ignore_errors=True)
    elif out.exists() and any(out.iterdir()):
        raise ConversionError(
            f"--output_dir={out} is not empty and holds no hpajax conversion; "
            "refusing to write into it")
    out.mkdir(parents=True, exist_ok=True)
    progress = {"fingerprint": plan.fingerprint, "next": 0, "written": [], "bad": []}
    storelib.write_json(progress_path, progress)
    storelib.create_images(out, max(len(plan.ids), 1), plan.spec.image_size,
                           classes.NUM_CHANNELS, plan.shard_samples, opts.codec)
    return progress


# ---------------------------------------------------------------- decoding


def _decode(args: tuple[list[str], imagelib.DecodeSpec]):
    return imagelib.decode_sample(*args)


@contextlib.contextmanager
def _decoder(workers: int) -> Iterator[Callable]:
    """An ordered map over samples: in-process, or over spawned workers."""
    if workers <= 1:
        yield map
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield lambda fn, tasks: pool.imap(fn, tasks, chunksize=4)


def _convert_images(plan: Plan, progress: dict, opts: Options) -> dict:
    """Decodes the remaining samples and writes them shard by shard."""
    out, k = opts.output_dir, plan.shard_samples
    images = storelib.open_images(out, write=True)
    start = progress["next"]
    written, bad = list(progress["written"]), list(progress["bad"])
    buffer, pending = [], None
    tasks = [(p, plan.spec) for p in plan.paths[start:]]
    bar = tqdm.tqdm(total=len(plan.ids), initial=start, unit="sample", desc="convert")
    workers = min(opts.workers, max(len(tasks), 1))
    with _decoder(workers) as imap, bar:
        for pos, (array, problems) in enumerate(imap(_decode, tasks), start=start):
            bar.update()
            if problems:
                bad.extend([f, plan.ids[pos], why] for f, why in problems)
                continue
            buffer.append(array)
            written.append(pos)
            if len(buffer) == k:
                pending = _write_shard(images, out, buffer, written, bad, pos + 1, pending)
                buffer = []
        pending = _write_shard(images, out, buffer, written, bad, len(plan.ids), pending)
        _wait(pending, out)
    return {"fingerprint": plan.fingerprint, "next": len(plan.ids), "written": written, "bad": bad}


def _write_shard(images, out, buffer, written, bad, next_pos, pending):
    """Starts writing one shard; records the previous one once it has committed.

    One write stays in flight while the next shard decodes, so compression and
    decoding overlap; progress only ever names shards that are on disk.
    """
    future = None
    if buffer:
        first = len(written) - len(buffer)
        future = images[first:len(written)].write(np.stack(buffer))
    _wait(pending, out)
    progress = {"next": next_pos, "written": list(written), "bad": list(bad)}
    return future, progress


def _wait(pending, out: pathlib.Path) -> None:
    if pending is None:
        return
    future, progress = pending
    if future is not None:
        future.result()
    old = json.loads((out / PROGRESS).read_text())
    storelib.write_json(out / PROGRESS, {**old, **progress})


# ---------------------------------------------------------------- finishing


def _finish(plan: Plan, progress: dict, opts: Options) -> Result:
    """Writes the report; finalizes the store unless bad samples must stop it."""
    out = opts.output_dir
    problems = plan.problems + [Problem(*b) for b in progress["bad"]]
    report = out / storelib.BAD_SAMPLES
    if problems:
        storelib.write_atomic(report, format_report(problems))
    else:
        report.unlink(missing_ok=True)
    if problems and not opts.skip_bad:
        raise ConversionError(
            f"{len(problems)} bad sample(s); nothing was finalized. Report: {report}\n"
            + "".join(f"  {p.where}: {p.sample_id}: {p.why}\n" for p in problems)
            + "Fix them and rerun the same command, or add --skip_bad to convert the rest.")
    written = progress["written"]
    if not written:
        raise ConversionError(f"no usable samples in --input_dir={opts.input_dir}")
    images = storelib.open_images(out, write=True)
    if images.shape[0] != len(written):
        images.resize(exclusive_max=[len(written), None, None, None],
                      resize_metadata_only=True, shrink_only=True).result()
    labels = None if plan.labels is None else plan.labels[written]
    storelib.finalize(out, [plan.ids[i] for i in written], labels,
                      _metadata(plan, opts, len(written), len(problems)))
    (out / PROGRESS).unlink(missing_ok=True)
    return Result(out, len(written), problems, already_done=False)


def _metadata(plan: Plan, opts: Options, n: int, num_bad: int) -> dict:
    return {
        "source": str(opts.input_dir.resolve()),
        "format": opts.format,
        "labels_csv": None if opts.labels_csv is None else str(opts.labels_csv.resolve()),
        "labeled": plan.labels is not None,
        "num_samples": n,
        "num_bad": num_bad,
        "image_size": plan.spec.image_size,
        "source_size": plan.spec.source_size,
        "channels": list(classes.CHANNELS),
        "class_names": list(classes.CLASS_NAMES),
        "codec": opts.codec,
        "shard_samples": plan.shard_samples,
        "fingerprint": plan.fingerprint,
        "command": opts.command,
        "hpajax_version": hpajax.__version__,
    }


def format_report(problems: list[Problem]) -> str:
    """The bad-sample report as CSV: where (file or CSV line), Id, reason."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["where", "id", "problem"])
    writer.writerows([p.where, p.sample_id, p.why] for p in problems)
    return buf.getvalue()
