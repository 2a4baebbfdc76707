"""Parallel, resumable conversion of raw image quads into a store.

The conversion is planned first (label file and file listing checked, every
input file stat-ed and fingerprinted), then worker processes each decode a
shard's samples and write that shard, an atomic file or object. Shards are
recorded in a progress file as they complete in order, so a conversion killed
at any moment resumes after its last recorded shard and ends bit-identical to
an uninterrupted one. The output may be a local folder or an ``s3://`` or
``gs://`` prefix: everything is written through TensorStore and
``etils.epath``, and nothing relies on renames. The fingerprint (inputs, their
sizes and mtimes, options) guards the resume and makes rerunning a finished
conversion a no-op.

Bad samples never reach a finished store: they are listed with the file or
CSV line and the reason, and the store is finalized only if there are none,
or with ``skip_bad``, after their rows are compacted away.
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
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import tqdm
from etils import epath

import hpajax
from hpajax import classes
from hpajax.data import images as imagelib
from hpajax.data import labels as labelslib
from hpajax.data import store as storelib
from hpajax.data.labels import Problem
from hpajax.files import is_storage_error, make_folder, storage_errors

PROGRESS = ".convert_progress.json"
COMPACT = "compacted"  # the good rows while the bad ones are compacted away


class ConversionError(RuntimeError):
    """The conversion cannot go on or finish; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Options:
    """What to convert and how (the command-line flags of tools/convert.py)."""

    format: str
    input_dir: pathlib.Path
    output_dir: epath.Path
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

    path: epath.Path
    num_samples: int
    num_bad: int  # samples left out (--skip_bad)
    already_done: bool


def convert(opts: Options) -> Result:
    """Converts (or resumes converting) ``opts.input_dir`` into a store."""
    opts = dataclasses.replace(opts, output_dir=epath.Path(opts.output_dir))
    _check_options(opts)
    plan = make_plan(opts)
    out = opts.output_dir
    try:
        if _finished(out, plan.fingerprint):
            meta = storelib.open_store(out).metadata
            return Result(out, meta["num_samples"], meta["num_bad"], already_done=True)
        progress = _start_or_resume(out, plan, opts)
        progress = _convert_images(plan, progress, opts)
        return _finish(plan, progress, opts)
    except storage_errors() as e:  # a full disk, a missing bucket, bad credentials
        if not is_storage_error(e):  # e.g. a StoreError: it says what is wrong
            raise
        raise ConversionError(f"--output_dir={out}: cannot write the store: {e}") from None


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
    keep, paths, stats = [], [], []
    for i, sample_id in enumerate(table.ids):
        files = imagelib.channel_paths(str(opts.input_dir), sample_id, opts.format)
        sample_stats, missing = _stat_files(files)
        if missing:
            problems.append(Problem(missing[0], sample_id, "missing channel file"
                                    + "".join(f"; missing {m}" for m in missing[1:])))
            continue
        keep.append(i)
        paths.append(files)
        stats.append(sample_stats)
    ids = [table.ids[i] for i in keep]
    labels = None if table.labels is None else table.labels[keep]
    spec = imagelib.DecodeSpec(opts.format, opts.image_size, _source_size(opts, paths))
    shard = opts.shard_samples or storelib.default_shard_samples(
        opts.image_size, classes.NUM_CHANNELS)
    fingerprint = _fingerprint(ids, labels, stats, spec, shard, opts.codec)
    return Plan(ids, labels, paths, problems, spec, shard, fingerprint)


def _table_from_files(directory: pathlib.Path, fmt: str
                      ) -> tuple[labelslib.LabelTable, list[Problem]]:
    """Ids from the file names (sorted), when no label file is given.

    They get the label file's Id checks: an Id names the store's rows and files.
    """
    suffixes = [f"_{c}.{imagelib.FORMATS[fmt]}" for c in classes.CHANNELS]
    first_file = {}
    for name in sorted(os.listdir(directory)):
        for s in suffixes:
            if name.endswith(s):
                first_file.setdefault(name[: -len(s)], name)
    ids, problems = [], []
    for sample_id in sorted(first_file):
        why = labelslib.check_id(sample_id)
        if why is None:
            ids.append(sample_id)
        else:
            problems.append(Problem(str(directory / first_file[sample_id]), sample_id, why))
    return labelslib.LabelTable(ids, None, [str(directory)] * len(ids)), problems


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


def _finished(out: epath.Path, fingerprint: str) -> bool:
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


def _start_or_resume(out: epath.Path, plan: Plan, opts: Options) -> dict:
    """Returns the progress to continue from, creating the image array if new."""
    progress_path = out / PROGRESS
    if progress_path.is_file():
        progress = json.loads(progress_path.read_text())
        if progress["fingerprint"] == plan.fingerprint:
            done = min(progress["shards"] * plan.shard_samples, len(plan.ids))
            print(f"Resuming the conversion in {out} after {done} of {len(plan.ids)} samples")
            return progress
        print(f"Inputs or options changed since the interrupted conversion in {out}; "
              "starting over")
        for name in (storelib.IMAGES, COMPACT):
            (out / name).rmtree(missing_ok=True)
    elif out.exists() and any(out.iterdir()):
        raise ConversionError(
            f"--output_dir={out} is not empty and holds no hpajax conversion; "
            "refusing to write into it")
    make_folder(out)
    progress = {"fingerprint": plan.fingerprint, "shards": 0, "bad": []}
    storelib.write_json(progress_path, progress)
    storelib.create_images(out, max(len(plan.ids), 1), plan.spec.image_size,
                           classes.NUM_CHANNELS, plan.shard_samples, opts.codec)
    return progress


