#!/usr/bin/env python3
"""One-shot accelerator check: the models' speed and memory on whatever JAX finds.

  python experiments/gpu_check.py [--smoke] [--size=512 --batches=64,256 --dtypes=...]
                                  [--models=seed_cnn,resnet18,...]
  bash experiments/gpu_check.sh     # on a GPU host with the wheels of experiments/gpu_wheels.sh

GPU time comes in short, rare leases, so this runs unattended within a time
limit and prints one JSON line per figure (BENCHMARKS.md lists them): train
and eval img/s of ``hpajax.steps``' jitted steps on a device-resident batch and
through the real loop, compile seconds, peak device memory, Grain samples/s,
and the PyTorch reference where torch imports. Each configuration is a
subprocess of its own (this script with ``--one``), so an out-of-memory
failure or a crash costs that configuration only. ``--smoke`` runs the same
code paths at toy sizes on the CPU (the seed CNN at tiny.py's width).

``--models`` adds the backbones (``--model=resnet50`` also works): each
gives the same device-resident train/eval, compile and memory lines at
``--size``, so that one lease times them all, but only in
``--backbone_dtypes`` (bfloat16) at the smallest batch, after the seed's
configurations, to fit the lease. The loop, pipeline and torch figures are
the seed CNN's only. Every line of a model's figures names it (``model``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported in the children that need them
    from bench_train import Budget  # siblings: the script's folder is on sys.path
    from hpajax.data.run_data import RunData
    from hpajax.steps import Steps

CHANNELS = 4  # the base config's four channels
SEED = 0
# Distributions whose versions the first line reports (absent ones as None).
PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
            "orbax-checkpoint", "grain", "tensorstore", "ml-collections", "tensorboardX",
            "array-record", "numpy")
# JAX's share of GPU memory in the children unless XLA_PYTHON_CLIENT_MEM_FRACTION is
# set: one configuration runs at a time, so it may take more than JAX's default 0.75.
MEM_FRACTION = "0.9"
TAIL_CHARS = 2000  # of a failed subprocess's output, in its error line
MIN_CHILD_SECONDS = 10.0  # a configuration is not started with less time left
SEED_CNN = "seed_cnn"  # first of --models; the loop and torch figures are its only
# Every backbone, the Kaggle HPA 2019 and 2021 winners' first (those a lease must time),
# then the rest: the order in which --models runs them until the time limit.
BACKBONE_ORDER = ("densenet121", "seresnext50_32x4d", "inception_v3", "densenet169",
                  "xception", "efficientnet_b4", "vit_base_patch16", "resnet34", "resnet50",
                  "resnet18", "efficientnet_b0", "convnext_tiny", "vit_small_patch16")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The check's options; ``--smoke`` swaps in toy sizes for those left unset."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, same code paths")
    p.add_argument("--size", type=int, help="image side in px (default 512; smoke 80)")
    p.add_argument("--batches", help="global batch sizes (default 64,256; smoke 8)")
    p.add_argument("--dtypes", help="model dtypes (default bfloat16,float32; smoke float32)")
    p.add_argument("--models", help="seed_cnn and/or hpajax.config.BACKBONES (default "
                   "seed_cnn, then the HPA winners' backbones first, then the rest: "
                   f"{','.join(BACKBONE_ORDER)}; smoke seed_cnn,resnet18)")
    p.add_argument("--backbone_dtypes",
                   help="the backbones' dtypes, at the smallest batch (default bfloat16; "
                        "smoke float32)")
    p.add_argument("--num_samples", type=int, help="synthetic store size (default 1024; smoke 24)")
    p.add_argument("--workers", help="Grain worker counts to time (default 0,<cores>)")
    p.add_argument("--loop_workers", type=int, default=0, help="Grain workers of the loop")
    p.add_argument("--steps", type=int, help="most timed steps per figure (default 30; smoke 2)")
    p.add_argument("--max_seconds", type=float,
                   help="time budget of each figure's timed steps (default 3; smoke 1)")
    p.add_argument("--pipeline_batches", type=int,
                   help="timed pipeline batches (default 48; smoke 4)")
    p.add_argument("--time_limit", type=float,
                   help="wall-clock seconds for the whole check (default 420; smoke 180)")
    p.add_argument("--torch", choices=("auto", "yes", "no"), default="auto",
                   help="time the PyTorch reference (auto: when torch is importable)")
    p.add_argument("--workdir", help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration
    args = p.parse_args(argv)
    toy = dict(size=80, batches="8", dtypes="float32", models=f"{SEED_CNN},resnet18",
               backbone_dtypes="float32", num_samples=24, workers="0,2", steps=2,
               max_seconds=1.0, pipeline_batches=4, time_limit=180.0)
    full = dict(size=512, batches="64,256", dtypes="bfloat16,float32",
                models=",".join((SEED_CNN, *BACKBONE_ORDER)),
                backbone_dtypes="bfloat16", num_samples=1024,
                workers=f"0,{os.cpu_count() or 1}", steps=30, max_seconds=3.0,
                pipeline_batches=48, time_limit=420.0)
    for key, value in (toy if args.smoke else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def int_list(text: str) -> list[int]:
    """``"64,256"`` -> ``[64, 256]``."""
    return [int(x) for x in text.split(",") if x]


def str_list(text: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``."""
    return [x for x in text.split(",") if x]


