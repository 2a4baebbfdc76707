"""hpajax.main cv: fold runs, their out-of-fold predictions, thresholds and report."""

import json
import os
import pathlib
import shutil
import signal
import subprocess

import numpy as np
import pytest
from conftest import PYTHON, REPO, run_records, synthetic_store, tiny_config

from hpajax import commands, cv, ensemble, evaluate, export, exported, predictions, report
from hpajax import train
from hpajax.data import split, store as storelib
from hpajax.data.run_data import open_run_data

SIZE, FOLDS = 32, 3
SPLIT = {"data.split": f"kfold{FOLDS}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> pathlib.Path:
    """48 samples: a test part of 12 and three folds of 12."""
    return synthetic_store(tmp_path_factory.mktemp("data"), 48, SIZE, folds=FOLDS,
                           test_fraction=0.25)


@pytest.fixture(scope="module")
def done(store, tmp_path_factory) -> pathlib.Path:
    """The reference: the whole cross-validation in one call."""
    workdir = tmp_path_factory.mktemp("cv")
    cv.cv_command(tiny_config(store, **SPLIT), workdir, draw_figures=False)
    return workdir


def shas(workdir: pathlib.Path) -> list[str]:
    return [r["params_sha256"] for r in run_records(workdir) if r["split"] == "checkpoint"]


def command(store, workdir, *flags: str) -> list[str]:
    return [PYTHON, "-m", "hpajax.main", "cv", "--config=experiments/configs/tiny.py",
            f"--config.data.store={store}", f"--config.data.split=kfold{FOLDS}",
            f"--workdir={workdir}", *flags]


def test_the_out_of_fold_set_is_every_non_test_row_once_each_from_its_own_fold(store, done):
    oof, info = predictions.load(done / report.OOF_FILE)
    fold_of = predictions.extra_arrays(done / report.OOF_FILE, ("fold",))["fold"]
    parts = storelib.load_split(store, f"kfold{FOLDS}")
    non_test = np.setdiff1d(np.arange(48), parts["test"])
    np.testing.assert_array_equal(oof.rows, non_test)  # once each, in store-row order
    labels = storelib.open_store(store).labels
    np.testing.assert_array_equal(oof.labels, labels[non_test])
    for k in range(FOLDS):
        data = open_run_data(tiny_config(store, **SPLIT, **{"data.fold": k}).data)
        assert data.eval_part == f"fold{k}"
        np.testing.assert_array_equal(oof.rows[fold_of == k], data.rows(data.eval_part))
        # The fold's own last validation, logged while it trained, scored these very
        # probabilities: the mean over samples and classes of the BCE written out, and
        # macro-F1 at 0.5.
        [last] = [r for r in run_records(done / f"fold{k}") if r["split"] == "val"][-1:]
        y, p = oof.labels[fold_of == k].astype(np.float64), oof.probs[fold_of == k]
        bce = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
        assert bce == pytest.approx(last["loss"], rel=1e-4)
        assert evaluate.f1_scores(y, p)["macro_f1"] == pytest.approx(last["macro_f1"])
    assert info.data_fingerprint["cv"]["steps"] == [6] * FOLDS


def test_test_predictions_are_the_mean_of_the_folds_own(done):
    test, _ = predictions.load(done / report.CV_TEST_FILE)
    each = predictions.extra_arrays(done / report.CV_TEST_FILE, ("fold_probs",))["fold_probs"]
    assert each.shape == (FOLDS, 12, 28)
    np.testing.assert_allclose(test.probs, each.astype(np.float64).mean(0), rtol=1e-6)
    assert not np.allclose(each[0], each[1])  # three models, not one


def test_thresholds_are_evaluates_search_on_the_out_of_fold_set(done):
    oof, info = predictions.load(done / report.OOF_FILE)
    saved = json.loads((done / report.REPORT_DIR / "thresholds.json").read_text())
    np.testing.assert_array_equal(saved["tuned_on_val"],
                                  evaluate.search_thresholds(oof.labels, oof.probs))
    fallback = evaluate.rate_thresholds(oof.probs, info.class_frequency)
    np.testing.assert_array_equal(saved["guarded"], evaluate.guarded_thresholds(
        oof.labels, oof.probs, fallback, report.MIN_VAL_POSITIVES))
    metrics = json.loads((done / report.REPORT_DIR / "metrics.json").read_text())
    assert metrics["oof"]["samples"] == 36 and metrics["test"]["samples"] == 12
    folds = metrics["folds"]
    per_fold = [folds[f"fold{k}"]["oof"]["threshold_0.5"]["macro_f1"] for k in range(FOLDS)]
    assert folds["mean"]["oof"]["threshold_0.5"]["macro_f1"] == pytest.approx(np.mean(per_fold))
    assert folds["sd"]["oof"]["threshold_0.5"]["macro_f1"] == pytest.approx(np.std(per_fold))


def test_a_rerun_is_a_no_op_and_the_report_rebuilds_without_training(store, done, capsys):
    before = {p: p.stat().st_mtime_ns for p in done.rglob("*") if p.is_file()}
    metrics = cv.cv_command(tiny_config(store, **SPLIT), done, draw_figures=False)
    out = capsys.readouterr().out
    assert "fold 0 of 3: trained" in out and "the report of these 3 folds is there" in out
    assert {p: p.stat().st_mtime_ns for p in done.rglob("*") if p.is_file()} == before
    assert report.rebuild(done, draw_figures=False) == metrics


def test_a_fold_run_equals_the_standalone_run(store, done, tmp_path):
    train.train_and_evaluate(tiny_config(store, **SPLIT, **{"data.fold": 1}), str(tmp_path))
    assert shas(tmp_path) == shas(done / "fold1")


def test_a_fold_run_on_folds_without_a_test_part_evaluates_on_its_fold(store, tmp_path):
    split.split_store(store, folds=2)
    config = tiny_config(store, **{"data.split": "kfold2", "data.fold": 1, "total_steps": 3})
    train.train_and_evaluate(config, str(tmp_path))
    metrics = commands.evaluate_command(tmp_path, seed_thresholds=False, draw_figures=False)
    assert set(metrics) == {"step", "decision_rule", "fold1"}
    assert metrics["fold1"]["samples"] == 24
    assert sorted(p.name for p in (tmp_path / "report").glob("*.npz")) == [
        "predictions_val.npz"]


def signal_in_fold(cmd: list[str], fold: int, sig: int) -> tuple[int, str]:
    """Runs ``cmd``; sends ``sig`` at fold ``fold``'s step 4 of 6, its step-3 checkpoint
    written or being written; returns the exit code and the output."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    out, in_fold = [], False
    for line in proc.stdout:
        out.append(line)
        in_fold = in_fold or line.startswith(f"fold {fold} of 3")
        if in_fold and line.startswith("step 4/6"):
            proc.send_signal(sig)
            break
    out += proc.stdout.read()
    return proc.wait(timeout=300), "".join(out)


def test_stopped_in_fold_0_and_killed_in_fold_1_it_resumes_without_retraining(
        store, done, tmp_path, capsys):
    rc, out = signal_in_fold(command(store, tmp_path), 0, signal.SIGTERM)
    assert rc == 0 and "stopped by SIGTERM after step" in out, out  # as train stops
    rc, out = signal_in_fold(command(store, tmp_path), 1, signal.SIGKILL)
    assert rc == -signal.SIGKILL and "resumed from" in out  # fold 0, from its stop
    fold0 = (tmp_path / "fold0" / "metrics.jsonl").read_bytes()
    cv.cv_command(tiny_config(store, **SPLIT), tmp_path, draw_figures=False)
    out = capsys.readouterr().out
    assert "fold 0 of 3: trained" in out and "fold 1 of 3: training" in out
    assert (tmp_path / "fold0" / "metrics.jsonl").read_bytes() == fold0
    # Less the SIGTERM's own checkpoint record, off the every-3-steps grid unless it fell on it.
    assert [r for r in run_records(tmp_path / "fold0")
            if r["split"] != "checkpoint" or r["step"] % 3 == 0] == run_records(done / "fold0")
    for k in (1, 2):
        assert run_records(tmp_path / f"fold{k}") == run_records(done / f"fold{k}")
    oof, _ = predictions.load(tmp_path / report.OOF_FILE)
    np.testing.assert_array_equal(oof.probs, predictions.load(done / report.OOF_FILE)[0].probs)


def test_two_fold_jobs_fill_one_workdir_at_once(store, done, tmp_path):
    jobs = [subprocess.Popen(command(store, tmp_path, f"--fold={k}"), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for k in (0, 2)]
    for job in jobs:
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["fold0", "fold2"]  # no other fold, no report
    for k in (0, 2):
        assert shas(tmp_path / f"fold{k}") == shas(done / f"fold{k}")


def test_bad_requests_are_named_in_one_line(store, tmp_path):
    config = tiny_config(store, **SPLIT)
    with pytest.raises(ValueError, match="--fold=3: split 'kfold3' has 3 folds, 0 to 2"):
        cv.cv_command(config, tmp_path, 3)
    with pytest.raises(ValueError, match="--checkpoint='worst': choose last or best"):
        cv.cv_command(config, tmp_path, checkpoint="worst")
    with pytest.raises(ValueError, match="--config.data.fold=1: cv sets each fold's"):
        cv.cv_command(tiny_config(store, **SPLIT, **{"data.fold": 1}), tmp_path)
    storelib.save_split(store, "plain", {"a": np.arange(20), "b": np.arange(20, 48)})
    with pytest.raises(ValueError, match=r"config.data.split='plain' of .* has no folds \(its "
                                         r"parts: a, b\): make them with tools/split.py"):
        cv.cv_command(tiny_config(store, **{"data.split": "plain"}), tmp_path)
    with pytest.raises(ValueError, match="config.data.fold=3: split 'kfold3' has 3 folds"):
        train.train_and_evaluate(tiny_config(store, **SPLIT, **{"data.fold": 3}), tmp_path)
    assert not list(tmp_path.iterdir())
    r = subprocess.run(command(store, tmp_path, "--fold=-1"), cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(
        "error: flag --fold=-1: -1 is not a non-negative integer"), r.stderr


def test_predict_on_the_folder_is_the_mean_of_its_folds_models(store, done, tmp_path):
    test, _ = predictions.load(done / report.CV_TEST_FILE)
    ids_csv = tmp_path / "test_ids.csv"
    ids_csv.write_text("Id\n" + "".join(f"{i}\n" for i in test.ids))
    commands.predict_command(done, store, tmp_path / "p", ids_csv=ids_csv)
    np.testing.assert_allclose(np.load(tmp_path / "p" / "probabilities.npy"), test.probs,
                               rtol=0, atol=1e-7)


def test_an_ensemble_of_cross_validations_tunes_on_their_out_of_fold_mean(done, tmp_path):
    metrics = ensemble.ensemble_command(f"{done}:2", tmp_path, draw_figures=False)
    saved = json.loads((done / report.REPORT_DIR / "metrics.json").read_text())
    assert {k: metrics[k] for k in ("oof", "test")} == {k: saved[k] for k in ("oof", "test")}
    assert (tmp_path / "report" / "thresholds.json").read_text() == (
        done / report.REPORT_DIR / "thresholds.json").read_text()


def test_the_folder_exports_as_its_folds_mean_with_out_of_fold_thresholds(store, done,
                                                                          tmp_path):
    """One ONNX function, the folds' mean: predict --engine=onnx gives cv's test predictions
    within float32 rounding (tests/test_export.py), with the out-of-fold thresholds."""
    work = tmp_path / "cv"
    shutil.copytree(done, work)
    export.export_command(work, formats=["onnx"])
    manifest = exported.read_manifest(work / exported.EXPORT_DIR)
    assert [m["weight"] for m in manifest["models"]] == [1 / FOLDS] * FOLDS
    assert [pathlib.Path(m["workdir"]).name
            for m in manifest["models"]] == [f"fold{k}" for k in range(FOLDS)]
    assert manifest["thresholds"] == json.loads((done / report.REPORT_DIR /
                                                 "thresholds.json").read_text())
    test, _ = predictions.load(done / report.CV_TEST_FILE)
    ids_csv = tmp_path / "test_ids.csv"
    ids_csv.write_text("Id\n" + "".join(f"{i}\n" for i in test.ids))
    commands.predict_command(work, store, tmp_path / "p", ids_csv=ids_csv, engine="onnx")
    np.testing.assert_allclose(np.load(tmp_path / "p" / "probabilities.npy"), test.probs,
                               rtol=0, atol=1e-5)
