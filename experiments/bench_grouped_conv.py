#!/usr/bin/env python3
"""Grouped and depthwise convolutions on the CPU, JAX beside torch: one JSON line each.

  python experiments/bench_grouped_conv.py [--batch=32] [--side=16] [--repeats=5]

SE-ResNeXt's 3×3 convolutions have 32 groups, Xception's and EfficientNet's
are depthwise (one group per channel), ConvNeXt's depthwise 7×7. For one such
layer at the shape the backbone gives it at 128 px (``--side``: the map's
side), in milliseconds, the best of ``--repeats``: the forward pass and the
forward plus both gradients (input and kernel), in JAX (jitted, hpajax's XLA
defaults) as XLA's grouped convolution (``xla``) and as hpajax's
``models.layers.grouped_conv`` (``hpajax``), and in torch (channels_last, as
many threads as cores), and the same for a dense 3×3 convolution of the same
width for scale. Needs torch (``pip install torch==2.13.0``).
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

from hpajax import xla_defaults
from hpajax.models.layers import grouped_conv

_BATCH = flags.DEFINE_integer("batch", 32, "Batch size.")
_SIDE = flags.DEFINE_integer("side", 16, "The feature map's side, px.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timings per figure; the best is kept.")

# name -> (channels, kernel, groups): the layers' shapes in the backbones.
LAYERS = {
    "dense_3x3": (256, 3, 1),
    "seresnext_grouped_3x3": (256, 3, 32),  # layer2's conv2 (32 groups of 8)
    "xception_depthwise_3x3": (256, 3, 256),  # block2's separable convolutions
    "convnext_depthwise_7x7": (192, 7, 192),  # stage 2's dwconv
}


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls after one warm-up, in milliseconds."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def jax_times(x: np.ndarray, kernel: np.ndarray, groups: int, repeats: int,
              xla: bool) -> dict:
    """Forward, and forward plus both gradients, of the layer in JAX (NHWC, HWIO): XLA's
    convolution, or ``grouped_conv``."""
    pad = ((kernel.shape[0] // 2,) * 2,) * 2

    def conv(x, k):
        if not xla:
            return grouped_conv(x, k, 1, pad)
        return jax.lax.conv_general_dilated(x, k, (1, 1), pad,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=groups)

    forward = jax.jit(conv)
    grads = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)))
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    return {"forward_ms": best_ms(lambda: forward(x, kernel).block_until_ready(), repeats),
            "train_ms": best_ms(lambda: jax.block_until_ready(grads(x, kernel)), repeats)}


def torch_times(x: np.ndarray, kernel: np.ndarray, groups: int, repeats: int) -> dict:
    """The same in torch (channels_last NCHW, OIHW)."""
    pad = kernel.shape[0] // 2
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    kt = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous().requires_grad_()
    xt.requires_grad_()

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, kt, padding=pad, groups=groups)

    def train():
        y = torch.nn.functional.conv2d(xt, kt, padding=pad, groups=groups)
        return torch.autograd.grad((y * y).sum(), (xt, kt))

    return {"forward_ms": best_ms(forward, repeats), "train_ms": best_ms(train, repeats)}


def main(argv: list[str]) -> None:
    del argv
    xla_defaults.apply_cpu_defaults()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rng = np.random.default_rng(0)
    for name, (channels, size, groups) in LAYERS.items():
        x = rng.standard_normal((_BATCH.value, _SIDE.value, _SIDE.value, channels), np.float32)
        kernel = rng.standard_normal((size, size, channels // groups, channels), np.float32)
        figures = {"torch": torch_times(x, kernel, groups, _REPEATS.value),
                   "xla": jax_times(x, kernel, groups, _REPEATS.value, xla=True)}
        if groups > 1:
            figures["hpajax"] = jax_times(x, kernel, groups, _REPEATS.value, xla=False)
        print(json.dumps({"layer": name, "channels": channels, "kernel": size,
                          "groups": groups, "batch": _BATCH.value, "side": _SIDE.value,
                          **{f"{impl}_{k}": round(v, 2) for impl, times in figures.items()
                             for k, v in times.items()}}), flush=True)


if __name__ == "__main__":
    app.run(main)
