"""Saved predictions (hpajax.predictions) and the report rebuilt from them without JAX."""

import json
import subprocess

import numpy as np
import pytest
from sklearn.metrics import f1_score

from conftest import PYTHON, REPO
from hpajax import classes, evaluate, figures, predictions, report
from hpajax.data.store import write_store

C = classes.NUM_CLASSES
FREQUENCY = np.linspace(0.05, 0.6, C)  # each class's positive rate in training
NUMBERS = ("metrics.json", "thresholds.json", "per_class.csv", "per_class.md")
FINGERPRINT = {"store": "/data/store", "samples": 12, "ids_sha256": "ab",
               "train_split_sha256": "cd"}
# The store rows of each split; test's are out of order, as a subset of a store can be.
ROWS = {"train": [0, 1, 2, 3, 4, 5], "val": [6, 7, 8], "test": [11, 9, 10]}
STORE_IDS = [f"s{i:02d}" for i in range(12)]
# Runs `python -m hpajax.report ARGS` with JAX and its libraries unimportable, then
# prints which of them anything tried to import.
NO_JAX = """
import importlib.abc, runpy, sys
BLOCKED = ("jax", "jaxlib", "flax", "optax", "orbax")
tried = []
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            tried.append(name)
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Refuse())
sys.argv = ["hpajax.report", *sys.argv[1:]]
try:
    runpy.run_module("hpajax.report", run_name="__main__", alter_sys=True)
finally:
    print("tried to import:", sorted(set(tried)), [m for m in sys.modules if m in BLOCKED])
"""

needs_matplotlib = pytest.mark.skipif(not figures.plotting_available(),
                                      reason="matplotlib is not installed")


def _predictions(split: str, seed: int = 0) -> predictions.Predictions:
    rows = np.array(ROWS[split], np.int64)
    rng = np.random.default_rng(seed)
    labels = (rng.random((len(rows), C)) < 0.3).astype(np.uint8)
    return predictions.Predictions(ids=tuple(STORE_IDS[r] for r in rows), rows=rows,
                                   labels=labels,
                                   probs=rng.random((len(rows), C)).astype(np.float32),
                                   loss=float(seed) + 0.25)


def _assert_same(a: predictions.Predictions, b: predictions.Predictions) -> None:
    assert tuple(a.ids) == tuple(b.ids) and a.loss == b.loss
    for field in ("rows", "labels", "probs"):
        got, want = getattr(a, field), getattr(b, field)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def _save_all(workdir, step: int = 7, class_frequency: np.ndarray | None = FREQUENCY
              ) -> dict[str, predictions.Predictions]:
    """Saves predictions of train, val and test as ``evaluate`` does (with the class
    frequency unless None: as saved before there was one); returns them."""
    saved = {}
    for seed, split in enumerate(("train", "val", "test")):
        saved[split] = _predictions(split, seed)
        predictions.save(workdir / "report" / predictions.file_name(split), saved[split],
                         split=split, step=step, data_fingerprint=FINGERPRINT,
                         class_frequency=class_frequency)
    return saved


def _workdir(tmp_path, store_location: str):
    """A workdir as ``evaluate`` leaves it: config.json, metrics.jsonl, saved predictions."""
    workdir = tmp_path / "work"
    (workdir / "report").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"data": {"store": store_location}}))
    records = [{"step": s, "split": "train", "loss": 1 / s} for s in range(1, 8)]
    records.append({"step": 7, "split": "val", "loss": 0.5, "macro_f1": 0.2,
                    "weighted_f1": 0.3})
    (workdir / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records) + '{"step": 8, "spl')  # torn by a kill
    _save_all(workdir)
    return workdir


def _store(tmp_path):
    images = np.random.default_rng(5).integers(0, 255, (12, 16, 16, 4), dtype=np.uint8)
    write_store(tmp_path / "store", images, STORE_IDS, None)
    return tmp_path / "store"


def _run_without_jax(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-c", NO_JAX, *args], capture_output=True, text=True,
                          cwd=REPO)


