"""Shared test helpers: repository paths and tiny Kaggle-layout data sets."""

import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PYTHON = sys.executable
CHANNELS = ("red", "green", "blue", "yellow")


def write_quads(directory: pathlib.Path, ids, size: int = 32, seed: int = 0) -> dict:
    """Writes random 8-bit PNG quads; returns {id: uint8 [size, size, 4]}."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for sample_id in ids:
        arr = rng.integers(0, 80, (size, size, 4), dtype=np.uint8)
        for c, name in enumerate(CHANNELS):
            Image.fromarray(arr[..., c]).save(directory / f"{sample_id}_{name}.png")
        arrays[sample_id] = arr
    return arrays


def write_csv(path: pathlib.Path, rows) -> pathlib.Path:
    """Writes an Id,Target file from (id, target-string) rows."""
    path.write_text("Id,Target\n" + "".join(f"{i},{t}\n" for i, t in rows))
    return path


@pytest.fixture
def kaggle_set(tmp_path):
    """24 labeled 32 px samples in the Kaggle layout."""
    ids = [f"s{i:03d}" for i in range(24)]
    arrays = write_quads(tmp_path / "train", ids)
    rows = [(i, f"{k % 28} {(k * 5) % 28}") for k, i in enumerate(ids)]
    return tmp_path / "train", write_csv(tmp_path / "train.csv", rows), arrays
