#!/usr/bin/env python3
"""Training and evaluation step throughput, one JSON line per figure.

  .venv/bin/python experiments/bench_train.py [--model=seed_cnn] [--sizes=128,256,512]
      [--batch_sizes=8,32] [--dtypes=float32,bfloat16] [--channels=4]
      [--max_seconds_per_figure=20] [--notorch]

For the model ``--model`` (the seed CNN or one of ``hpajax.config.BACKBONES``)
at every image size, batch size and model dtype it times, on synthetic
random uint8 images and multi-hot labels, the real jitted steps of
``hpajax.steps`` built as the trainer builds them (state donated, batches
sharded over a ``data`` mesh of all devices):

  * ``train``: img/s of ``train_step`` (augmentation on, as in training) on a
    batch already on the device; with ``--no_augment_too`` also with
    augmentation off (float32 only), as ``"augment": false``;
  * ``eval``: img/s of ``eval_step`` (on the same batch with a full ``mask``);
  * ``compile``: seconds to lower and compile each step;
  * ``host_overhead``: seconds per train step when every step also takes a
    fresh host NumPy batch through ``hpajax.steps.to_device`` and only the
    end of the loop syncs, as in the real loop, next to the pure device step
    time and their difference.

Steps are timed with ``jax.block_until_ready`` after one warm-up step; at
most ``--steps`` of them, fewer when a step is slow, so that each figure's
timed steps take about ``--max_seconds_per_figure``. Each timed figure also
gives the host cores this process kept busy (``cores_used``) and those other
processes did meanwhile (``other_cores``): on a shared machine, figures with
``other_cores`` well above 0 are not comparable. A combination is
skipped, with a ``skip`` line, when its step is predicted (from the smaller
sizes' per-pixel time) to take longer than that, or when the compiled step
would not fit in the device's memory.

With ``--torch`` (the default when ``import torch`` works) the PyTorch
reference of ``experiments/torch_reference.py`` (torchvision's model for a
backbone) runs the same sizes, batches and channels in float32 on ``torch.set_num_threads(<cores>)`` threads, as
``"impl": "torch"`` lines, each followed by a ``ratio`` line: JAX float32
img/s over torch img/s, against the targets of 1.25 (train) and 1.0 (eval),
flagged ``contended`` when other processes competed (torch's OpenMP threads
then slow down far more than XLA's, which flatters JAX). A ``torch_check``
line first compares parameter counts and the logits of both models given the
same weights. The last line gives the process's peak host memory
(``ru_maxrss``): one run per model and size measures a model's. The same
script runs unchanged on a GPU (the setup line names the device).
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import app, flags

from hpajax import augment, classes, models, xla_defaults
from hpajax import steps as steps_lib
from hpajax.config import BACKBONES, base_config, model_config
from hpajax.models import weights

_MODEL = flags.DEFINE_enum("model", "seed_cnn", ["seed_cnn", *BACKBONES], "config.model.name.")
_SIZES = flags.DEFINE_list("sizes", ["128", "256", "512"], "Image sides, in px.")
_BATCHES = flags.DEFINE_list("batch_sizes", ["8", "32"], "Global batch sizes.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "config.model.dtype values.")
_CHANNELS = flags.DEFINE_integer("channels", 4, "Image channels (the seed used 3, RGB).")
_STEPS = flags.DEFINE_integer("steps", 3, "Most timed steps per figure, after a warm-up step.")
_MAX_SECONDS = flags.DEFINE_float(
    "max_seconds_per_figure", 20.0,
    "Time budget of each figure's timed steps; slower combinations are skipped.")
_NO_AUGMENT_TOO = flags.DEFINE_boolean(
    "no_augment_too", True, "Also time the float32 train step with augmentation off.")
_TORCH = flags.DEFINE_boolean(
    "torch", None, "Run the PyTorch reference too (default: when torch is importable).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic batches and the model.")

TARGETS = {"train": 1.25, "eval": 1.0}  # JAX float32 img/s over torch img/s, on CPU
_HOST_BATCHES = 3  # distinct host batches cycled through by the host-overhead loop
_CHECK_SIZE, _CHECK_BATCH = 128, 4  # the torch-vs-JAX numerical check's input
_CONTENDED_CORES = 0.25  # other processes' busy cores above which a ratio is flagged


def emit(**fields) -> None:
    """Prints one JSON line, floats rounded to 4 significant digits."""
    fields = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in fields.items()}
    print(json.dumps({"bench": "train", **fields}), flush=True)


def make_config(dtype: str, augment_on: bool = True, model: str = "seed_cnn"
                ) -> ml_collections.ConfigDict:
    """``base_config()`` with the model ``model`` in ``dtype``, augmentation on or all off."""
    config = base_config()
    config.model = model_config(model)
    config.model.dtype = dtype
    if not augment_on:
        for op in ("rotate", "zoom", "brightness", "hflip", "vflip"):
            config.augment[op] = False
    return config


def host_batch(rng: np.random.Generator, batch_size: int, size: int,
               channels: int) -> dict[str, np.ndarray]:
    """A training batch: random uint8 images and multi-hot labels (~1.5 per image)."""
    return {"image": rng.integers(0, 256, (batch_size, size, size, channels), np.uint8),
            "label": (rng.random((batch_size, classes.NUM_CLASSES)) < 1.5 / 28).astype(np.uint8)}


def memory_limit_bytes() -> int:
    """The first device's memory, or the host's available memory on CPU."""
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def compiled_bytes(compiled) -> int | None:
    """Arguments, outputs and temporaries of a compiled step, if XLA reports them."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes
            - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