def emit(**fields: Any) -> None:
    """One JSON line on stdout (a child's figure, read by the parent)."""
    print(json.dumps(fields), flush=True)


def store_path(args: argparse.Namespace) -> pathlib.Path:
    """Where the store configuration writes the synthetic store."""
    return pathlib.Path(args.workdir) / "store"


# --------------------------------------------------------------------------
# The configurations, each run in its own subprocess
# --------------------------------------------------------------------------


def child_versions(args: argparse.Namespace) -> None:
    """The devices JAX finds (the package versions come from the parent)."""
    import jax

    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    emit(figure="devices", device_kind=device.device_kind, platform=device.platform,
         device_count=jax.device_count(), device_bytes_limit=stats.get("bytes_limit"))


def child_store(args: argparse.Namespace) -> None:
    """A synthetic Kaggle-layout set rendered and converted into the store."""
    from hpajax import synthetic
    from hpajax.data import convert

    out, raw, workers = store_path(args), pathlib.Path(args.workdir) / "raw", os.cpu_count() or 1
    start = time.perf_counter()
    csv = synthetic.generate(raw, args.num_samples, image_size=args.size, seed=SEED,
                             workers=workers)
    generated = time.perf_counter()
    convert.convert(convert.Options(format="kaggle", input_dir=raw / "train", output_dir=out,
                                    labels_csv=csv, image_size=args.size, workers=workers))
    converted = time.perf_counter()
    shutil.rmtree(raw)
    emit(figure="store", samples=args.num_samples, size=args.size, workers=workers,
         generate_s=generated - start, convert_s=converted - generated,
         bytes=sum(f.stat().st_size for f in out.rglob("*") if f.is_file()))


def child_pipeline(args: argparse.Namespace, workers: int) -> None:
    """Samples/s of the Grain training pipeline alone."""
    import bench_data
    from hpajax.data import pipeline, run_data

    batch = min(int_list(args.batches))
    ds = pipeline.train_dataset(run_data.whole_store(str(store_path(args))).sources,
                                batch_size=batch, seed=SEED, num_workers=workers)
    rate = bench_data.time_pipeline(ds, batch, args.pipeline_batches)
    emit(figure="pipeline", workers=workers, batch=batch, size=args.size,
         batches=args.pipeline_batches, samples_per_s=rate)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is JAX's or torch's device out-of-memory error."""
    text = f"{type(error).__name__} {error}".lower()
    return "resource_exhausted" in text or "out of memory" in text or "outofmemory" in text


def guarded(fn: Callable[[], Any], what: str, labels: dict) -> Any:
    """``fn()``, or None after a ``skip`` line if it ran out of device memory."""
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - anything but OOM is re-raised
        if not is_out_of_memory(error):
            raise
        emit(figure="skip", what=what, **labels, reason="out of memory",
             error=str(error).strip().splitlines()[0][:300])
        gc.collect()
        return None


def jax_memory(after: str, labels: dict) -> None:
    """Peak device memory so far (None where the backend keeps no statistics)."""
    import jax

    stats = jax.devices()[0].memory_stats()
    emit(figure="memory", after=after, **labels,
         peak_bytes=None if stats is None else stats.get("peak_bytes_in_use"),
         bytes_limit=None if stats is None else stats.get("bytes_limit"))


def toy_width(args: argparse.Namespace, config: Any) -> None:
    """``--smoke``: the seed CNN at tiny.py's width, a toy size as the others."""
    from hpajax.config import TINY_SEED_CNN

    if args.smoke and config.model.name == SEED_CNN:
        config.model.update(TINY_SEED_CNN)


