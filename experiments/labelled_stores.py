"""Synthetic stores whose label sets are drawn from a real label list, for the experiments.

Imported by ``recipes.py`` and ``bench_cv.py`` (siblings on ``sys.path``); no flags.
"""

from __future__ import annotations

import os
import pathlib

from hpajax import synthetic
from hpajax.data import convert

LABELS = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "hpa2019"


def make_store(root: pathlib.Path, num_samples: int, image_size: int, seed: int,
               labels_csv: pathlib.Path, command: str) -> str:
    """``root/store``: ``num_samples`` synthetic images at ``image_size`` px with label sets
    drawn from ``labels_csv``; reused when already made."""
    out = root / "store"
    if not (out / "metadata.json").is_file():
        synthetic.generate(root / "raw", num_samples, image_size=image_size, seed=seed,
                           workers=os.cpu_count() or 1, labels_csv=labels_csv)
        convert.convert(convert.Options(
            format="kaggle", input_dir=root / "raw" / "train", output_dir=out,
            labels_csv=root / "raw" / "train.csv", image_size=image_size,
            workers=os.cpu_count() or 1, command=command))
    return str(out)