# ---------------------------------------------------------------- decoding


@dataclasses.dataclass(frozen=True)
class _ShardTask:
    """One shard's worth of plan positions, converted by one worker."""

    first: int
    ids: list[str]
    paths: list[list[str]]
    spec: imagelib.DecodeSpec


# The image array this process writes shards to, opened once per conversion
# (per worker process) by _open_images_for_write.
_images_for_write = None


def _open_images_for_write(out: str) -> None:
    global _images_for_write
    _images_for_write = storelib.open_images(out, write=True)


def _convert_shard(task: _ShardTask) -> list[list]:
    """Decodes a shard's samples and writes the shard; returns its bad samples.

    Workers write their own shards (one atomic file each), so pixels never
    cross a process boundary and compression runs in parallel too. A bad
    sample's row stays zero here and is compacted away before finalizing.
    """
    size = task.spec.image_size
    buffer = np.zeros((len(task.ids), size, size, classes.NUM_CHANNELS), np.uint8)
    bad = []
    for j, (sample_id, paths) in enumerate(zip(task.ids, task.paths)):
        array, problems = imagelib.decode_sample(paths, task.spec)
        if problems:
            bad.extend([task.first + j, f, sample_id, why] for f, why in problems)
        else:
            buffer[j] = array
    end = task.first + len(task.ids)
    _images_for_write[task.first:end].write(buffer).result()
    return bad


@contextlib.contextmanager
def _shard_map(workers: int, out: epath.Path) -> Iterator[Callable]:
    """An ordered map over shards writing to ``out``: in-process, or in spawned workers."""
    if workers <= 1:
        _open_images_for_write(str(out))
        yield map
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, _open_images_for_write, (str(out),)) as pool:
        yield lambda fn, tasks: pool.imap(fn, tasks)


def _convert_images(plan: Plan, progress: dict, opts: Options) -> dict:
    """Converts the shards not yet done, recording each as it completes in order."""
    k, n = plan.shard_samples, len(plan.ids)
    tasks = [_ShardTask(first, plan.ids[first:first + k],
                        plan.paths[first:first + k], plan.spec)
             for first in range(progress["shards"] * k, n, k)]
    if not tasks:  # all shards done (the images may be mid-compaction)
        return progress
    bar = tqdm.tqdm(total=n, initial=min(progress["shards"] * k, n), unit="sample",
                    desc="convert")
    with _shard_map(min(opts.workers, max(len(tasks), 1)), opts.output_dir) as imap, bar:
        for task, bad in zip(tasks, imap(_convert_shard, tasks)):
            progress["bad"].extend(bad)
            progress["shards"] += 1
            storelib.write_json(opts.output_dir / PROGRESS, progress)
            bar.update(len(task.ids))
    return progress


# ---------------------------------------------------------------- finishing


def _finish(plan: Plan, progress: dict, opts: Options) -> Result:
    """Writes the report; finalizes the store unless bad samples must stop it."""
    out = opts.output_dir
    problems = plan.problems + [Problem(*b[1:]) for b in progress["bad"]]
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
    bad_rows = {b[0] for b in progress["bad"]}
    good = [i for i in range(len(plan.ids)) if i not in bad_rows]
    if not good:
        raise ConversionError(f"no usable samples in --input_dir={opts.input_dir}")
    if bad_rows:
        _compact(out, good, plan, progress, opts.codec)
    labels = None if plan.labels is None else plan.labels[good]
    storelib.finalize(out, [plan.ids[i] for i in good], labels,
                      _metadata(plan, opts, len(good), len(problems)))
    (out / PROGRESS).unlink(missing_ok=True)
    return Result(out, len(good), len(problems), already_done=False)


def _compact(out: epath.Path, good: list[int], plan: Plan, progress: dict, codec: str) -> None:
    """Rewrites the image array without the bad rows.

    Object storage has no rename, so the good rows are copied to ``compacted`` and
    back into a new ``images``; each completed stage is recorded in the
    progress file, so a kill anywhere is finished by the next run.
    """
    size, k = plan.spec.image_size, plan.shard_samples
    if not progress.get("compacted"):
        dst = storelib.create_images(out, len(good), size, classes.NUM_CHANNELS, k, codec,
                                     name=COMPACT)
        _copy_rows(storelib.open_images(out), dst, good, k)
        _record(out, progress, "compacted")
    if not progress.get("copied_back"):
        dst = storelib.create_images(out, len(good), size, classes.NUM_CHANNELS, k, codec)
        _copy_rows(storelib.open_images(out, name=COMPACT), dst, range(len(good)), k)
        _record(out, progress, "copied_back")
    (out / COMPACT).rmtree(missing_ok=True)


def _copy_rows(src, dst, rows, shard_samples: int) -> None:
    """Copies ``src[rows]`` into ``dst``, a shard at a time."""
    rows = np.asarray(rows)
    for first in range(0, len(rows), shard_samples):
        chunk = rows[first:first + shard_samples]
        dst[first:first + len(chunk)].write(src[chunk].read().result()).result()


def _record(out: epath.Path, progress: dict, stage: str) -> None:
    progress[stage] = True
    storelib.write_json(out / PROGRESS, progress)


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
