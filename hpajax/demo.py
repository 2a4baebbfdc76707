"""The built-in default job: synthetic HPA-like set -> store -> split -> summary.

It runs the same steps, with the same library calls, that a user runs on the
real Kaggle download (tools/make_synthetic.py stands in for the download).
Every step is skipped when its output is already complete, so rerunning the
demo on a workdir only redoes what is missing.
"""

from __future__ import annotations

import os
import pathlib

from hpajax import synthetic
from hpajax.data import convert, open_store, split, store, summary


def run(workdir: str | os.PathLike, num_samples: int, image_size: int, seed: int,
        workers: int) -> str:
    """Runs the demo in ``workdir`` and returns the store summary."""
    workdir = pathlib.Path(workdir)
    raw = workdir / "raw"
    csv_path = raw / "train.csv"
    if csv_path.is_file():
        print(f"[1/3] reusing the synthetic set in {raw}")
    else:
        print(f"[1/3] generating {num_samples} synthetic samples at {image_size} px in {raw}")
        synthetic.generate(raw, num_samples, image_size=image_size, seed=seed, workers=workers)
    out = workdir / "store"
    print(f"[2/3] converting into {out}")
    convert.convert(convert.Options(
        format="kaggle", input_dir=raw / "train", output_dir=out, labels_csv=csv_path,
        image_size=image_size, workers=workers, command="python -m hpajax.main demo"))
    if "default" in open_store(out).split_names():
        print("[3/3] reusing the saved split")
    else:
        path, _ = split.split_store(out, fractions=(0.7, 0.1, 0.2),
                                   parts=("train", "val", "test"), seed=seed, name="default")
        print(f"[3/3] split train/val/test 0.7/0.1/0.2 saved to {path}")
    return summary.describe(open_store(out))