def jax_steps(args: argparse.Namespace, model: str, dtype: str, batch: int) -> Steps:
    """The trainer's jitted steps for one model, dtype and batch."""
    import bench_train
    from hpajax import steps as steps_lib

    config = bench_train.make_config(dtype, model=model)
    config.batch_size = config.eval_batch_size = batch
    toy_width(args, config)
    return steps_lib.build(config, steps_lib.make_mesh(batch), (args.size, args.size, CHANNELS))


def loop_train(steps: Steps, data: RunData, budget: Budget, labels: dict,
               workers: int) -> None:
    """Train img/s of the real loop: Grain batches -> ``to_device`` -> train step."""
    import bench_train
    from hpajax import inference
    from hpajax import steps as steps_lib

    state, sums = steps_lib.init_state(steps), steps_lib.zero_sums(steps)
    batches = iter(inference.train_batches(steps.config, data, SEED, workers))

    def step() -> Any:
        nonlocal state, sums
        state, sums = steps.train(state, steps_lib.to_device(steps, next(batches)), sums)
        return sums

    bench_train.timed(step)  # starts the pipeline (and its workers)
    kind = ("jax", "loop_train", labels["dtype"])
    figures = bench_train.time_steps(step, budget, kind, labels["batch"], labels["size"])
    bench_train.emit(figure="train", impl="jax", **labels, workers=workers, **figures)


def loop_eval(steps: Steps, data: RunData, labels: dict) -> None:
    """Eval img/s of ``inference.predict`` over the whole store (its second pass)."""
    import bench_train
    from hpajax import inference
    from hpajax import steps as steps_lib

    state = steps_lib.init_state(steps)
    inference.predict(steps, state, data.store)
    seconds, cores = bench_train.timed(lambda: inference.predict(steps, state, data.store))
    n = len(data.store)
    bench_train.emit(figure="eval", impl="jax", **labels, img_per_s=n / seconds,
                     seconds=seconds, samples=n, **cores)


def child_jax(args: argparse.Namespace, model: str, dtype: str, batch: int) -> None:
    """Eval, train (device-resident batch), then for the seed CNN the same through
    the real loop."""
    import numpy as np

    import bench_train
    from hpajax import xla_defaults

    xla_defaults.apply_cpu_defaults()
    steps = jax_steps(args, model, dtype, batch)
    rng = np.random.default_rng(SEED)
    host = [bench_train.host_batch(rng, batch, args.size, CHANNELS) for _ in range(2)]
    budget = bench_train.Budget(args.max_seconds, args.steps)
    labels = {"model": model, "size": args.size, "batch": batch, "dtype": dtype,
              "channels": CHANNELS}
    device = {**labels, "path": "device"}
    # Eval first: its peak memory is then its own; train's peak includes eval's.
    evaluated = guarded(lambda: bench_train.bench_jax_eval(steps, host, budget, device),
                        "eval", device)
    jax_memory("eval", device)
    trained = guarded(lambda: bench_train.bench_jax_train(steps, host, budget, device,
                                                          augment_on=True),
                      "train", device)
    jax_memory("train", device)
    if model == SEED_CNN:
        jax_loop(args, steps, budget, {**labels, "path": "loop"}, evaluated, trained)


def jax_loop(args: argparse.Namespace, steps: Steps, budget: Budget, loop: dict,
             evaluated: dict | None, trained: dict | None) -> None:
    """Train and eval through the real loop, where their device steps ran."""
    from hpajax.data import run_data

    if not (store_path(args) / "metadata.json").is_file():
        emit(figure="skip", what="loop", **loop, reason="no store (its configuration failed)")
        return
    data = run_data.whole_store(str(store_path(args)))
    for step, done, run in (("train", trained, lambda: loop_train(steps, data, budget, loop,
                                                                  args.loop_workers)),
                            ("eval", evaluated, lambda: loop_eval(steps, data, loop))):
        if done is None:
            emit(figure="skip", what=step, **loop, reason="its device step was skipped")
        else:
            guarded(run, step, loop)
    jax_memory("loop", loop)


