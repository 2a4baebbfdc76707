#!/usr/bin/env python3
"""Where the CPU training time goes: the seed CNN's convolutions, one JSON line per figure.

  .venv/bin/python experiments/bench_layers.py [--size=128] [--batch=8] [--repeats=5]

Side by side with PyTorch (``torch_reference``'s layout, channels_last, as
many threads as cores), in milliseconds, the best of ``--repeats`` timings:

  * ``layer``: each of the eight convolutions alone (VALID, kernel 3, the
    shapes the model gives them at ``--size``): forward, and forward plus
    both gradients (the first layer's input needs none);
  * ``chain``: the eight convolutions chained with the 2×2 pools and global
    averages but no BatchNorm or ReLU, forward plus the weight gradients;
  * ``step``: the full training step (``bench_train``'s, augmentation off)
    for scale.

The ``layer`` sums compare the convolution kernels themselves; the
``chain`` and ``step`` figures add what a whole network costs on top (on
XLA:CPU, among other things, the layout transposes its convolution weight
gradients need). Needs torch (``pip install torch==2.13.0``) and, like hpajax.main,
applies ``hpajax.xla_defaults``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags

from hpajax import steps as steps_lib
from hpajax import xla_defaults
from hpajax.models.seed_cnn import SeedCNN

import bench_train  # siblings: the script's folder is on sys.path
import torch_reference

_SIZE = flags.DEFINE_integer("size", 128, "Image side, in px.")
_BATCH = flags.DEFINE_integer("batch", 8, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timings per figure; the best is kept.")


def emit(**fields) -> None:
    fields = {k: round(v, 2) if isinstance(v, float) else v for k, v in fields.items()}
    print(json.dumps({"bench": "layers", **fields}), flush=True)


def best_ms(fn: Callable[[], object]) -> float:
    """Best of ``--repeats`` timings of ``fn()`` after a warm-up, results blocked on."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def conv_shapes(size: int, channels: int) -> list[tuple[int, int, int]]:
    """(input side, input channels, output channels) of the eight convolutions."""
    shapes, side = [], size
    for features in SeedCNN.filters:
        for _ in range(2):
            shapes.append((side, channels, features))
            side, channels = side - 2, features
        side //= 2
    return shapes


def jax_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def jax_chain(ws: list[jax.Array], x: jax.Array) -> jax.Array:
    """The model's convolution skeleton: convs, pools, global averages, summed."""
    total = 0.0
    for i, w in enumerate(ws):
        x = jax_conv(x, w)
        if i % 2:
            x = x[:, :x.shape[1] // 2 * 2:2, :x.shape[2] // 2 * 2:2]
            total = total + x.mean(axis=(1, 2)).sum()
    return total


def torch_chain(ws: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for i, w in enumerate(ws):
        x = torch.nn.functional.conv2d(x, w)
        if i % 2:
            x = x[:, :, :x.shape[2] // 2 * 2:2, :x.shape[3] // 2 * 2:2]
            total = total + x.mean(dim=(2, 3)).sum()
    return total


def channels_last(array: np.ndarray, grad: bool = True) -> torch.Tensor:
    """An NHWC array as an NCHW torch tensor in channels_last memory."""
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    return tensor.requires_grad_(grad)


def torch_weight(w: np.ndarray) -> torch.Tensor:
    """An HWIO kernel as torch's OIHW, channels_last, requiring grad."""
    return torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(
        memory_format=torch.channels_last).requires_grad_()


def bench_layer(rng: np.random.Generator, batch: int, side: int, cin: int, cout: int,
                first: bool) -> dict[str, float]:
    """One convolution's figures; ``first``: the image input needs no gradient."""
    x = rng.random((batch, side, side, cin), np.float32)
    w = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    g = np.ones((batch, side - 2, side - 2, cout), np.float32)
    jx, jw, jg = map(jnp.asarray, (x, w, g))
    forward = jax.jit(jax_conv)
    inputs = (lambda w: jax_conv(jx, w), jw) if first else (jax_conv, jx, jw)

    @jax.jit
    def backward(g):
        """The output (so XLA keeps the forward pass) and the gradients."""
        out, pullback = jax.vjp(*inputs)
        return out, pullback(g)

    tx, tw, tg = channels_last(x, grad=not first), torch_weight(w), channels_last(g, grad=False)
    wrt = (tw,) if first else (tx, tw)

    def torch_forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(tx, tw)

    return {"jax_forward_ms": best_ms(lambda: forward(jx, jw)),
            "jax_forward_backward_ms": best_ms(lambda: backward(jg)),
            "torch_forward_ms": best_ms(torch_forward),
            "torch_forward_backward_ms": best_ms(
                lambda: torch.autograd.grad(torch.nn.functional.conv2d(tx, tw), wrt, tg))}


def bench_chain(rng: np.random.Generator, batch: int, size: int, channels: int) -> dict:
    shapes = conv_shapes(size, channels)
    ws = [(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
          for _, cin, cout in shapes]
    x = rng.random((batch, size, size, channels), np.float32)
    jws, jx = [jnp.asarray(w) for w in ws], jnp.asarray(x)
    grad = jax.jit(jax.grad(jax_chain))
    tws, tx = [torch_weight(w) for w in ws], channels_last(x, grad=False)
    return {"jax_forward_backward_ms": best_ms(lambda: grad(jws, jx)),
            "torch_forward_backward_ms": best_ms(
                lambda: torch.autograd.grad(torch_chain(tws, tx), tws))}


def bench_step(batch: int, size: int, channels: int) -> dict[str, float]:
    """Milliseconds of hpajax's train step (augmentation off) and the torch reference's."""
    host = bench_train.host_batch(np.random.default_rng(0), batch, size, channels)
    steps = steps_lib.build(bench_train.make_config("float32", augment_on=False),
                            steps_lib.make_mesh(batch), (size, size, channels))
    state, sums = steps_lib.init_state(steps), steps_lib.zero_sums(steps)
    device_batch = steps_lib.to_device(steps, host)

    def step():
        nonlocal state, sums
        state, sums = steps.train(state, device_batch, sums)
        return sums

    torch.manual_seed(0)
    model = torch_reference.SeedCNN(channels)
    opt = torch_reference.make_optimizer(model)
    images, labels = torch.from_numpy(host["image"]), torch.from_numpy(host["label"])
    return {"jax_ms": best_ms(step),
            "torch_ms": best_ms(lambda: torch_reference.train_step(model, opt, images, labels))}


def main(argv: list[str]) -> None:
    del argv
    added = xla_defaults.apply_cpu_defaults()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    size, batch, channels = _SIZE.value, _BATCH.value, 4
    emit(figure="setup", size=size, batch=batch, jax=jax.__version__, torch=torch.__version__,
         torch_threads=torch.get_num_threads(), xla_flags_added=added)
    rng = np.random.default_rng(0)
    sums: dict[str, float] = {}
    for i, (side, cin, cout) in enumerate(conv_shapes(size, channels)):
        figures = bench_layer(rng, batch, side, cin, cout, first=i == 0)
        emit(figure="layer", side=side, cin=cin, cout=cout, **figures)
        for key, value in figures.items():
            sums[key] = sums.get(key, 0.0) + value
    emit(figure="layer_sum", **sums)
    emit(figure="chain", **bench_chain(rng, batch, size, channels))
    emit(figure="step", **bench_step(batch, size, channels))


if __name__ == "__main__":
    app.run(main)
