#!/usr/bin/env python3
"""torchvision's and timm's own logits for seeded backbone weights: a test fixture.

  python experiments/torchvision_reference.py --out=tests/data/torchvision_reference.npz

(run it in a throwaway environment with torch, torchvision and timm, e.g.
``python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.14.1
torchvision==0.29.1 timm==1.0.31 numpy safetensors absl-py``; torch is no
hpajax dependency, and torchvision does not install beside the torch of the
benchmarks.)

For each model of ``MODELS`` (torchvision's or timm's constructor,
``weights=None``/``pretrained=False``, 1,000 classes, 3 input channels) it
draws a state dict with ``seeded_state_dict(names_shapes, seed=0)``, loads
it (``strict=True``), and runs the model in eval mode on CPU, float32, under
``torch.no_grad()``, on ``np.random.default_rng(1).random((2, 3, S, S),
dtype=np.float32)`` (NCHW, values in [0, 1)), S = 64 but where ``SIDES``
says otherwise (Inception-v3 needs 75 px or more). 64 px leaves DenseNet's
last block at 2x2. A ViT's file is that of the 224 px model (a 14x14 grid
of position embeddings); its logits are those of the model built for S px
with that grid resized by timm's ``resample_abs_pos_embed`` (bicubic,
antialiased), as timm loads a 224 px checkpoint at another size. It writes
one compressed ``.npz`` holding, per model, ``{name}_names`` (the state
dict's keys in order), ``{name}_shapes`` (JSON text of their shapes),
``{name}_logits`` (float32 [2, 1000]), ``{name}_input_shape`` and
``{name}_num_params`` (torch's count of the parameters of the model of
the file, a ViT's at 224 px), plus
``input_seed``, ``weights_seed``, ``input_shape`` (the default one) and
``versions`` (JSON text: torch, torchvision, timm, numpy). The weights themselves are not stored:
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

# name -> (library, constructor, its keyword arguments): hpajax's models and their
# references (README, "Models").
MODELS = {
    "resnet18": ("torchvision", "resnet18", {}),
    "resnet50": ("torchvision", "resnet50", {}),
    "densenet121": ("torchvision", "densenet121", {}),
    "densenet169": ("torchvision", "densenet169", {}),
    "inception_v3": ("torchvision", "inception_v3", {"aux_logits": True, "init_weights": False}),
    "efficientnet_b0": ("torchvision", "efficientnet_b0", {}),
    "efficientnet_b4": ("torchvision", "efficientnet_b4", {}),
    "convnext_tiny": ("torchvision", "convnext_tiny", {}),
    "seresnext50_32x4d": ("timm", "seresnext50_32x4d", {}),
    "legacy_seresnext50_32x4d": ("timm", "legacy_seresnext50_32x4d", {}),
    "xception": ("timm", "legacy_xception", {}),
    "vit_small_patch16": ("timm", "vit_small_patch16_224", {}),
    "vit_base_patch16": ("timm", "vit_base_patch16_224", {}),
}
WEIGHTS_SEED = 0
INPUT_SEED = 1
INPUT_SHAPE = (2, 3, 64, 64)  # NCHW
SIDES = {"inception_v3": 96}  # input sides other than INPUT_SHAPE's
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
    * any other 1-D ``weight`` (a LayerNorm's scale), and a ConvNeXt's
      ``layer_scale``: ``rng.uniform(0.5, 1.5, shape)``;
    * a ViT's ``cls_token`` and ``pos_embed``: ``rng.normal(0, 0.5, shape)``;
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
        elif (leaf == "weight" and len(shape) == 1) or leaf == "layer_scale":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf in ("cls_token", "pos_embed"):
            value = rng.normal(0.0, 0.5, shape)
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


def build(name: str, **kwargs):
    """The torch model ``name`` of ``MODELS`` with 1,000 classes and no weights."""
    library, constructor, defaults = MODELS[name]
    if library == "timm":
        import timm

        return timm.create_model(constructor, pretrained=False, num_classes=NUM_CLASSES,
                                 **defaults, **kwargs)
    import torchvision

    return getattr(torchvision.models, constructor)(weights=None, num_classes=NUM_CLASSES,
                                                    **defaults, **kwargs)


def loadable(name: str, state: dict, side: int) -> tuple:
    """The model to run at ``side`` px and the state dict it loads: ``state`` itself, or
    for a ViT ``state`` with its 224 px position grid resized to ``side`` px as timm does."""
    if "pos_embed" not in state:
        return build(name), state
    from timm.layers import resample_abs_pos_embed

    model = build(name, img_size=side)
    grid = side // model.patch_embed.patch_size[0]
    return model, {**state, "pos_embed": resample_abs_pos_embed(
        state["pos_embed"], new_size=(grid, grid), num_prefix_tokens=1)}


def main(argv):
    del argv
    import safetensors.torch
    import timm
    import torch
    import torchvision

    torch.use_deterministic_algorithms(True)
    pathlib.Path(FLAGS.tmp_dir).mkdir(parents=True, exist_ok=True)
    arrays = {
        "input_seed": np.array(INPUT_SEED),
        "weights_seed": np.array(WEIGHTS_SEED),
        "input_shape": np.array(INPUT_SHAPE),
        "versions": np.array(json.dumps({"torch": torch.__version__,
                                         "torchvision": torchvision.__version__,
                                         "timm": timm.__version__,
                                         "numpy": np.__version__})),
    }
    for name in FLAGS.models:
        side = SIDES.get(name, INPUT_SHAPE[-1])
        shape = (*INPUT_SHAPE[:2], side, side)
        x = np.random.default_rng(INPUT_SEED).random(shape, dtype=np.float32)
        reference = build(name)  # the model whose file the state dict stands for
        names_shapes = [(key, tuple(v.shape)) for key, v in reference.state_dict().items()]
        state = seeded_state_dict(names_shapes, seed=WEIGHTS_SEED)
        tensors = {key: torch.from_numpy(value) for key, value in state.items()}
        model, loaded = loadable(name, tensors, side)
        model.load_state_dict(loaded, strict=True)
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy().astype(np.float32)
        assert logits.shape == (INPUT_SHAPE[0], NUM_CLASSES), logits.shape
        assert np.isfinite(logits).all(), name
        safetensors.torch.save_file(tensors, f"{FLAGS.tmp_dir}/tv_{name}.safetensors")
        arrays[f"{name}_names"] = np.array([key for key, _ in names_shapes], dtype=str)
        arrays[f"{name}_shapes"] = np.array(json.dumps([list(s) for _, s in names_shapes]))
        arrays[f"{name}_logits"] = logits
        arrays[f"{name}_input_shape"] = np.array(shape)
        arrays[f"{name}_num_params"] = np.array(sum(p.numel() for p in reference.parameters()))
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
    flags.DEFINE_list("models", list(MODELS), "Models of MODELS to run.")
    flags.DEFINE_string("tmp_dir", "/tmp", "Where the .safetensors state dicts go.")
    FLAGS = flags.FLAGS
    app.run(main)