# --- the predictions file ----------------------------------------------------------------

def test_save_and_load_give_back_the_predictions_and_their_origin(tmp_path):
    test = _predictions("test", seed=3)
    path = predictions.save(tmp_path / "report" / predictions.file_name("test"), test,
                            split="test", step=12, data_fingerprint=FINGERPRINT)
    assert path == tmp_path / "report" / "predictions_test.npz"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    got, info = predictions.load(path)
    _assert_same(got, test)
    assert info == predictions.Info(split="test", step=12, data_fingerprint=FINGERPRINT,
                                    class_names=classes.CLASS_NAMES, format_version=1)
    with np.load(path, allow_pickle=False) as npz:  # plain arrays, no pickled objects
        assert npz["ids"].dtype.kind == "U" and json.loads(str(npz["data_fingerprint"])) == \
            FINGERPRINT
    nan_loss = predictions.Predictions(test.ids, test.rows, test.labels, test.probs, float("nan"))
    predictions.save(path, nan_loss, split="test", step=12, data_fingerprint={})
    assert np.isnan(predictions.load(path)[0].loss)


def _tampered(tmp_path, **changes) -> str:
    """A saved file with some arrays replaced (None: removed)."""
    path = predictions.save(tmp_path / "p.npz", _predictions("val"), split="val", step=1,
                            data_fingerprint=FINGERPRINT)
    with np.load(path) as npz:
        arrays = {**dict(npz), **changes}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize("changes, why", [
    ({"format_version": np.int64(2)}, "format_version 2; this hpajax reads version 1"),
    ({"class_names": np.array(classes.CLASS_NAMES[:27])}, "27 class names differ"),
    ({"class_names": np.array(("Nucleus",) + classes.CLASS_NAMES[1:])}, "class names differ"),
    ({"probs": np.full((2, C), 0.5, np.float32)}, "inconsistent shapes: 3 ids, rows [3], "
                                                  "labels [3, 28], probs [2, 28]"),
    ({"ids": np.array(["a", "b"])}, "inconsistent shapes: 2 ids"),
    ({"labels": np.zeros((3, 27), np.uint8)}, "inconsistent shapes"),
    ({"probs": np.full((3, C), 1.5, np.float32)}, "in [0, 1]: 1.5 at row 0, class 0 (84 such"),
    ({"probs": np.where(np.eye(3, C) > 0, np.nan, 0.5).astype(np.float32)},
     "in [0, 1]: nan at row 0, class 0 (3 such values)"),
    ({"labels": np.full((3, C), 2, np.uint8)}, "labels other than 0/1"),
    ({"step": None, "split": None}, "missing split, step"),
    ({"class_frequency": np.full(C, 1.5)}, "frequency must be in [0, 1]: 1.5 for class 0"),
    ({"class_frequency": np.zeros(3)}, "frequency must have shape (28,), got (3,)"),
])
def test_load_refuses_a_file_it_cannot_trust(tmp_path, changes, why):
    path = _tampered(tmp_path, **changes)
    with pytest.raises(ValueError) as error:
        predictions.load(path)
    assert f"{path}: not a usable predictions file: " in str(error.value)
    assert why in str(error.value)


def test_load_refuses_what_is_not_an_npz_archive(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "text.npz").write_text("Id,Predicted\n")
    for name in ("one.npy", "text.npz"):
        with pytest.raises(ValueError, match=f"{tmp_path / name}: not a usable predictions"):
            predictions.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        predictions.load(tmp_path / "absent.npz")


def test_save_refuses_predictions_that_load_would_refuse(tmp_path):
    val = _predictions("val")
    bad = predictions.Predictions(val.ids, val.rows, val.labels, val.probs * np.nan, 0.0)
    with pytest.raises(ValueError, match="probabilities must be in"):
        predictions.save(tmp_path / "p.npz", bad, split="val", step=1, data_fingerprint={})
    with pytest.raises(ValueError, match=r"frequency must have shape \(28,\), got \(27,\)"):
        predictions.save(tmp_path / "p.npz", val, split="val", step=1, data_fingerprint={},
                         class_frequency=FREQUENCY[:27])
    assert not list(tmp_path.iterdir())