class _Synced:
    """A torch step's result; ``block_until_ready`` (called by ``bench_train.timed``)
    waits for the GPU's queue."""

    def __init__(self, torch_module: Any, cuda: bool):
        self.torch, self.cuda = torch_module, cuda

    def block_until_ready(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


def child_torch(args: argparse.Namespace, dtype: str, batch: int) -> None:
    """The PyTorch reference's train and eval img/s: CUDA if there, channels_last,
    bfloat16 by autocast."""
    import numpy as np
    import torch

    import bench_train
    import torch_reference as ref
    from hpajax.config import base_config

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    torch.backends.cudnn.benchmark = True
    config = base_config()
    toy_width(args, config)
    model = bench_train.TorchBench(CHANNELS, config, SEED).model()
    model = model.to(device, memory_format=torch.channels_last)
    o = config.optimizer
    opt = ref.make_optimizer(model, o.learning_rate, (o.b1, o.b2), o.eps, o.weight_decay)
    host = bench_train.host_batch(np.random.default_rng(SEED), batch, args.size, CHANNELS)
    images, targets = (torch.from_numpy(host[k]).to(device) for k in ("image", "label"))
    steps = {"train": lambda: ref.train_step(model, opt, images, targets),
             "eval": lambda: ref.eval_step(model, images)}
    budget = bench_train.Budget(args.max_seconds, args.steps)
    labels = {"model": SEED_CNN, "size": args.size, "batch": batch, "dtype": dtype,
              "channels": CHANNELS, "path": "device"}
    extra = {"torch": torch.__version__, "channels_last": True,
             "autocast": dtype == "bfloat16",
             "torch_device": torch.cuda.get_device_name() if cuda else "cpu"}
    for what, fn in steps.items():
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        def step(fn=fn) -> _Synced:
            with torch.autocast(device, torch.bfloat16, enabled=dtype == "bfloat16"):
                fn()
            return _Synced(torch, cuda)

        figures = guarded(lambda: bench_train.time_steps(step, budget, ("torch", what), batch,
                                                         args.size), what, labels)
        if figures is None and cuda:
            torch.cuda.empty_cache()  # what the failed step held, for the next one
        elif figures is not None:
            peak = torch.cuda.max_memory_allocated() if cuda else None
            bench_train.emit(figure=what, impl="torch", **labels, **figures, **extra,
                             peak_bytes=peak)


def run_one(args: argparse.Namespace) -> None:
    """Runs the configuration named by ``--one``: ``versions``, ``store``,
    ``pipeline:W``, ``jax:MODEL:DTYPE:BATCH`` or ``torch:DTYPE:BATCH``."""
    kind, *rest = args.one.split(":")
    if kind == "versions" and not rest:
        child_versions(args)
    elif kind == "store" and not rest:
        child_store(args)
    elif kind == "pipeline" and len(rest) == 1:
        child_pipeline(args, int(rest[0]))
    elif kind == "jax" and len(rest) == 3:
        child_jax(args, rest[0], rest[1], int(rest[2]))
    elif kind == "torch" and len(rest) == 2:
        child_torch(args, rest[0], int(rest[1]))
    else:
        raise SystemExit(f"unknown configuration {args.one!r}")


# --------------------------------------------------------------------------
# The parent: runs every configuration, stamps and prints their lines
# --------------------------------------------------------------------------


def versions() -> dict[str, Any]:
    """Python and package versions, read from the installed metadata (no imports)."""
    found: dict[str, Any] = {"python": platform.python_version()}
    for name in (*PACKAGES, "torch"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "torch":
                found[name] = None
    return found


def torch_wanted(choice: str) -> bool:
    """Whether to time the PyTorch reference (``--torch``)."""
    return choice == "yes" or (choice == "auto" and importlib.util.find_spec("torch") is not None)


def configurations(args: argparse.Namespace) -> list[str]:
    """Every configuration, most wanted first (the clock may stop the last ones):
    the seed CNN's, then each backbone's at the smallest batch."""
    batches, dtypes, models = int_list(args.batches), str_list(args.dtypes), str_list(args.models)
    names = ["store"]
    if SEED_CNN in models:
        names += [f"jax:{SEED_CNN}:{d}:{b}" for b in batches for d in dtypes]
    names += [f"jax:{m}:{d}:{min(batches)}" for m in models if m != SEED_CNN
              for d in str_list(args.backbone_dtypes)]
    names += [f"pipeline:{w}" for w in int_list(args.workers)]
    if torch_wanted(args.torch):
        names += [f"torch:{d}:{b}" for b in batches for d in dtypes]
    return names


def child_env(workdir: str) -> dict[str, str]:
    """The children's environment: JAX's GPU memory share (unless set) and a
    compilation cache of this run's own, so that a child compiles each program
    once while every ``compile`` figure stays a real compilation."""
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", MEM_FRACTION)
    env.update(PYTHONUNBUFFERED="1", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_COMPILATION_CACHE_DIR=str(pathlib.Path(workdir) / "jax_cache"))
    return env


def run_child(argv: list[str], name: str, timeout: float,
              workdir: str) -> tuple[list[dict], dict | None]:
    """Runs this script with ``--one=name``; its JSON lines and an error record, if it failed.

    The child leads a process group of its own (in this session), killed whole
    on a timeout or when this process stops, its Grain workers and process
    pools with it.
    """
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), *argv, f"--one={name}"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env(workdir), process_group=0)
    try:
        out, err = proc.communicate(timeout=timeout)
        failure = None if proc.returncode == 0 else f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        failure = f"timed out after {timeout:.0f} s"
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    lines, other = [], []
    for line in out.splitlines():
        record = _json_or_none(line)
        if isinstance(record, dict) and "figure" in record:
            lines.append(record)
        else:
            other.append(line)
    if failure is None:
        return lines, None
    return lines, {"figure": "error", "reason": failure, "seconds": time.perf_counter() - start,
                   "tail": ("\n".join(other) + "\n" + err)[-TAIL_CHARS:]}


