"""Each backbone from scratch against the seed CNN, at equal steps and at equal wall-clock.

  .venv/bin/python experiments/compare_backbones.py --workdir=runs/compare \
      [--minutes=10] [--steps=200] [--models=seed_cnn,resnet18,...] [--store=STORE]

Without ``--store``, a synthetic HPA-like set (the demo's generator,
``--num_samples`` at ``--image_size`` px) is made in ``WORKDIR/data``. Each
model trains once, with ``configs/compare.py:NAME``, as a process of its own
(``python -m hpajax.main train``) that gets SIGTERM after ``--minutes`` of
wall-clock, start-up and compilation included: the trainer saves the step it
reached and stops. A run that has not reached ``--steps`` by then resumes up
to it. Two checkpoints of that one run are evaluated on the test split with
thresholds tuned on val: step ``--steps`` (equal steps) and the step reached
in time (equal wall-clock). ``WORKDIR/comparison.md`` holds the table and
``WORKDIR/NAME/compare.json`` each model's figures: a rerun skips finished
models and starts unfinished ones over (their clock would be wrong).
"""

from __future__ import annotations

import json
import os
import pathlib
import runpy
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from hpajax import commands, config as config_lib, demo, logs, models, xla_defaults
from hpajax.files import write_atomic, write_json

_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "One run folder per model.")
_STORE = flags.DEFINE_string("store", None, "Converted store (default: a synthetic one made "
                             "in WORKDIR/data).")
_MODELS = flags.DEFINE_list("models", ["seed_cnn", *config_lib.BACKBONES], "Models to compare.")
_MINUTES = flags.DEFINE_float("minutes", 10.0, "Wall-clock budget of each run.")
_STEPS = flags.DEFINE_integer("steps", 200, "The equal-steps point; a multiple of "
                              "--checkpoint_every.")
_EVERY = flags.DEFINE_integer("checkpoint_every", 0, "Steps between evaluated checkpoints "
                              "(0: the config's, 100).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 0, "Stop a run at this step if it comes before "
                                  "the clock (0: only the clock stops it).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 2000, "Synthetic samples (without --store).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Synthetic image side in px.")
_NARROW = flags.DEFINE_bool("narrow_model", False, "The seed CNN at the tiny config's width "
                            "(two blocks of 8 and 16 filters): checks the runner in seconds.")

CONFIG = pathlib.Path(__file__).resolve().parent / "configs" / "compare.py"
RESULT = "compare.json"


def train(name: str, run: pathlib.Path, store: str, seconds: float | None,
          total_steps: int | None = None) -> int:
    """Trains ``name`` in ``run`` in a child process; SIGTERM after ``seconds``. Returns the
    last saved step."""
    command = [sys.executable, "-m", "hpajax.main", "train", f"--config={CONFIG}:{name}",
               f"--workdir={run}", f"--config.data.store={store}"]
    command += [f"--config.model.{k}={v}".replace(" ", "") for k, v in narrowed(name).items()]
    if total_steps:
        command.append(f"--config.total_steps={total_steps}")
    if _EVERY.value:
        command += [f"--config.eval_every={_EVERY.value}",
                    f"--config.checkpoint_every={_EVERY.value}"]
    with open(run / "train.log", "a") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            child.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGTERM)  # the trainer saves the step it reached
            child.wait()
    if child.returncode:
        raise RuntimeError(f"{name}: training exited with {child.returncode}; see "
                           f"{run / 'train.log'}")
    saved = [int(p.name) for p in (run / "checkpoints").glob("*") if p.name.isdigit()]
    if not saved:
        raise RuntimeError(f"{name}: no checkpoint within the time; raise --minutes")
    return max(saved)


