"""The threshold guard's rationale, measured: test F1 of val-tuned against guarded thresholds
as the validation split shrinks.

  .venv/bin/python experiments/bench_guard.py [--val_samples=120,200,500,2000] \
      [--test_samples=400] [--repeats=20] [--auc=0.87]

Labels come from the synthetic generator's label model
(``hpajax.synthetic.sample_labels``: the Kaggle 2019 class frequencies and
co-occurrences), one draw per repeat, its first rows the validation split
and the rest the test split. Probabilities come from a simulated
classifier instead of a trained model, so that many repeats and validation
sizes cost seconds: per class, a score ``x ~ N(d * y, 1)`` (``d`` gives the
ROC-AUC ``--auc``, the demo model's test macro-AUC by default) turned into
the calibrated posterior ``sigmoid(logit(prior) + d * x - d**2 / 2)``, the
prior being the class's Kaggle frequency. The thresholds and metrics are
the report's own (``report.tuned_thresholds``, ``report.metrics_table``):
0.5, tuned on val, guarded (rate-matched below ``--min_val_positives``
validation positives) and rate-matched on test. Prints one JSON line per
validation size and threshold set: the test macro- and micro-F1, mean and
sd over the repeats, the test macro-AUC measured and how many classes the
guard held back.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from hpajax import classes, report, synthetic
from hpajax.predictions import Predictions

_VAL = flags.DEFINE_list("val_samples", ["120", "200", "500", "2000"],
                         "Validation split sizes to tune on.")
_TEST = flags.DEFINE_integer("test_samples", 400, "Test split size, scored.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Label draws (seeds 0..N-1) per size.")
_AUC = flags.DEFINE_float("auc", 0.87, "Every class's ROC-AUC in the simulated classifier.")
_MIN = flags.DEFINE_integer("min_val_positives", report.MIN_VAL_POSITIVES,
                            "The guard: fewer validation positives keep the rate threshold.")

FREQUENCY = np.asarray(classes.KAGGLE_TRAIN_COUNTS) / classes.KAGGLE_TRAIN_SIZE
RULES = ("threshold_0.5", "tuned_on_val", "guarded", "rate")
METRICS = ("macro_f1", "micro_f1")


def simulated_probs(labels: np.ndarray, auc: float, rng: np.random.Generator) -> np.ndarray:
    """Calibrated float32 probabilities [N, C] of a classifier with ROC-AUC ``auc`` per class."""
    d = np.sqrt(2) * statistics.NormalDist().inv_cdf(auc)  # AUC = Phi(d / sqrt 2)
    score = rng.normal(size=labels.shape) + d * labels
    logit = np.log(FREQUENCY / (1 - FREQUENCY)) + d * score - d * d / 2
    return (1 / (1 + np.exp(-logit))).astype(np.float32)


def one_draw(val_samples: int, seed: int) -> tuple[dict, int]:
    """The report's test metrics for one draw, and the classes the guard held back."""
    labels = synthetic.sample_labels(val_samples + _TEST.value, seed)
    probs = simulated_probs(labels, _AUC.value, np.random.default_rng([seed, 1]))
    val, test = (Predictions.from_arrays(labels[part], probs[part])
                 for part in (slice(val_samples), slice(val_samples, None)))
    sets = report.tuned_thresholds(val, test, None, FREQUENCY, _MIN.value)
    table = report.metrics_table(val, test, sets, class_frequency=FREQUENCY)
    held_back = int((val.labels.sum(0) < _MIN.value).sum())
    return table["test"], held_back


def figures(val_samples: int) -> list[dict]:
    """One line per threshold set: test F1 mean and sd over the repeats."""
    draws = [one_draw(val_samples, seed) for seed in range(_REPEATS.value)]
    common = {"bench": "guard", "val_samples": val_samples, "test_samples": _TEST.value,
              "repeats": _REPEATS.value, "auc": _AUC.value,
              "test_macro_auc": round(float(np.mean([t["threshold_0.5"]["macro_auc"]
                                                     for t, _ in draws])), 4),
              "held_back_classes": round(float(np.mean([held for _, held in draws])), 2)}
    lines = []
    for rule in RULES:
        values = {m: [test[rule][m] for test, _ in draws] for m in METRICS}
        lines.append({**common, "figure": "test_f1", "thresholds": rule,
                      **{m: round(float(np.mean(v)), 4) for m, v in values.items()},
                      **{f"{m}_sd": round(float(np.std(v, ddof=1)), 4) if len(v) > 1 else 0.0
                         for m, v in values.items()}})
    return lines


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for val_samples in map(int, _VAL.value):
        for line in figures(val_samples):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    app.run(main)