class Budget:
    """Decides how many steps to time and which combinations to skip.

    Remembers the last measured seconds per image pixel of each kind of
    step and predicts a larger combination's step time from it.
    """

    def __init__(self, max_seconds: float, max_steps: int):
        self.max_seconds, self.max_steps = max_seconds, max_steps
        self._per_pixel: dict[tuple, float] = {}

    def too_slow(self, kind: tuple, batch_size: int, size: int) -> float | None:
        """The predicted step seconds if over the budget, else None."""
        rate = self._per_pixel.get(kind)
        predicted = None if rate is None else rate * batch_size * size * size
        return predicted if predicted is not None and predicted > self.max_seconds else None

    def steps(self, kind: tuple, batch_size: int, size: int, warm_seconds: float) -> int:
        """Steps to time after a warm-up step of ``warm_seconds``; records the rate."""
        self._per_pixel[kind] = warm_seconds / (batch_size * size * size)
        return int(min(self.max_steps, max(1, self.max_seconds // max(warm_seconds, 1e-9))))


def _cpu_seconds() -> tuple[float, float] | None:
    """Busy CPU seconds of the whole host and of this process, or None off Linux."""
    try:
        ticks = [int(t) for t in pathlib.Path("/proc/stat").read_text().split()[1:9]]
    except (OSError, ValueError):
        return None
    own = os.times()
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def timed(fn: Callable[[], object]) -> tuple[float, dict]:
    """Seconds ``fn()`` takes, its result blocked on (a no-op for non-JAX results),
    and the host cores this process and all others kept busy meanwhile
    (``cores_used``, ``other_cores``: how parallel the step is, and whether
    other work competed with it)."""
    before, start = _cpu_seconds(), time.perf_counter()
    jax.block_until_ready(fn())
    seconds, after = time.perf_counter() - start, _cpu_seconds()
    if before is None or after is None:
        return seconds, {}
    own, total = (after[1] - before[1]) / seconds, (after[0] - before[0]) / seconds
    return seconds, {"cores_used": round(own, 2), "other_cores": round(max(total - own, 0.0), 2)}


def time_steps(step: Callable[[], object], budget: Budget, kind: tuple, batch_size: int,
               size: int) -> dict:
    """A warm-up ``step()``, then as many timed ones as the budget allows; figure fields.

    Only the last step's result is waited for (a donated one may be gone):
    one device runs its steps in order.
    """
    warm_s, _ = timed(step)
    n = budget.steps(kind, batch_size, size, warm_s)
    total, cores = timed(lambda: [step() for _ in range(n)][-1])
    return {"img_per_s": batch_size * n / total, "step_s": total / n, "steps": n, **cores}


def too_slow(budget: Budget, kind: tuple, batch_size: int, size: int, labels: dict,
             **fields) -> bool:
    """Whether the budget rules a step out; if so, says so in a ``skip`` line."""
    predicted = budget.too_slow(kind, batch_size, size)
    if predicted is not None:
        emit(figure="skip", impl=kind[0], what=kind[1], **labels, **fields, reason="too slow",
             predicted_step_s=predicted)
    return predicted is not None


def bench_jax_train(steps: steps_lib.Steps, host_batches: list[dict], budget: Budget,
                    labels: dict, augment_on: bool) -> dict | None:
    """Train, compile and (with augmentation) host-overhead figures; returns the train one."""
    batch_size, size = len(host_batches[0]["image"]), steps.image_shape[0]
    kind = ("jax", "train", steps.config.model.dtype, augment_on)
    if too_slow(budget, kind, batch_size, size, labels, augment=augment_on):
        return None
    state, sums = steps_lib.init_state(steps), steps_lib.zero_sums(steps)
    batch = steps_lib.to_device(steps, host_batches[0])
    start = time.perf_counter()
    compiled = steps.train.lower(state, batch, sums).compile()
    compile_s = time.perf_counter() - start
    needed, limit = compiled_bytes(compiled), memory_limit_bytes()
    if needed is not None and needed > limit:
        emit(figure="skip", impl="jax", what="train", **labels, augment=augment_on, reason="memory",
             needed_bytes=needed, available_bytes=limit)
        return None

    def step(images: dict) -> dict:
        """One train step, rebinding the donated state and sums."""
        nonlocal state, sums
        state, sums = steps.train(state, images, sums)
        return sums

    device = time_steps(lambda: step(batch), budget, kind, batch_size, size)
    emit(figure="train", impl="jax", **labels, augment=augment_on, **device)
    if augment_on:
        emit(figure="compile", impl="jax", what="train", **labels, seconds=compile_s)
        n, cycle = device["steps"], len(host_batches)
        host_s, cores = timed(lambda: [step(steps_lib.to_device(steps, host_batches[i % cycle]))
                                       for i in range(n)][-1])
        emit(figure="host_overhead", impl="jax", **labels, step_with_transfer_s=host_s / n,
             device_step_s=device["step_s"], overhead_s=host_s / n - device["step_s"], steps=n,
             **cores)
    return device


def bench_jax_eval(steps: steps_lib.Steps, host_batches: list[dict], budget: Budget,
                   labels: dict) -> dict | None:
    """Eval and compile figures of ``steps.eval``; returns the eval one."""
    batch_size, size = len(host_batches[0]["image"]), steps.image_shape[0]
    kind = ("jax", "eval", steps.config.model.dtype)
    if too_slow(budget, kind, batch_size, size, labels):
        return None
    state = steps_lib.init_state(steps)
    batch = steps_lib.to_device(steps, {**host_batches[0], "mask": np.ones(batch_size, bool)})
    start = time.perf_counter()
    steps.eval.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    figures = time_steps(lambda: steps.eval(state, batch), budget, kind, batch_size, size)
    emit(figure="eval", impl="jax", **labels, **figures)
    emit(figure="compile", impl="jax", what="eval", **labels, seconds=compile_s)
    return figures


class TorchBench:
    """The PyTorch reference's train and eval figures (float32)."""

    def __init__(self, channels: int, config: ml_collections.ConfigDict, seed: int):
        import torch

        import torch_reference as ref  # a sibling: the script's folder is on sys.path

        self.torch, self.ref, self.channels, self.seed = torch, ref, channels, seed
        self.model_cfg, self.opt_cfg = config.model, config.optimizer
        torch.set_num_threads(len(os.sched_getaffinity(0)))

    def model(self, size: int):
        """A freshly initialized torch model with the config's shape, for ``size`` px."""
        self.torch.manual_seed(self.seed)
        m = self.model_cfg
        if m.name != "seed_cnn":
            return self.ref.reference_backbone(m.name, self.channels, classes.NUM_CLASSES, size)
        return self.ref.SeedCNN(self.channels, classes.NUM_CLASSES, tuple(m.filters),
                                m.kernel_size, tuple(m.head))

    def same_weights(self, jax_model, x: np.ndarray) -> tuple[dict, object]:
        """Flax variables and a torch model holding the same weights, with non-trivial
        running statistics so that evaluation mode is checked too."""
        variables = jax.device_get(jax_model.init(jax.random.PRNGKey(self.seed), x,
                                                  train=False))
        model = self.model(x.shape[1])
        if self.model_cfg.name == "seed_cnn":
            variables = {**variables, "batch_stats": jax.tree.map(
                lambda v: v + 0.1, variables["batch_stats"])}
            self.ref.load_flax_variables(model, variables)
            return variables, model
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean") or name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        imported = weights.import_state(state, variables, range(self.channels),
                                        models.import_rules(self.model_cfg.name), new_head=False)
        return {"params": imported.params, "batch_stats": imported.batch_stats}, model

    def check(self, jax_model) -> None:
        """Parameter counts and the logits' agreement given the same weights."""
        rng = np.random.default_rng(self.seed)
        images = rng.integers(0, 256, (_CHECK_BATCH, _CHECK_SIZE, _CHECK_SIZE, self.channels),
                              np.uint8)
        x = augment.to_float(images)
        variables, model = self.same_weights(jax_model, x)
        diffs = {}
        for mode in (False, True):
            logits = jax_model.apply(variables, x, train=mode, mutable=["batch_stats"],
                                     rngs={"dropout": jax.random.key(0)})[0]
            model.train(mode)
            with self.torch.no_grad():
                theirs = model(self.ref.to_input(self.torch.from_numpy(images))).numpy()
            diffs["train" if mode else "eval"] = float(np.abs(np.asarray(logits) - theirs).max())
        ours = sum(models.param_counts(variables["params"]).values())
        emit(figure="torch_check", model=self.model_cfg.name, params_jax=ours,
             params_torch=self.ref.param_count(model),
             max_abs_logit_diff_train=diffs["train"], max_abs_logit_diff_eval=diffs["eval"])

    def run(self, host_batches: list[dict], budget: Budget, labels: dict) -> dict[str, dict]:
        """Train and eval figures of one size and batch (skips noted), keyed by step."""
        torch, ref = self.torch, self.ref
        images = torch.from_numpy(host_batches[0]["image"])
        label = torch.from_numpy(host_batches[0]["label"])
        model = self.model(images.shape[1])
        opt = ref.make_optimizer(model, self.opt_cfg.learning_rate,
                                 (self.opt_cfg.b1, self.opt_cfg.b2), self.opt_cfg.eps,
                                 self.opt_cfg.weight_decay)
        steps = {"train": lambda: ref.train_step(model, opt, images, label),
                 "eval": lambda: ref.eval_step(model, images)}
        batch_size, size = len(images), images.shape[1]
        out = {}
        for what, step in steps.items():
            if too_slow(budget, ("torch", what), batch_size, size, labels):
                continue
            figures = time_steps(step, budget, ("torch", what), batch_size, size)
            out[what] = figures
            emit(figure=what, impl="torch", **labels, **figures)
        return out


def torch_bench(enabled: bool | None, channels: int, seed: int,
                model: str = "seed_cnn") -> TorchBench | None:
    """The torch reference if wanted and importable; otherwise a note line and None."""
    if enabled is False:
        return None
    try:
        import torch  # noqa: F401
        if model != "seed_cnn":
            import torchvision  # noqa: F401
    except (ImportError, RuntimeError) as e:
        emit(figure="note", text=f"the PyTorch reference is skipped ({e}): pip install "
                                 "torch==2.13.0, or torch==2.14.1 torchvision==0.29.1 in a venv "
                                 "of their own for the backbones")
        return None
    return TorchBench(channels, make_config("float32", model=model), seed)


def emit_ratios(jax_figures: dict[str, dict | None], torch_figures: dict[str, dict],
                labels: dict) -> None:
    """One ``ratio`` line per step that both implementations measured.

    ``contended`` flags ratios whose figures ran while other processes kept
    more than ``_CONTENDED_CORES`` busy: torch's OpenMP threads slow down far
    more than XLA's under contention, so such ratios flatter JAX.
    """
    for what, target in TARGETS.items():
        ours, theirs = jax_figures.get(what), torch_figures.get(what)
        if not (ours and theirs):
            continue
        ratio = ours["img_per_s"] / theirs["img_per_s"]
        extra = {}
        plain = jax_figures.get("train_no_augment")
        if what == "train" and plain:
            extra["jax_no_augment_over_torch"] = plain["img_per_s"] / theirs["img_per_s"]
        others = [f.get("other_cores", 0.0) for f in (ours, theirs, plain) if f]
        emit(figure="ratio", what=what, model=labels["model"], size=labels["size"],
             batch=labels["batch"],
             jax_over_torch=ratio, **extra, target=target, meets=bool(ratio >= target),
             contended=bool(max(others) > _CONTENDED_CORES))


def emit_setup(added_flags: list[str], torch_ref: TorchBench | None) -> None:
    """The setup line: devices, versions, XLA flags, threads."""
    device = jax.devices()[0]
    fields = {"device_kind": device.device_kind, "platform": device.platform,
              "device_count": jax.device_count(), "jax": jax.__version__,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "xla_flags_added": added_flags,
              "host_cores": len(os.sched_getaffinity(0)), "loadavg_1min": os.getloadavg()[0]}
    if torch_ref is not None:
        fields.update(torch=torch_ref.torch.__version__,
                      torch_threads=torch_ref.torch.get_num_threads())
    emit(figure="setup", **fields)


def bench_size_batch(size: int, batch_size: int, budget: Budget,
                     torch_ref: TorchBench | None) -> None:
    """Every figure of one image size and batch size."""
    channels = _CHANNELS.value
    rng = np.random.default_rng(_SEED.value)
    host_batches = [host_batch(rng, batch_size, size, channels) for _ in range(_HOST_BATCHES)]
    figures: dict[str, dict | None] = {}
    mesh = steps_lib.make_mesh(batch_size)
    for dtype in _DTYPES.value:
        labels = {"model": _MODEL.value, "size": size, "batch": batch_size, "dtype": dtype,
                  "channels": channels}
        steps = steps_lib.build(make_config(dtype, model=_MODEL.value), mesh,
                                (size, size, channels))
        trained = bench_jax_train(steps, host_batches, budget, labels, augment_on=True)
        if dtype == "float32" and _NO_AUGMENT_TOO.value:
            plain = steps_lib.build(make_config(dtype, False, _MODEL.value), mesh,
                                    (size, size, channels))
            figures["train_no_augment"] = bench_jax_train(plain, host_batches, budget, labels,
                                                          augment_on=False)
        evaluated = bench_jax_eval(steps, host_batches, budget, labels)
        if dtype == "float32":
            figures.update(train=trained, eval=evaluated)
    if torch_ref is not None:
        labels = {"model": _MODEL.value, "size": size, "batch": batch_size, "dtype": "float32",
                  "channels": channels}
        emit_ratios(figures, torch_ref.run(host_batches, budget, labels), labels)


def main(argv: list[str]) -> None:
    """Setup line, the torch check, then every size and batch size, smallest first."""
    del argv
    added = xla_defaults.apply_cpu_defaults()
    torch_ref = torch_bench(_TORCH.value, _CHANNELS.value, _SEED.value, _MODEL.value)
    emit_setup(added, torch_ref)
    if torch_ref is not None:
        torch_ref.check(models.create(torch_ref.model_cfg))
    budget, start = Budget(_MAX_SECONDS.value, _STEPS.value), time.perf_counter()
    for size in sorted(map(int, _SIZES.value)):
        for batch_size in sorted(map(int, _BATCHES.value)):
            bench_size_batch(size, batch_size, budget, torch_ref)
    emit(figure="done", model=_MODEL.value, seconds=time.perf_counter() - start,
         loadavg_1min=os.getloadavg()[0],
         peak_host_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


if __name__ == "__main__":
    app.run(main)