def test_the_class_frequency_round_trips_and_older_files_load_without_it(tmp_path):
    val = _predictions("val")
    path = predictions.save(tmp_path / "new.npz", val, split="val", step=1,
                            data_fingerprint=FINGERPRINT, class_frequency=FREQUENCY)
    assert predictions.load(path)[1].class_frequency == tuple(FREQUENCY.tolist())  # exactly
    old = predictions.save(tmp_path / "old.npz", val, split="val", step=1,
                           data_fingerprint=FINGERPRINT)  # as evaluate saved them before
    with np.load(old) as npz:
        assert "class_frequency" not in npz.files
    got, info = predictions.load(old)
    _assert_same(got, val)
    assert info.class_frequency is None


# --- write_report and rebuild ------------------------------------------------------------

def test_rebuild_writes_what_write_report_writes_for_the_same_predictions(tmp_path, capsys):
    workdir = tmp_path / "work"
    saved = _save_all(workdir, step=7)
    metrics = report.rebuild(workdir, draw_figures=False)
    direct = report.write_report(tmp_path / "direct", saved["val"], saved["test"],
                                 train=saved["train"], step=7, draw_figures=False,
                                 class_frequency=FREQUENCY)
    assert metrics == direct and metrics["step"] == 7
    assert {"tuned_on_val", "guarded", "rate", "tuned_on_train", "tuned_on_test"} <= set(
        metrics["test"])
    for name in NUMBERS:
        assert (workdir / "report" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()
    assert "rebuilding" in capsys.readouterr().out

    (workdir / "report" / predictions.file_name("train")).unlink()  # --noseed_thresholds
    assert "tuned_on_train" not in report.rebuild(workdir, draw_figures=False)["test"]


def test_rebuild_refuses_predictions_of_different_checkpoints(tmp_path):
    workdir = tmp_path / "work"
    _save_all(workdir, step=7)
    predictions.save(workdir / "report" / "predictions_train.npz", _predictions("train"),
                     split="train", step=3, data_fingerprint=FINGERPRINT)
    with pytest.raises(ValueError, match=r"predictions_train.npz \(step 3\) and .*"
                                         r"predictions_val.npz \(step 7\) come from different"):
        report.rebuild(workdir, draw_figures=False)


@needs_matplotlib
def test_the_command_rebuilds_the_report_and_montages_without_jax(tmp_path):
    workdir = _workdir(tmp_path, str(_store(tmp_path)))
    r = _run_without_jax(str(workdir))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tried to import: [] []" in r.stdout  # JAX and its libraries: not even tried
    assert "metrics.jsonl:9: incomplete last line dropped" in r.stdout
    names = {p.name for p in (workdir / "report").iterdir()}
    assert set(NUMBERS) | {"roc.png", "f1_per_class.png", "training_curves.png",
                           "best.png", "worst.png"} <= names
    assert f"report: {workdir / 'report'}/" in r.stdout
    assert json.loads((workdir / "report" / "metrics.json").read_text())["step"] == 7

    r = _run_without_jax(str(workdir), "--nofigures")
    assert r.returncode == 0 and "report: figures" not in r.stdout
    # No figure of the earlier report is left to pass for this one's.
    assert not {p.name for p in (workdir / "report").iterdir()} & set(report.FIGURES)


@needs_matplotlib
def test_without_the_store_the_numbers_are_written_and_the_montages_skipped(tmp_path, capsys):
    workdir = _workdir(tmp_path, str(tmp_path / "gone"))
    report.rebuild(workdir)
    out = capsys.readouterr().out
    assert "report: no montages: cannot open the run's store (StoreError: " in out
    names = {p.name for p in (workdir / "report").iterdir()}
    assert set(NUMBERS) | {"roc.png", "training_curves.png"} <= names
    assert not names & {"best.png", "worst.png"}


@needs_matplotlib
def test_a_changed_store_skips_the_montages(tmp_path, capsys):
    store = _store(tmp_path)
    workdir = _workdir(tmp_path, str(store))
    (store / "ids.txt").write_text("".join(f"{i}\n" for i in reversed(STORE_IDS)))
    report.rebuild(workdir)
    assert f"report: no montages: the store {store} changed" in capsys.readouterr().out
    assert not {p.name for p in (workdir / "report").iterdir()} & {"best.png", "worst.png"}


@needs_matplotlib
def test_without_tensorstore_the_montages_are_skipped(tmp_path):
    workdir = _workdir(tmp_path, str(_store(tmp_path)))
    code = ("import runpy, sys; sys.modules['tensorstore'] = None\n"
            f"sys.argv = ['hpajax.report', {str(workdir)!r}]\n"
            "runpy.run_module('hpajax.report', run_name='__main__', alter_sys=True)\n")
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "report: no montages: cannot open the run's store (ModuleNotFoundError: " in r.stdout
    assert "tensorstore" in r.stdout
    names = {p.name for p in (workdir / "report").iterdir()}
    assert set(NUMBERS) | {"roc.png"} <= names and not names & {"best.png", "worst.png"}


def test_the_command_without_saved_predictions_says_to_evaluate_first(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    r = subprocess.run([PYTHON, "-m", "hpajax.report", str(workdir)], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 1
    assert (f"report: error: no predictions_val.npz in "
            f"{workdir / 'report'}: run `python -m hpajax.main evaluate --workdir={workdir}` "
            "first") in r.stderr
    assert not list(workdir.iterdir())  # nothing written


def test_without_a_test_split_the_tables_show_the_validation_split(tmp_path):
    """A fold run on folds with no test part: thresholds and tables from val alone."""
    val = _predictions("val")
    metrics = report.write_report(tmp_path, val, None, draw_figures=False)
    assert set(metrics) == {"step", "decision_rule", "val"}
    saved = json.loads((tmp_path / "thresholds.json").read_text())
    assert "tuned_on_test" not in saved
    guarded = np.array(saved["guarded"])
    assert (tmp_path / "per_class.csv").read_text() == evaluate.to_csv(
        evaluate.classification_report(val.labels, val.probs, guarded))


# --- from tests/test_predict.py: report tests that need no model -------------------------

def test_report_without_matplotlib_writes_the_numbers_and_says_how(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import numpy as np\n"
            "from hpajax import predictions, report\n"
            "rng = np.random.default_rng(0)\n"
            "y = (rng.random((50, 28)) < 0.3).astype(np.uint8)\n"
            "p = lambda: predictions.Predictions.from_arrays(y, rng.random((50, 28)))\n"
            f"report.write_report({str(tmp_path)!r}, p(), p())\n")
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "hpajax[plots]" in r.stdout
    assert {p.name for p in tmp_path.iterdir()} == set(NUMBERS)


def test_montage_rows_rank_samples_by_their_f1():
    y_true = np.zeros((5, C), np.uint8)
    y_true[:, 0] = 1
    y_prob = np.full((5, C), 0.1)
    y_prob[:, 0] = [0.9, 0.6, 0.2, 0.8, 0.7]
    y_prob[3, 1:4] = 0.9  # three false positives: F1 0.5
    y_prob[4, 1] = 0.9  # one false positive: F1 2/3
    best, worst = report.montage_rows(y_true, y_prob, np.full(C, 0.5), 6)
    assert best.tolist() == [0, 1, 4, 3]  # exact (confident first), then by F1; not #2 (F1 0)
    assert worst.tolist() == [2, 3, 4]  # F1 0, 0.5, 2/3; exact matches are not shown


# --- threshold sets: tuned, guarded, rate-matched; what predict applies ---------------------

RARE = 27  # the rare class of the small validation split
SETS = ["threshold_0.5", "tuned_on_val", "guarded", "rate"]


def _small_validation() -> tuple[predictions.Predictions, predictions.Predictions, np.ndarray]:
    """Val (120 samples) and test (400) of one distribution, and the training class
    frequency: RARE (rate 0.01) has one validation positive, at probability 0.06 (an F1
    search fits it with a near-zero threshold), and four test positives at 0.9; its
    negatives' probabilities spread over [0, 0.4]. Every other class: rate 0.3."""
    rng = np.random.default_rng(0)
    frequency = np.full(C, 0.3)
    frequency[RARE] = 0.01

    def split(n: int, positives: int, positive_prob: float) -> predictions.Predictions:
        labels = (rng.random((n, C)) < frequency).astype(np.uint8)
        probs = 0.45 * labels + 0.55 * rng.random((n, C))
        labels[:, RARE] = np.arange(n) < positives
        probs[:, RARE] = np.where(labels[:, RARE], positive_prob, rng.uniform(0, 0.4, n))
        return predictions.Predictions.from_arrays(labels, probs)

    return split(120, 1, 0.06), split(400, 4, 0.9), frequency


def _micro_f1(split: predictions.Predictions, thresholds: np.ndarray) -> float:
    return f1_score(split.labels, split.probs > thresholds, average="micro", zero_division=0)


def test_the_guard_keeps_a_rare_class_from_overfitting_a_small_validation_split(tmp_path):
    val, test, frequency = _small_validation()
    metrics = report.write_report(tmp_path, val, test, class_frequency=frequency,
                                  draw_figures=False)
    saved = json.loads((tmp_path / "thresholds.json").read_text())
    tuned, guarded = np.array(saved["tuned_on_val"]), np.array(saved["guarded"])
    assert tuned[RARE] < 0.06  # fits its one validation positive
    # Guarded: the rare class keeps the threshold matching its training rate on val
    # (round(0.01 * 120) = 1 positive); the others have >= 5 positives and keep the search's.
    assert (val.probs[:, RARE] > guarded[RARE]).sum() == 1
    others = np.arange(C) != RARE
    assert (val.labels[:, others].sum(axis=0) >= report.MIN_VAL_POSITIVES).all()
    np.testing.assert_array_equal(guarded[others], tuned[others])
    assert metrics["test"]["tuned_on_val"]["micro_f1"] == pytest.approx(
        _micro_f1(test, tuned), abs=1e-12)
    assert metrics["test"]["guarded"]["micro_f1"] == pytest.approx(
        _micro_f1(test, guarded), abs=1e-12)
    assert _micro_f1(test, guarded) > _micro_f1(test, tuned) + 0.02
    assert (saved["use"], saved["min_val_positives"], saved["guarded_fallback"]) == (
        "guarded", 5, "rate")
    assert saved["class_frequency"] == frequency.tolist()
    per_class = (tmp_path / "per_class.csv").read_text().splitlines()[1:C + 1]
    assert [float(row.split(",")[-1]) for row in per_class] == guarded.tolist()  # "use"


def test_metrics_json_scores_each_set_on_val_and_test_with_rate_matched_on_each(tmp_path):
    val, test, frequency = _small_validation()
    metrics = report.write_report(tmp_path, val, test, class_frequency=frequency,
                                  draw_figures=False)
    assert list(metrics["val"])[2:] == SETS
    assert list(metrics["test"])[2:] == SETS + ["tuned_on_test"]
    assert {"micro_f1", "macro_f1", "weighted_f1"} <= set(metrics["test"]["tuned_on_test"])
    for name, split in (("val", val), ("test", test)):
        rate = evaluate.rate_thresholds(split.probs, frequency)
        n = len(split.labels)  # no ties: each class gets exactly round(f * n) positives
        assert (split.probs > rate).sum(axis=0).tolist() == [round(f * n) for f in frequency]
        for avg in ("micro", "macro", "weighted"):
            assert metrics[name]["rate"][f"{avg}_f1"] == pytest.approx(f1_score(
                split.labels, split.probs > rate, average=avg, zero_division=0), abs=1e-12)
            assert all(isinstance(metrics[name][s][f"{avg}_f1"], float) for s in SETS)


def test_prediction_thresholds_for_each_choice(tmp_path):
    val, test, frequency = _small_validation()
    report.write_report(tmp_path, val, test, class_frequency=frequency, draw_figures=False)
    new = np.random.default_rng(9).random((50, C))  # the probabilities predict thresholds
    guarded = evaluate.guarded_thresholds(val.labels, val.probs,
                                          evaluate.rate_thresholds(val.probs, frequency), 5)
    np.testing.assert_array_equal(report.prediction_thresholds(tmp_path, new), guarded)
    np.testing.assert_array_equal(report.load_thresholds(tmp_path), guarded)  # the "use" set
    np.testing.assert_array_equal(report.prediction_thresholds(tmp_path, new, "tuned_on_val"),
                                  evaluate.search_thresholds(val.labels, val.probs))
    rate = report.prediction_thresholds(tmp_path, new, "rate")  # matched on `new` itself
    assert (new > rate).sum(axis=0).tolist() == [round(f * 50) for f in frequency]
    assert report.prediction_thresholds(tmp_path, new, "0.5").tolist() == [0.5] * C
    with pytest.raises(ValueError, match="unknown thresholds 'tuned_on_test': choose one of "
                                         "'guarded', 'tuned_on_val', 'rate', '0.5'"):
        report.prediction_thresholds(tmp_path, new, "tuned_on_test")


def test_thresholds_json_of_an_earlier_version_still_gives_tuned_on_val(tmp_path):
    tuned = np.linspace(0.1, 0.9, C)
    (tmp_path / "thresholds.json").write_text(json.dumps({  # as written before the guard
        "decision_rule": report.DECISION_RULE, "grid": "0.00 to 1.00, step 0.01",
        "use": "tuned_on_val", "class_names": list(classes.CLASS_NAMES),
        "tuned_on_val": tuned.tolist(), "tuned_on_test": [0.5] * C}))
    new = np.random.default_rng(9).random((50, C))
    np.testing.assert_array_equal(report.prediction_thresholds(tmp_path, new, "tuned_on_val"),
                                  tuned)
    np.testing.assert_array_equal(report.load_thresholds(tmp_path), tuned)
    with pytest.raises(ValueError, match=r"thresholds.json has no 'guarded' thresholds \("
                                         r"written by an earlier hpajax\): rebuild the report"):
        report.prediction_thresholds(tmp_path, new)
    with pytest.raises(ValueError, match=r"thresholds.json has no class_frequency for \"rate\""):
        report.prediction_thresholds(tmp_path, new, "rate")


def test_without_class_frequency_no_rate_set_and_the_guard_falls_back_to_half(tmp_path):
    workdir = tmp_path / "work"
    saved = _save_all(workdir, class_frequency=None)  # predictions files of before
    metrics = report.rebuild(workdir, draw_figures=False)
    assert list(metrics["val"])[2:] == ["threshold_0.5", "tuned_on_val", "guarded",
                                        "tuned_on_train"]
    thresholds = json.loads((workdir / "report" / "thresholds.json").read_text())
    assert "class_frequency" not in thresholds and thresholds["guarded_fallback"] == "0.5"
    assert (saved["val"].labels.sum(axis=0) < 5).all()  # 3 samples: every class falls back
    assert thresholds["guarded"] == [0.5] * C

    # The command's --min_val_positives: 1 guards only the classes without val positives.
    r = subprocess.run([PYTHON, "-m", "hpajax.report", str(workdir), "--nofigures",
                        "--min_val_positives=1"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    thresholds = json.loads((workdir / "report" / "thresholds.json").read_text())
    some = saved["val"].labels.sum(axis=0) >= 1
    assert some.any() and not some.all() and thresholds["min_val_positives"] == 1
    expected = np.where(some, thresholds["tuned_on_val"], 0.5)
    assert thresholds["guarded"] == expected.tolist() != [0.5] * C
