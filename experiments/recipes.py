"""What each Kaggle HPA 2019 ingredient brings to the seed recipe, measured with 3 seeds.

  .venv/bin/python experiments/recipes.py --workdir=runs/recipes [--seeds=0,1,2] \
      [--recipes=seed,external,...] [--steps=400] [--model=resnet18]

Makes two synthetic HPA-like stores in ``WORKDIR/data`` (``--num_samples``
"Kaggle" images, labels drawn from the real Kaggle ``train.csv``, split
0.7/0.1/0.2; ``--external_samples`` "HPAv18" images, labels drawn from the
real HPAv18 list, whose label mix differs), then trains every recipe of
``configs/recipes.py`` with every seed at equal steps and evaluates its last
checkpoint on the Kaggle store's test part. The ``tta`` recipe is the seed
recipe's runs evaluated with 8 views. ``WORKDIR/recipes.md`` holds the table
(mean ± sd over the seeds) and ``WORKDIR/NAME/seedS/result.json`` each run's
figures; a rerun skips finished runs and resumes unfinished ones. ``--model``
runs the recipes on another model (a backbone from scratch, at its defaults).
"""

from __future__ import annotations

import json
import pathlib
import runpy
import shutil
import time

import numpy as np
from absl import app, flags

import labelled_stores  # a sibling: the script's folder is on sys.path
from hpajax import commands, config as config_lib, logs, train, xla_defaults
from hpajax.data import open_store, split
from hpajax.files import write_atomic, write_json

CONFIG = pathlib.Path(__file__).resolve().parent / "configs" / "recipes.py"
_RECIPES = runpy.run_path(str(CONFIG))

_WORKDIR = flags.DEFINE_string("workdir", "runs/recipes", "Stores and one run per recipe.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds of every recipe.")
_NAMES = flags.DEFINE_list("recipes", list(_RECIPES["RECIPES"]), "Recipes to run.")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps (default: the config's).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1500, "Synthetic Kaggle images.")
_EXTERNAL_SAMPLES = flags.DEFINE_integer("external_samples", 1500, "Synthetic HPAv18 images.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Stored image side in px.")
_MODEL = flags.DEFINE_enum("model", "seed_cnn", list(config_lib.MODELS), "The recipes' model "
                          "(config.model.name; a backbone from scratch, at its defaults).")
_NARROW = flags.DEFINE_bool("narrow_model", False, "The tiny config's narrow seed CNN (two "
                            "blocks of 8 and 16 filters): checks the runner in seconds.")

RESULT = "result.json"
TRAINED_AS = {"tta": "seed"}  # evaluation-only recipes and the runs they evaluate
COLUMNS = (("threshold_0.5", "macro_f1"), ("tuned_on_val", "macro_f1"),
           ("guarded", "macro_f1"), ("rate", "macro_f1"), ("guarded", "micro_f1"),
           ("guarded", "weighted_f1"))


def make_store(root: pathlib.Path, num_samples: int, seed: int, labels_csv: pathlib.Path,
               parts: bool) -> str:
    """A synthetic store with labels drawn from ``labels_csv``; split 0.7/0.1/0.2 if
    ``parts``. Reused when already made."""
    out = labelled_stores.make_store(root, num_samples, _IMAGE_SIZE.value, seed, labels_csv,
                                     "experiments/recipes.py")
    if parts and "default" not in open_store(out).split_names():
        split.split_store(out, fractions=(0.7, 0.1, 0.2), parts=("train", "val", "test"))
    return out


def recipe_config(name: str, seed: int, kaggle: str, external: str):
    """``configs/recipes.py:NAME`` on this run's stores and seed."""
    config = _RECIPES["get_config"](name)
    config.data.store = kaggle
    config.data.sources = tuple(s.replace(_RECIPES["KAGGLE"], kaggle)
                                .replace(_RECIPES["EXTERNAL"], external)
                                for s in config.data.sources)
    config.seed = seed
    if _STEPS.value:
        config.total_steps = _STEPS.value
    if _MODEL.value != config.model.name:
        config.model = config_lib.model_config(_MODEL.value)
    if _NARROW.value:
        config.model.update(config_lib.TINY_SEED_CNN)
    return config


def run_recipe(name: str, seed: int, workdir: pathlib.Path, kaggle: str, external: str) -> dict:
    """One recipe and seed: trained (or its trained run reused), evaluated, saved."""
    out = workdir / name / f"seed{seed}"
    if (out / RESULT).is_file():
        return json.loads((out / RESULT).read_text())
    config = recipe_config(name, seed, kaggle, external)
    start = time.monotonic()
    if name in TRAINED_AS:  # a copy of the trained run, so that its own report stays
        shutil.copytree(workdir / TRAINED_AS[name] / f"seed{seed}", out, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(RESULT))
    else:
        train.train_and_evaluate(config, str(out))
    seconds = time.monotonic() - start
    metrics = commands.evaluate_command(out, step=config.total_steps, seed_thresholds=False,
                                        draw_figures=False,
                                        tta=_RECIPES["EVALUATION_TTA"].get(name, 1))
    test = metrics[config.data.test_part]
    result = {"recipe": name, "seed": seed, "train_seconds": seconds,
              **{f"{rule}/{metric}": test[rule][metric] for rule, metric in COLUMNS},
              "no_skill_macro_f1": test["no_skill_macro_f1"]}
    write_json(out / RESULT, result)
    return result


def table(results: list[dict], steps: int) -> str:
    """The Markdown table: one row per recipe, mean ± sd over its seeds."""
    head = ["recipe", *(f"{metric.replace('_f1', '')}-F1 {rule}" for rule, metric in COLUMNS),
            "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in dict.fromkeys(r["recipe"] for r in results):
        runs = [r for r in results if r["recipe"] == name]
        cells = [_mean_sd([r[f"{rule}/{metric}"] for r in runs]) for rule, metric in COLUMNS]
        seconds = np.mean([r["train_seconds"] for r in runs])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    no_skill = results[0]["no_skill_macro_f1"]
    return "\n".join(lines) + (f"\n\nTest part, {steps} steps, {len(runs)} seeds each (mean ± "
                               f"sd); no-skill macro-F1 {no_skill:.3f}.\n")


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"


def main(argv: list[str]) -> None:
    del argv
    xla_defaults.apply_cpu_defaults()
    logs.quiet_library_logs()
    unknown = set(_NAMES.value) - set(_RECIPES["RECIPES"])
    if unknown:
        raise app.UsageError(f"--recipes: unknown {sorted(unknown)}")
    workdir = pathlib.Path(_WORKDIR.value)
    kaggle = make_store(workdir / "data" / "kaggle", _NUM_SAMPLES.value, 0,
                        labelled_stores.LABELS / "train.csv", parts=True)
    external = make_store(workdir / "data" / "external", _EXTERNAL_SAMPLES.value, 1,
                          labelled_stores.LABELS / "HPAv18RBGY_wodpl.csv", parts=False)
    results = []
    for name in _NAMES.value:
        for seed in map(int, _SEEDS.value):
            print(f"== {name}, seed {seed}", flush=True)
            results.append(run_recipe(name, seed, workdir, kaggle, external))
            print(json.dumps(results[-1]), flush=True)
    steps = recipe_config("seed", 0, kaggle, external).total_steps
    md = table(results, steps)
    write_atomic(workdir / "recipes.md", md)
    print(md)


if __name__ == "__main__":
    app.run(main)
