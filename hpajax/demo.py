"""The built-in default job: synthetic set -> store -> split -> train -> report.

It runs the same steps, with the same library calls, that a user runs on the
real Kaggle download (tools/make_synthetic.py stands in for the download).
Finished steps are reused: rerunning the demo on a workdir only redoes what
is missing, and training resumes from its checkpoints.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import ml_collections

from hpajax import config as config_lib
from hpajax import checkpointing, commands, report, synthetic, train
from hpajax.data import convert, open_store, split, summary
from hpajax.files import local_path


def demo_config(store: pathlib.Path, train_steps: int | None) -> ml_collections.ConfigDict:
    """``config.demo_config()`` on ``store``; ``train_steps`` (if given) replaces its 1200."""
    c = config_lib.demo_config()
    c.data.store = str(store)
    c.total_steps = train_steps or c.total_steps
    return c


def prepare_store(workdir: pathlib.Path, num_samples: int, image_size: int, seed: int,
                  workers: int) -> pathlib.Path:
    """Synthetic set -> converted store -> saved split; returns the store path."""
    raw = workdir / "raw"
    csv_path = raw / "train.csv"
    if csv_path.is_file():
        print(f"[1/5] reusing the synthetic set in {raw}")
    else:
        print(f"[1/5] generating {num_samples} synthetic samples at {image_size} px in {raw}")
        synthetic.generate(raw, num_samples, image_size=image_size, seed=seed, workers=workers)
    out = workdir / "store"
    print(f"[2/5] converting into {out}")
    convert.convert(convert.Options(
        format="kaggle", input_dir=raw / "train", output_dir=out, labels_csv=csv_path,
        image_size=image_size, workers=workers, command="python -m hpajax.main demo"))
    if "default" in open_store(out).split_names():
        print("[3/5] reusing the saved split")
    else:
        path, _ = split.split_store(out, fractions=(0.7, 0.1, 0.2),
                                   parts=("train", "val", "test"), seed=seed, name="default")
        print(f"[3/5] split train/val/test 0.7/0.1/0.2 saved to {path}")
    print(summary.describe(open_store(out)))
    return out


def report_of_best(run_dir: pathlib.Path, config: ml_collections.ConfigDict) -> dict:
    """The best checkpoint's ``report/metrics.json``: reused if that step has one, else
    evaluated (after more training, the best step may have moved)."""
    ckpt = checkpointing.Checkpointer.of_run(run_dir, config)
    try:
        step = ckpt.default_step()
    finally:
        ckpt.close()
    saved = run_dir / report.REPORT_DIR / "metrics.json"
    metrics = json.loads(saved.read_text()) if saved.is_file() else {}
    if metrics.get("step") == step:
        print(f"[5/5] reusing the report of the best checkpoint (step {step}) in "
              f"{saved.parent}")
        return metrics
    print(f"[5/5] evaluating the best checkpoint into {saved.parent}")
    return commands.evaluate_command(run_dir)


def run(workdir: str | os.PathLike, num_samples: int, image_size: int, seed: int,
        workers: int, train_steps: int | None = None) -> dict[str, float]:
    """Runs the demo in ``workdir``; returns the best checkpoint's report metrics."""
    start = time.monotonic()
    workdir = local_path(workdir, "--workdir")  # the demo converts raw files: local only
    store = prepare_store(workdir, num_samples, image_size, seed, workers)
    config = demo_config(store, train_steps)
    run_dir = workdir / "run"
    print(f"[4/5] training {config.total_steps} steps in {run_dir}")
    train.train_and_evaluate(config, str(run_dir))
    metrics = report_of_best(run_dir, config)
    test = metrics[config.data.test_part]
    print(f"test split, best checkpoint (step {metrics['step']}): macro-F1 "
          f"{test['threshold_0.5']['macro_f1']:.3f} at threshold 0.5, "
          f"{test['tuned_on_val']['macro_f1']:.3f} at thresholds tuned on val, "
          f"{test['guarded']['macro_f1']:.3f} guarded (what predict uses; micro-F1 "
          f"{test['guarded']['micro_f1']:.3f}) (no-skill {test['no_skill_macro_f1']:.3f}); "
          f"weighted-F1 {test['guarded']['weighted_f1']:.3f}")
    seconds = int(time.monotonic() - start)
    print(f"demo done in {seconds // 60}m{seconds % 60:02d}s; everything is in {workdir}")
    return metrics
