#!/usr/bin/env python3
"""One run against a K-fold cross-validation's mean, and thresholds tuned out of fold
against thresholds tuned on one validation part; then two models' ensemble.

  .venv/bin/python experiments/bench_cv.py --workdir=runs/bench_cv [--seeds=0,1,2] \
      [--folds=5] [--steps=300] [--second_model=resnet18 --second_seeds=0]

Makes the recipes' synthetic "Kaggle" store (``--num_samples`` images at 128 px,
label sets drawn from the real ``train.csv``) with split ``kfoldK`` and a
stratified test part, and runs ``cv`` with the seed recipe's config
(``configs/recipes.py:seed``: the seed CNN at 96 px, batch 16) for every seed,
each fold at ``--steps``. A fold's run is exactly one ordinary run (train on
the other folds, validate on its own), so the saved predictions give, on the
same test part and with no more training:

- ``fold, own val``: each fold's model alone, thresholds tuned (guarded) on
  its own validation fold; averaged over the folds: one run;
- ``fold, oof``: the same models with the out-of-fold thresholds;
- ``mean, own val``: the folds' mean probabilities with fold 0's thresholds;
- ``mean, oof``: the folds' mean with the out-of-fold thresholds, what ``cv``
  reports.

With ``--second_model`` it cross-validates that model too (``--second_seeds``)
and ensembles the two (``ensemble``, equal weights, out-of-fold thresholds).
Prints one JSON line per figure and writes ``WORKDIR/bench_cv.md``; finished
folds and CVs are reused.
"""

from __future__ import annotations

import json
import pathlib
import runpy
import time

import numpy as np
from absl import app, flags

import labelled_stores  # a sibling: the script's folder is on sys.path
from hpajax import config as config_lib
from hpajax import cv, ensemble, evaluate, logs, predictions, report, xla_defaults
from hpajax.data import open_store, split
from hpajax.files import write_atomic

RECIPES = runpy.run_path(str(pathlib.Path(__file__).resolve().parent / "configs" / "recipes.py"))

