"""Saved predictions (hpajax.predictions) and the report rebuilt from them without JAX."""

import json
import subprocess

import numpy as np
import pytest

from conftest import PYTHON, REPO
from hpajax import classes, figures, predictions, report
from hpajax.data.store import write_store

C = classes.NUM_CLASSES
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


def _save_all(workdir, step: int = 7) -> dict[str, predictions.Predictions]:
    """Saves predictions of train, val and test as ``evaluate`` does; returns them."""
    saved = {}
    for seed, split in enumerate(("train", "val", "test")):
        saved[split] = _predictions(split, seed)
        predictions.save(workdir / "report" / predictions.file_name(split), saved[split],
                         split=split, step=step, data_fingerprint=FINGERPRINT)
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
    assert not list(tmp_path.iterdir())


# --- write_report and rebuild ------------------------------------------------------------

def test_rebuild_writes_what_write_report_writes_for_the_same_predictions(tmp_path, capsys):
    workdir = tmp_path / "work"
    saved = _save_all(workdir, step=7)
    metrics = report.rebuild(workdir, draw_figures=False)
    direct = report.write_report(tmp_path / "direct", saved["val"], saved["test"],
                                 train=saved["train"], step=7, draw_figures=False)
    assert metrics == direct and metrics["step"] == 7
    assert {"tuned_on_val", "tuned_on_train", "tuned_on_test"} <= set(metrics["test"])
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
                                         r"predictions_test.npz \(step 7\) come from different"):
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
    assert (f"report: error: no predictions_val.npz or predictions_test.npz in "
            f"{workdir / 'report'}: run `python -m hpajax.main evaluate --workdir={workdir}` "
            "first") in r.stderr
    assert not list(workdir.iterdir())  # nothing written


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
