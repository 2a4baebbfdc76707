"""Benchmarks hpajax.evaluate's threshold search and report against a scikit-learn loop.

On 31,072 x 28 labels (the Kaggle 2019 train.csv when present, else random
multi-hot labels with its class frequencies) and random float32 probabilities
correlated with them, prints one JSON line per figure: the best-of-repeats
seconds of ``search_thresholds`` + ``classification_report``, and the seconds
of the seed paper's brute force (``sklearn.metrics.f1_score`` for every class
and every threshold 0.00..1.00), its speedup, and whether both choose the same
thresholds.

  .venv/bin/python experiments/bench_eval.py [--labels_csv=tests/data/hpa2019/train.csv] [--repeats=5]
"""

import json
import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import app, flags

from hpajax import classes, evaluate

_REPO = pathlib.Path(__file__).resolve().parents[1]
_LABELS_CSV = flags.DEFINE_string(
    "labels_csv", str(_REPO / "tests/data/hpa2019/train.csv"),
    "Kaggle train.csv (Id,Target); random labels of the same shape if it does not exist.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats of ours (the best is reported).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random labels and probabilities.")


def load_labels(path: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Multi-hot uint8 [N, 28] and where they came from."""
    if pathlib.Path(path).is_file():
        from hpajax.data.labels import read_labels_csv  # imports TensorStore via hpajax.data

        table, _ = read_labels_csv(path)
        return table.labels, pathlib.Path(path).name
    rates = np.array(classes.KAGGLE_TRAIN_COUNTS) / classes.KAGGLE_TRAIN_SIZE
    shape = (classes.KAGGLE_TRAIN_SIZE, classes.NUM_CLASSES)
    return (rng.random(shape) < rates).astype(np.uint8), "random (Kaggle class frequencies)"


def fake_probs(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 sigmoid of noisy logits that separate positives by a class-specific margin."""
    margin = rng.uniform(1.0, 4.0, labels.shape[1])
    logits = rng.normal(size=labels.shape) + margin * labels - 2.5
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


def brute_force(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """The seed paper's search: first best sklearn F1 over the grid, 1.0 without positives."""
    from sklearn import metrics  # the reference only

    best_t = []
    for c in range(y_true.shape[1]):
        best = -1
        for t in evaluate.DEFAULT_GRID:
            f = metrics.f1_score(y_true[:, c], y_prob[:, c] > t, zero_division=0)
            if f > best:
                best, bt = f, t
        best_t.append(bt if y_true[:, c].any() else evaluate.NEVER)
    return np.array(best_t)


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: Sequence[str]) -> None:
    del argv
    rng = np.random.default_rng(_SEED.value)
    y_true, source = load_labels(_LABELS_CSV.value, rng)
    y_prob = fake_probs(y_true, rng)
    n, c = y_true.shape
    ours = {}

    def search_and_report() -> None:
        ours["thresholds"] = evaluate.search_thresholds(y_true, y_prob)
        ours["report"] = evaluate.classification_report(y_true, y_prob, ours["thresholds"])

    seconds = best_seconds(search_and_report, _REPEATS.value)
    search = best_seconds(lambda: evaluate.search_thresholds(y_true, y_prob), _REPEATS.value)
    print(json.dumps({"bench": "eval", "figure": "search_and_report", "labels": source, "n": n,
                      "classes": c, "repeats": _REPEATS.value, "seconds": round(seconds, 4),
                      "search_seconds": round(search, 4),
                      "macro_f1": round(ours["report"]["macro"]["f1"], 4)}), flush=True)
    start = time.perf_counter()
    reference = brute_force(y_true, y_prob)
    brute = time.perf_counter() - start
    print(json.dumps({"bench": "eval", "figure": "brute_force_sklearn", "n": n, "classes": c,
                      "grid": len(evaluate.DEFAULT_GRID), "seconds": round(brute, 2),
                      "speedup": round(brute / seconds, 1),
                      "speedup_search_only": round(brute / search, 1),
                      "identical_thresholds": bool(np.array_equal(reference, ours["thresholds"]))}),
          flush=True)


if __name__ == "__main__":
    app.run(main)