def scores(run: pathlib.Path, step: int) -> dict:
    """Test-split figures of checkpoint ``step`` (thresholds tuned on val)."""
    test = commands.evaluate_command(run, step=step, seed_thresholds=False,
                                     draw_figures=False)["test"]
    shutil.copytree(run / "report", run / f"report_step{step}", dirs_exist_ok=True)
    return {"step": step, "macro_f1_at_0.5": test["threshold_0.5"]["macro_f1"],
            "macro_f1": test["tuned_on_val"]["macro_f1"],
            "weighted_f1": test["tuned_on_val"]["weighted_f1"],
            "no_skill_macro_f1": test["no_skill_macro_f1"]}


def narrowed(name: str) -> dict:
    """The model fields that ``--narrow_model`` overrides for ``name``."""
    return config_lib.TINY_SEED_CNN if _NARROW.value and name == "seed_cnn" else {}


def param_count(name: str) -> int:
    """The model's trainable values at 4 channels (shapes only, nothing computed)."""
    block = config_lib.model_config(name)
    block.update(narrowed(name))
    model = models.create(block)
    x = jax.ShapeDtypeStruct((1, _IMAGE_SIZE.value, _IMAGE_SIZE.value, 4), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return sum(models.param_counts(shapes["params"]).values())


def compare(name: str, workdir: pathlib.Path, store: str) -> dict:
    """One model's figures: trained, evaluated and saved, or read back if done."""
    run = workdir / name
    if (run / RESULT).is_file():
        return json.loads((run / RESULT).read_text())
    shutil.rmtree(run, ignore_errors=True)  # a partial run's clock would be wrong
    run.mkdir(parents=True)
    start = time.monotonic()
    in_time = train(name, run, store, _MINUTES.value * 60, _MAX_STEPS.value or None)
    seconds = time.monotonic() - start
    if in_time < _STEPS.value:
        train(name, run, store, None, total_steps=_STEPS.value)
    result = {"model": name, "params": param_count(name), "seconds": seconds,
              "steps_in_time": in_time,
              "equal_steps": scores(run, _STEPS.value),
              "equal_time": scores(run, in_time)}
    write_json(run / RESULT, result)
    return result


def table(results: list[dict], minutes: float, steps: int) -> str:
    """The Markdown comparison: one row per model."""
    lines = [f"| model | parameters | steps in {minutes:g} min | macro-F1 at {steps} steps "
             f"| macro-F1 at {minutes:g} min | weighted-F1 at {minutes:g} min |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['steps_in_time']} "
                     f"| {r['equal_steps']['macro_f1']:.3f} | {r['equal_time']['macro_f1']:.3f} "
                     f"| {r['equal_time']['weighted_f1']:.3f} |")
    no_skill = results[0]["equal_time"]["no_skill_macro_f1"]
    lines.append(f"\nTest split, thresholds tuned on val; no-skill macro-F1 {no_skill:.3f}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    del argv
    xla_defaults.apply_cpu_defaults()
    logs.quiet_library_logs()
    unknown = set(_MODELS.value) - {"seed_cnn", *config_lib.BACKBONES}
    if unknown:
        raise app.UsageError(f"--models: unknown {sorted(unknown)}")
    every = _EVERY.value or runpy.run_path(str(CONFIG))["get_config"]().checkpoint_every
    if _STEPS.value % every:
        raise app.UsageError(f"--steps={_STEPS.value}: not a multiple of {every}, the step "
                             f"between {CONFIG.name}'s checkpoints")
    workdir = pathlib.Path(_WORKDIR.value)
    store = _STORE.value or str(demo.prepare_store(
        workdir / "data", _NUM_SAMPLES.value, _IMAGE_SIZE.value, seed=0,
        workers=os.cpu_count() or 1))
    results = []
    for name in _MODELS.value:
        print(f"== {name}: {_MINUTES.value:g} min, then step {_STEPS.value} if not reached",
              flush=True)
        results.append(compare(name, workdir, store))
        print(json.dumps(results[-1]), flush=True)
    md = table(results, _MINUTES.value, _STEPS.value)
    write_atomic(workdir / "comparison.md", md)
    print(md)


if __name__ == "__main__":
    app.run(main)
