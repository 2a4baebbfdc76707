"""CPU inference: predict's jitted function against the exported files and PyTorch's eval mode.

For each model (``--models``) at each image size (``--sizes``) and batch
(``--batches``), one JSON line per engine with its images/s (the median of
``--repeats`` timed calls after a warm-up call):

- ``xla``: ``steps.eval``, the jitted function ``predict`` runs;
- ``stablehlo``: ``export``'s ``model.jax_export``, deserialized and called;
- ``onnx``: ``export``'s ``model.onnx`` in onnxruntime (CPU provider, every core);
- ``torch``: the same network in PyTorch's eval mode (``torch.inference_mode``,
  channels-last), from ``experiments/torch_reference.py`` run by
  ``--torch_python`` (the seed CNN; torch 2.13 in the project's venv) or
  ``--torchvision_python`` (the backbones: torchvision in the throwaway
  torch 2.14.1 venv); skipped where that python is not given or has no torch.

Random weights (the speed does not depend on them), float32, no test-time
augmentation, the model's input at the store's size (no resize).

  .venv/bin/python experiments/bench_predict.py --models=seed_cnn,resnet50 \
      --sizes=128,256,512 --batches=1,32 --torch_python=.venv/bin/python \
      --torchvision_python=/tmp/tv/bin/python
"""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import app, flags

_MODELS = flags.DEFINE_list("models", ["seed_cnn", "resnet50"], "Models: seed_cnn or a backbone.")
_SIZES = flags.DEFINE_list("sizes", ["128", "256", "512"], "Image sides in px.")
_BATCHES = flags.DEFINE_list("batches", ["1", "32"], "Images per call.")
_ENGINES = flags.DEFINE_list("engines", ["xla", "stablehlo", "onnx", "torch"], "Engines.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per figure (the median is kept).")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", None, "A python with torch, for the seed "
                                    "CNN's torch figures.")
_TORCHVISION_PYTHON = flags.DEFINE_string("torchvision_python", None, "A python with torch and "
                                          "torchvision, for the backbones' torch figures.")

_REPO = pathlib.Path(__file__).resolve().parents[1]
CHANNELS = 4


def emit(**fields) -> None:
    print(json.dumps({"bench": "predict", **fields}), flush=True)


def images_per_second(fn: Callable[[np.ndarray], object], images: np.ndarray,
                      repeats: int) -> float:
    """``len(images)`` over the median seconds of ``repeats`` calls after a warm-up call."""
    fn(images)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(images)
        seconds.append(time.perf_counter() - start)
    return len(images) / statistics.median(seconds)


def jax_engines(model: str, size: int, batches: Sequence[int], engines: Sequence[str],
                repeats: int) -> None:
    """The xla, stablehlo and onnx figures of ``model`` at ``size``."""
    import jax  # noqa: PLC0415  (the torch children import none of hpajax)
    import onnxruntime  # noqa: PLC0415

    from hpajax import config as config_lib, export, exported, inference  # noqa: PLC0415
    from hpajax import steps as steps_lib  # noqa: PLC0415

    config = config_lib.base_config()
    config.model = config_lib.model_config(model)
    config.data.input_size = config.data.image_size = size
    steps = steps_lib.build(config, steps_lib.make_mesh(config.eval_batch_size),
                            steps_lib.input_shape(config))
    state = steps_lib.init_state(steps)
    member = export.Member(1.0, _REPO, inference.Restored(config, steps, state, 0))
    files = export.serialize([member], size,
                             [e for e in engines if e in exported.FILES])
    run = {}
    if "xla" in engines:
        def xla(images):
            batch = {"image": images, "mask": np.ones(len(images), bool),
                     "label": np.zeros((len(images), 28), np.uint8)}
            return jax.block_until_ready(steps.eval(state, steps_lib.to_device(steps, batch)))
        run["xla"] = xla
    if exported.FILES["stablehlo"] in files:
        call = jax.export.deserialize(bytearray(files[exported.FILES["stablehlo"]])).call
        run["stablehlo"] = lambda images: jax.block_until_ready(call(images))
    if exported.FILES["onnx"] in files:
        session = onnxruntime.InferenceSession(files[exported.FILES["onnx"]],
                                               providers=["CPUExecutionProvider"])
        run["onnx"] = lambda images: session.run(None, {"images": images})
    for batch in batches:
        images = np.random.default_rng(0).integers(0, 256, (batch, size, size, CHANNELS),
                                                   np.uint8)
        for engine, fn in run.items():
            emit(engine=engine, model=model, size=size, batch=batch,
                 img_per_s=round(images_per_second(fn, images, repeats), 2))


def torch_engine(python: str | None, model: str, size: int, batches: Sequence[int],
                 repeats: int) -> None:
    """The torch figures, from ``torch_reference.py`` run by ``python``."""
    if python is None:
        emit(engine="torch", model=model, size=size, skipped="no --torch_python / "
             "--torchvision_python for this model")
        return
    command = [python, str(_REPO / "experiments" / "torch_reference.py"), model, str(size),
               ",".join(map(str, batches)), str(repeats)]
    out = subprocess.run(command, capture_output=True, text=True, cwd=_REPO)
    if out.returncode:
        emit(engine="torch", model=model, size=size, skipped=out.stderr.strip()[-300:])
        return
    for line in out.stdout.splitlines():
        emit(engine="torch", model=model, size=size, **json.loads(line))


def main(argv: Sequence[str]) -> None:
    del argv
    import jax  # noqa: PLC0415

    from hpajax import xla_defaults  # noqa: PLC0415

    xla_defaults.apply_cpu_defaults()
    emit(figure="machine", cpu=_cpu(), cores=os.cpu_count(), jax=jax.__version__,
         python=sys.version.split()[0])
    batches = [int(b) for b in _BATCHES.value]
    for model in _MODELS.value:
        for size in map(int, _SIZES.value):
            jax_engines(model, size, batches, _ENGINES.value, _REPEATS.value)
            if "torch" in _ENGINES.value:
                python = _TORCH_PYTHON.value if model == "seed_cnn" else _TORCHVISION_PYTHON.value
                torch_engine(python, model, size, batches, _REPEATS.value)


def _cpu() -> str:
    """The CPU's model name and vector instruction sets, from /proc/cpuinfo."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    info = cpuinfo.read_text() if cpuinfo.exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), "unknown")
    flags_line = next((line for line in info.splitlines() if line.startswith("flags")), "")
    isa = sorted(f for f in flags_line.split() if f.startswith(("avx", "fma", "amx")))
    return f"{name} ({' '.join(isa)})"


if __name__ == "__main__":
    app.run(main)