_WORKDIR = flags.DEFINE_string("workdir", "runs/bench_cv", "The store and every run.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds of the seed CNN's CVs.")
_FOLDS = flags.DEFINE_integer("folds", 5, "K.")
_TEST_FRACTION = flags.DEFINE_float("test_fraction", 0.2, "Share of the held-out test part.")
_STEPS = flags.DEFINE_integer("steps", None, "Steps per fold (default: the recipe's).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1500, "Synthetic Kaggle images.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Stored image side in px.")
_SECOND = flags.DEFINE_enum("second_model", None, list(config_lib.MODELS), "A second model "
                            "to cross-validate and ensemble with the seed CNN (none: skip; "
                            "seed_cnn: a second seed CNN, e.g. of other seeds).")
_SECOND_SEEDS = flags.DEFINE_list("second_seeds", ["0"], "Seeds of the second model's CVs "
                                  "and of the ensembles, each one of --seeds.")
_NARROW = flags.DEFINE_bool("narrow_model", False, "The tiny config's narrow seed CNN: checks "
                            "the runner in seconds.")

FIRST = "seed_cnn"
RULES = {"own val": "thresholds tuned on the fold's own validation part",
         "oof": "thresholds tuned on the out-of-fold predictions"}


def fold_config(model: str, seed: int, store: str):
    """The seed recipe's config (or ``model`` in its place) on the benchmark's folds."""
    config = RECIPES["get_config"]("seed")
    if model != FIRST:
        config.model = config_lib.model_block_for(config.model, model)
    config.data.store, config.data.split = store, f"kfold{_FOLDS.value}"
    config.seed = seed
    if _STEPS.value:
        config.total_steps = _STEPS.value
    if _NARROW.value and model == FIRST:
        config.model.update(config_lib.TINY_SEED_CNN)
    return config


def run_cv(model: str, seed: int, folder: pathlib.Path, store: str) -> pathlib.Path:
    """One CV of ``model`` with ``seed`` in ``folder/seed{seed}`` (reused when done);
    prints its time."""
    out = folder / f"seed{seed}"
    start = time.monotonic()
    cv.cv_command(fold_config(model, seed, store), out, draw_figures=False)
    print(json.dumps({"bench": "cv", "figure": "cv_seconds", "model": model, "seed": seed,
                      "seconds": round(time.monotonic() - start, 1)}), flush=True)
    return out


def scores(workdir: pathlib.Path) -> dict[tuple[str, str], dict[str, float]]:
    """Test macro/micro-F1 of a CV's folds and mean under each threshold rule."""
    oof, info = predictions.load(workdir / report.OOF_FILE)
    fold_of = predictions.extra_arrays(workdir / report.OOF_FILE, ("fold",))["fold"]
    test, _ = predictions.load(workdir / report.CV_TEST_FILE)
    each = predictions.extra_arrays(workdir / report.CV_TEST_FILE, ("fold_probs",))["fold_probs"]
    oof_thresholds = report.load_thresholds(workdir / report.REPORT_DIR, report.USE)
    own = [_own_thresholds(oof, fold_of, k) for k in range(len(each))]
    found = {("fold", "own val"): [_f1(test.labels, p, t) for p, t in zip(each, own)],
             ("fold", "oof"): [_f1(test.labels, p, oof_thresholds) for p in each],
             ("mean", "own val"): [_f1(test.labels, test.probs, own[0])],
             ("mean", "oof"): [_f1(test.labels, test.probs, oof_thresholds)]}
    return {key: {m: float(np.mean([v[m] for v in values])) for m in values[0]}
            for key, values in found.items()}


def _own_thresholds(oof: predictions.Predictions, fold_of: np.ndarray, k: int) -> np.ndarray:
    """Fold k's guarded thresholds on its own validation fold, as its own run tunes them."""
    mine = fold_of == k
    val = predictions.Predictions(tuple(np.asarray(oof.ids)[mine]), oof.rows[mine],
                                  oof.labels[mine], oof.probs[mine], float("nan"))
    frequency = oof.labels[~mine].mean(0)  # the fold run's training part
    return report.tuned_thresholds(val, None, None, frequency)[report.USE]


def _f1(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    summary = report.summary(evaluate.classification_report(labels, probs, thresholds))
    return {"macro_f1": summary["macro_f1"], "micro_f1": summary["micro_f1"]}


def table(rows: list[dict]) -> str:
    """Markdown: one row per (model, probabilities, thresholds), mean ± sd over seeds."""
    lines = ["| model | probabilities | thresholds | seeds | test macro-F1 | test micro-F1 |",
             "|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["model"], r["probs"], r["thresholds"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["probs"], r["thresholds"]) == key]
        cells = [_mean_sd([r[m] for r in mine]) for m in ("macro_f1", "micro_f1")]
        lines.append(f"| {' | '.join(key)} | {len(mine)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"


def _emit(rows: list[dict], row: dict) -> None:
    rows.append(row)
    print(json.dumps({"bench": "cv", "figure": "test", **row}), flush=True)


def main(argv: list[str]) -> None:
    del argv
    xla_defaults.apply_cpu_defaults()
    logs.quiet_library_logs()
    workdir = pathlib.Path(_WORKDIR.value)
    store = labelled_stores.make_store(workdir / "data", _NUM_SAMPLES.value, _IMAGE_SIZE.value,
                                       0, labelled_stores.LABELS / "train.csv",
                                       "experiments/bench_cv.py")
    if f"kfold{_FOLDS.value}" not in open_store(store).split_names():
        split.split_store(store, folds=_FOLDS.value, test_fraction=_TEST_FRACTION.value)
    rows = []
    folders = {"first": workdir / FIRST, "second": workdir / f"second_{_SECOND.value}"}
    models = [("first", FIRST, _SEEDS.value)] + ([("second", _SECOND.value, _SECOND_SEEDS.value)]
                                                 if _SECOND.value else [])
    for role, model, seeds in models:
        for seed in map(int, seeds):
            done = run_cv(model, seed, folders[role], store)
            for (probs, rule), f1 in scores(done).items():
                _emit(rows, {"model": model, "seed": seed, "probs": probs, "thresholds": rule,
                             **f1})
    for seed in map(int, _SECOND_SEEDS.value if _SECOND.value else []):
        members = ",".join(str(folder / f"seed{seed}") for folder in folders.values())
        metrics = ensemble.ensemble_command(members, workdir / "ensemble" / f"seed{seed}",
                                            draw_figures=False)
        guarded = metrics["test"][report.USE]
        _emit(rows, {"model": f"{FIRST} + {_SECOND.value}", "seed": seed, "probs": "mean",
                     "thresholds": "oof", "macro_f1": guarded["macro_f1"],
                     "micro_f1": guarded["micro_f1"]})
    md = table(rows)
    write_atomic(workdir / "bench_cv.md", md)
    print(md)


if __name__ == "__main__":
    app.run(main)