def _json_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _round(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value


class Printer:
    """Prints records as JSON lines, stamped with the device kind and jax version."""

    def __init__(self, stamp: dict[str, Any]):
        self.stamp, self.records = stamp, []

    def __call__(self, record: dict, config: str | None = None) -> None:
        record = {k: v for k, v in record.items() if k != "bench"}
        line = {"bench": "gpu_check", "figure": record.pop("figure"), **record,
                **({"config": config} if config else {}), **self.stamp}
        self.records.append(line)
        print(json.dumps({k: _round(v) for k, v in line.items()}), flush=True)


def emit_ratios(printer: Printer) -> None:
    """JAX over torch img/s for every step, model, dtype and batch both measured on the
    device (torch times the seed CNN only)."""
    def key(r: dict) -> tuple:
        return r["figure"], r["model"], r["dtype"], r["batch"]

    rates = {(r["impl"], *key(r)): r["img_per_s"] for r in printer.records
             if r["figure"] in ("train", "eval") and r.get("path") == "device"}
    for (impl, *rest), rate in list(rates.items()):
        theirs = rates.get(("torch", *rest))
        if impl == "jax" and theirs:
            printer({"figure": "ratio", "what": rest[0], "model": rest[1], "dtype": rest[2],
                     "batch": rest[3], "jax_over_torch": rate / theirs})


def progress(message: str) -> None:
    """A progress note on stderr (stdout holds only the JSON lines)."""
    print(f"[gpu_check] {message}", file=sys.stderr, flush=True)


def run_all(args: argparse.Namespace, argv: list[str]) -> int:
    """Every configuration in turn, within ``--time_limit``; 1 if any failed."""
    start = time.perf_counter()
    deadline = start + args.time_limit
    shutil.rmtree(pathlib.Path(args.workdir) / "jax_cache", ignore_errors=True)
    lines, error = run_child(argv, "versions", max(deadline - time.perf_counter(), 1.0),
                             args.workdir)
    devices = lines[0] if lines else {}
    stamp = {"device_kind": devices.get("device_kind"), "jax": versions()["jax"]}
    printer = Printer(stamp)
    printer({"figure": "versions", **versions(), **{k: v for k, v in devices.items()
                                                    if k != "figure"},
             "host_cores": os.cpu_count(), "smoke": args.smoke,
             "mem_fraction": child_env(args.workdir)["XLA_PYTHON_CLIENT_MEM_FRACTION"]})
    failed = error is not None
    if error:
        printer(error, "versions")
    for name in configurations(args):
        left = deadline - time.perf_counter()
        if name.startswith("pipeline") and not (store_path(args) / "metadata.json").is_file():
            printer({"figure": "skip", "reason": "no store (its configuration failed)"}, name)
            continue
        if left < MIN_CHILD_SECONDS:
            printer({"figure": "skip", "reason": f"out of time ({left:.0f} s left)"}, name)
            continue
        progress(f"{name} ({left:.0f} s left)")
        lines, error = run_child(argv, name, left, args.workdir)
        for record in lines + ([error] if error else []):
            printer(record, name)
        failed |= error is not None
    emit_ratios(printer)
    printer({"figure": "done", "seconds": time.perf_counter() - start, "failed": failed})
    return int(failed)


def main(argv: list[str]) -> int:
    """One configuration (``--one``), or all of them with the scratch folder's upkeep."""
    args = parse_args(argv)
    if args.one:
        run_one(args)
        return 0
    # SIGTERM unwinds like an exception, so the running child's group is killed too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    scratch = None
    if args.workdir is None:
        scratch = args.workdir = tempfile.mkdtemp(prefix="hpajax_gpu_check_")
        argv = [*argv, f"--workdir={scratch}"]
    try:
        return run_all(args, argv)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
