"""The demo's training step against the models it could train, side by side in one process.

  .venv/bin/python experiments/bench_demo.py [--steps=10]

Times the jitted training step (augmentation on, batch 16, random uint8
images, as the demo feeds it) of the demo's model, the seed CNN at half
width on 96 px, against the full-width seed CNN at 128 px (the demo before
issue 21) and the half-width one at 128 px. One JSON line per model, with
its seconds per step and its ratio to the demo's; the learning side of the
choice (test macro-F1 of each run) is in BENCHMARKS.md, "The demo".
"""

import json
import time

import jax
import numpy as np
from absl import app, flags

from hpajax import classes, xla_defaults
from hpajax import steps as steps_lib
from hpajax.config import demo_config

_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per model, after a warm-up step.")

# name: (filters, head, image side)
VARIANTS = {"demo": ((16, 32, 64, 128), (256, 128), 96),
            "half_width_128px": ((16, 32, 64, 128), (256, 128), 128),
            "full_width_128px": ((32, 64, 128, 256), (512, 256), 128)}


def step_seconds(filters: tuple, head: tuple, size: int, steps: int) -> float:
    """Mean seconds of one training step of the demo's config with this model and side."""
    config = demo_config()
    config.model.filters, config.model.head = filters, head
    config.data.input_size = config.data.image_size = size
    built = steps_lib.build(config, steps_lib.make_mesh(config.batch_size), (size, size, 4))
    state, sums = steps_lib.init_state(built), steps_lib.zero_sums(built)
    rng = np.random.default_rng(0)
    batch = steps_lib.to_device(built, {
        "image": rng.integers(0, 256, (config.batch_size, size, size, 4), np.uint8),
        "label": (rng.random((config.batch_size, classes.NUM_CLASSES)) < 0.05).astype(np.uint8)})
    state, sums = built.train(state, batch, sums)  # compiles
    jax.block_until_ready(sums)
    start = time.perf_counter()
    for _ in range(steps):
        state, sums = built.train(state, batch, sums)
    jax.block_until_ready(sums)
    return (time.perf_counter() - start) / steps


def main(argv: list[str]) -> None:
    del argv
    xla_defaults.apply_cpu_defaults()
    seconds = {name: step_seconds(*variant, _STEPS.value) for name, variant in VARIANTS.items()}
    for name, (filters, head, size) in VARIANTS.items():
        print(json.dumps({"bench": "demo", "figure": "train_step", "model": name,
                          "filters": filters, "size": size, "batch": 16,
                          "step_s": round(seconds[name], 4),
                          "vs_demo": round(seconds[name] / seconds["demo"], 2)}), flush=True)


if __name__ == "__main__":
    app.run(main)
