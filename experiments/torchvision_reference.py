#!/usr/bin/env python3
"""torchvision's own logits for seeded ResNet/DenseNet weights: a test fixture.

  python experiments/torchvision_reference.py --out=tests/data/torchvision_reference.npz

(run it in a throwaway environment with torch and torchvision, e.g.
``python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.14.1
torchvision==0.29.1 numpy safetensors absl-py``; torch is no hpajax
dependency, and torchvision does not install beside the torch of the
benchmarks.)

For ``resnet18``, ``resnet50``, ``densenet121`` and ``densenet169`` (torchvision's
constructors, ``weights=None``, 1,000 classes, 3 input channels) it draws a
state dict with ``seeded_state_dict(names_shapes, seed=0)``, loads it
(``strict=True``), and runs the model in eval mode on CPU, float32, under
``torch.no_grad()``, on ``np.random.default_rng(1).random((2, 3, 64, 64),
dtype=np.float32)`` (NCHW, values in [0, 1); 64 px leaves DenseNet's last
block at 2x2). It writes one compressed ``.npz`` holding, per model,
``{name}_names`` (the state dict's keys in order), ``{name}_shapes`` (JSON
text of their shapes) and ``{name}_logits`` (float32 [2, 1000]), plus
``input_seed``, ``weights_seed``, ``input_shape`` and ``versions`` (JSON
text: torch, torchvision, numpy). The weights themselves are not stored:
``seeded_state_dict`` needs only NumPy, so a test regenerates them from the
names and shapes without torch. For trying an importer by hand, each state
dict is also saved to ``/tmp/tv_{name}.safetensors`` (outside the
repository: tens of MB each). One JSON line per model goes to stdout.

Only numpy, json, pathlib and absl are imported at the top level, so
``runpy.run_path(__file__)["seeded_state_dict"]`` works without torch.
"""

import json
import pathlib

import numpy as np
from absl import app, flags

MODELS = ("resnet18", "resnet50", "densenet121", "densenet169")
WEIGHTS_SEED = 0
INPUT_SEED = 1
INPUT_SHAPE = (2, 3, 64, 64)  # NCHW
NUM_CLASSES = 1000


def seeded_state_dict(names_shapes: list[tuple[str, tuple[int, ...]]],
                      seed: int) -> dict[str, np.ndarray]:
    """A stand-in checkpoint: seeded, realistic values for a torch state dict.

    What: for the k-th ``(name, shape)`` of ``names_shapes`` (k from 0, in the
    given order) it draws one array with its own generator
    ``rng = np.random.default_rng([seed, k])``, so a tensor's values depend
    only on the seed, its position and its shape, not on how many tensors
    there are. The rule, on the last dot-separated part of the name (the
    "leaf"); a parameter is BatchNorm's when its sibling ``running_mean``
    (same prefix) is in ``names_shapes``:

    * BatchNorm ``weight`` (1-D, sibling ``running_mean``):
      ``rng.uniform(0.5, 1.5, shape)``;
    * BatchNorm ``bias`` (sibling ``running_mean``): ``rng.normal(0, 0.1, shape)``;
    * ``running_mean``: ``rng.normal(0, 0.1, shape)``;
    * ``running_var``: ``rng.uniform(0.5, 2.0, shape)``;
    * ``num_batches_tracked``: ``np.zeros((), np.int64)`` (``shape`` ignored,
      nothing drawn);
    * any other ``weight`` (convolution, linear): ``rng.normal(0,
      sqrt(2 / fan_in), shape)`` with ``fan_in = prod(shape[1:])`` (He);
    * any other ``bias``: ``rng.normal(0, 0.01, shape)``.

    Draws are float64 (NumPy's ``Generator.normal`` / ``uniform``), then cast
    to float32. Any other leaf raises ``ValueError``.

    Why: torchvision's pretrained weights are a download and random
    initialisation in torch needs torch; this is a checkpoint anyone can
    rebuild with NumPy alone. Its statistics are non-trivial on purpose:
    the running mean is not 0 and the running variance not 1, the scale not 1
    and the shift not 0, every tensor differs in value, and the kernels are
    scaled so activations neither vanish nor explode. So an importer that
    swaps mean and variance, or scale and shift, drops a bias, forgets or
    mis-orders a kernel transpose (OIHW to HWIO, [out, in] to [in, out]), or
    maps a tensor to the wrong layer gives different logits from torch's.
    """
    names = {name for name, _ in names_shapes}
    state = {}
    for k, (name, shape) in enumerate(names_shapes):
        shape = tuple(int(d) for d in shape)
        prefix, _, leaf = name.rpartition(".")
        batch_norm = (f"{prefix}.running_mean" if prefix else "running_mean") in names
        rng = np.random.default_rng([seed, k])
        if leaf == "num_batches_tracked":
            value = np.zeros((), np.int64)
        elif leaf == "running_mean":
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "running_var":
            value = rng.uniform(0.5, 2.0, shape)
        elif leaf == "weight" and batch_norm and len(shape) == 1:
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "bias" and batch_norm:
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "weight":
            fan_in = int(np.prod(shape[1:], dtype=np.int64))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif leaf == "bias":
            value = rng.normal(0.0, 0.01, shape)
        else:
            raise ValueError(f"no drawing rule for {name!r} {shape}")
        if value.dtype != np.int64:
            value = value.astype(np.float32)
        state[name] = value
    return state


def main(argv):
    del argv
    import safetensors.torch
    import torch
    import torchvision

    torch.use_deterministic_algorithms(True)
    pathlib.Path(FLAGS.tmp_dir).mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(INPUT_SEED).random(INPUT_SHAPE, dtype=np.float32)
    arrays = {
        "input_seed": np.array(INPUT_SEED),
        "weights_seed": np.array(WEIGHTS_SEED),
        "input_shape": np.array(INPUT_SHAPE),
        "versions": np.array(json.dumps({"torch": torch.__version__,
                                         "torchvision": torchvision.__version__,
                                         "numpy": np.__version__})),
    }
    for name in FLAGS.models:
        model = getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES)
        names_shapes = [(key, tuple(value.shape)) for key, value in model.state_dict().items()]
        state = seeded_state_dict(names_shapes, seed=WEIGHTS_SEED)
        tensors = {key: torch.from_numpy(value) for key, value in state.items()}
        model.load_state_dict(tensors, strict=True)
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy().astype(np.float32)
        assert logits.shape == (INPUT_SHAPE[0], NUM_CLASSES), logits.shape
        assert np.isfinite(logits).all(), name
        safetensors.torch.save_file(tensors, f"{FLAGS.tmp_dir}/tv_{name}.safetensors")
        arrays[f"{name}_names"] = np.array([key for key, _ in names_shapes], dtype=str)
        arrays[f"{name}_shapes"] = np.array(json.dumps([list(s) for _, s in names_shapes]))
        arrays[f"{name}_logits"] = logits
        print(json.dumps({"model": name, "tensors": len(names_shapes),
                          "logits_mean": float(logits.mean()),
                          "logits_std": float(logits.std())}), flush=True)
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    # Defined here, not at import, so runpy.run_path can load the module
    # more than once in a process.
    flags.DEFINE_string("out", "tests/data/torchvision_reference.npz", "Output .npz.")
    flags.DEFINE_list("models", list(MODELS), "torchvision constructors to run.")
    flags.DEFINE_string("tmp_dir", "/tmp", "Where the .safetensors state dicts go.")
    FLAGS = flags.FLAGS
    app.run(main)
