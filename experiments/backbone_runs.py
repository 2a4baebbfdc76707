#!/usr/bin/env python3
"""Every backbone through the trainer's commands at toy size, one JSON line per model.

  .venv/bin/python experiments/backbone_runs.py [--models=inception_v3,...] [--size=96]
      [--store=STORE] [--workdir=DIR]

For each model, ``experiments/configs/tiny.py:NAME`` (from scratch, 4 channels,
6 steps, evaluations and checkpoints at 3 and 6) on a synthetic store of
``--size`` px (64 samples with Kaggle 2019 label sets, made in ``--workdir``
unless ``--store`` is given):
once uninterrupted, once stopped after step 3 and resumed; then ``evaluate``
and ``predict`` on the finished run. The line says whether the resumed run's
checkpoints equal the uninterrupted one's (``params_sha256``), the test macro
AUC of ``evaluate``, the rows ``predict`` wrote, and the wall seconds. The
suite trains ResNet-18 and ViT-S/16 this way (tests/test_backbones.py,
test_backbone_runs.py); this script covers the rest, which take minutes to
compile on a 2-core CPU.
"""

import json
import pathlib
import runpy
import tempfile
import time

import labelled_stores  # a sibling: the script's folder is on sys.path
from absl import app, flags

from hpajax import commands, config as config_lib, train
from hpajax.data import split

REPO = pathlib.Path(__file__).resolve().parents[1]
_MODELS = flags.DEFINE_list("models", list(config_lib.BACKBONES), "Backbones to run.")
_SIZE = flags.DEFINE_integer("size", 96, "Side of the synthetic store's images, px.")
_STORE = flags.DEFINE_string("store", None, "A converted, split store (default: synthetic).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Scratch folder (default: a temporary one).")


def tiny_config(name: str, store: pathlib.Path, **overrides):
    """tiny.py:NAME on ``store``, with flattened overrides."""
    config = runpy.run_path(str(REPO / "experiments" / "configs" / "tiny.py"))["get_config"](
        name)
    config.data.store = str(store)
    config.update_from_flattened_dict(overrides)
    return config


def checkpoint_shas(workdir: pathlib.Path) -> list[str]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r["params_sha256"] for r in map(json.loads, lines) if r["split"] == "checkpoint"]


def run_model(name: str, store: pathlib.Path, root: pathlib.Path) -> dict:
    """Uninterrupted, stopped-and-resumed, evaluated and predicted: the model's line."""
    start = time.perf_counter()
    full, split = root / name / "full", root / name / "split"
    train.train_and_evaluate(tiny_config(name, store), str(full))
    train.train_and_evaluate(tiny_config(name, store, total_steps=3), str(split))
    train.train_and_evaluate(tiny_config(name, store), str(split))
    metrics = commands.evaluate_command(full, draw_figures=False)
    predicted = commands.predict_command(full, store, root / name / "predict")
    rows = len((predicted / "submission.csv").read_text().splitlines()) - 1
    return {"model": name, "resumed_exactly": checkpoint_shas(full) == checkpoint_shas(split),
            "checkpoints": len(checkpoint_shas(full)),
            "test_macro_auc": metrics["test"]["threshold_0.5"]["macro_auc"],
            "predicted_rows": rows,
            "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str]) -> None:
    del argv
    root = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="backbone_runs_"))
    store = _STORE.value
    if not store:
        store = labelled_stores.make_store(root / "data", 64, _SIZE.value, seed=0,
                                           labels_csv=labelled_stores.LABELS / "train.csv",
                                           command="experiments/backbone_runs.py")
        split.split_store(store)
    store = pathlib.Path(store)
    for name in _MODELS.value:
        print(json.dumps(run_model(name, store, root)), flush=True)


if __name__ == "__main__":
    app.run(main)
