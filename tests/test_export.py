"""hpajax.main export, and predict --engine: the exported files give predict's probabilities.

The runs: a plain seed CNN; one with 4 test-time views, a 24 px input from the
32 px store (a resize in the graph) and 3 of the 4 channels; their ensemble.
Tolerance 1e-5 absolute: float32 runs whose exported function computes the
same values as predict's in another order (the views unrolled, the resize
as matrix products), observed within 1e-6.
"""

import hashlib
import json
import pathlib
import shutil
import subprocess

import jax
import numpy as np
import onnxruntime
import pytest
from conftest import PYTHON, REPO, predict_outside, records, synthetic_store, tiny_config

from hpajax import commands, ensemble, export, exported, inference, report, train
from hpajax import steps as steps_lib
from hpajax.data import open_store

TOLERANCE = 1e-5
IMAGES = 7  # predicted outside hpajax in batches of 1 and of 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The three workdirs, exported, and the store they read."""
    root = tmp_path_factory.mktemp("export")
    store = synthetic_store(root / "data", 40, 32)
    out = {"store": store, "plain": root / "plain", "views": root / "views",
           "ensemble": root / "ensemble"}
    train.train_and_evaluate(tiny_config(store), str(out["plain"]))
    views = tiny_config(store, tta=4, **{"data.input_size": 24, "data.channels": (0, 1, 3)})
    train.train_and_evaluate(views, str(out["views"]))
    ensemble.ensemble_command(f"{out['plain']}:1,{out['views']}:3", out["ensemble"],
                              draw_figures=False)
    for name in ("plain", "views", "ensemble"):
        export.export_command(out[name])
    return out


def predicted(workdir, store, out, engine="jax", **kw) -> np.ndarray:
    commands.predict_command(workdir, store, out, engine=engine, **kw)
    return np.load(out / "probabilities.npy")


def test_outside_hpajax_the_files_give_predicts_probabilities_at_two_batch_sizes(runs,
                                                                                  tmp_path):
    images = open_store(runs["store"]).images[:IMAGES].read().result()
    names = ("plain", "views", "ensemble")
    outside = predict_outside(images, {n: runs[n] / exported.EXPORT_DIR for n in names},
                              tmp_path)
    assert len(outside) == 3 * 2 * 2  # models, engines, batch sizes
    for name in names:
        want = predicted(runs[name], runs["store"], tmp_path / name)[:IMAGES]
        for key in (k for k in outside if k.startswith(f"{name}/")):
            assert outside[key].dtype == np.float32 and outside[key].shape == (IMAGES, 28)
            np.testing.assert_allclose(outside[key], want, rtol=0, atol=TOLERANCE, err_msg=key)


@pytest.mark.parametrize("engine", ["stablehlo", "onnx"])
def test_predict_with_an_exported_engine_writes_what_the_checkpoints_write(runs, engine,
                                                                          tmp_path):
    """The same probabilities and classes, but where a probability lies within rounding of
    its threshold: the guarded set's rate-matched thresholds are probabilities of the
    validation images, which the store predicted here holds."""
    for name in ("views", "ensemble"):
        want = predicted(runs[name], runs["store"], tmp_path / f"{name}_jax")
        got = predicted(runs[name], runs["store"], tmp_path / name, engine)
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
        thresholds = (report.prediction_thresholds(runs[name] / "report", want)
                      if (runs[name] / "report").is_dir() else np.full(28, 0.5))
        ours, theirs = (_classes(tmp_path / d / "submission.csv") for d in (name, f"{name}_jax"))
        assert list(ours) == list(theirs)
        for row, sample_id in enumerate(theirs):
            for c in ours[sample_id] ^ theirs[sample_id]:
                assert abs(want[row, c] - thresholds[c]) <= TOLERANCE, (sample_id, c)


def _classes(submission: pathlib.Path) -> dict[str, set[int]]:
    rows = [line.split(",") for line in submission.read_text().splitlines()[1:]]
    return {sample_id: {int(c) for c in predicted.split()} for sample_id, predicted in rows}


def test_the_manifest_holds_the_reports_thresholds_the_models_and_each_files_sha256(runs):
    folder = runs["ensemble"] / exported.EXPORT_DIR
    manifest = exported.read_manifest(folder)
    report_thresholds = json.loads((runs["ensemble"] / "report" / "thresholds.json").read_text())
    assert manifest["thresholds"] == report_thresholds
    metrics = json.loads((runs["ensemble"] / "report" / "metrics.json").read_text())
    assert (manifest["report_step"], manifest["test_metrics"]) == (metrics["step"],
                                                                   metrics["test"])
    assert manifest["input"]["shape"] == ["B", 32, 32, 4]
    assert [(m["weight"], m["input_size"], m["channels"], m["tta"])
            for m in manifest["models"]] == [(0.25, 32, ["red", "green", "blue", "yellow"], 1),
                                             (0.75, 24, ["red", "green", "yellow"], 4)]
    assert sorted(manifest["files"]) == ["MODEL_CARD.md", "model.jax_export", "model.onnx"]
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    card = (folder / "MODEL_CARD.md").read_text()
    assert "The weighted mean of 2 models' probabilities" in card
    assert "| 0 | Nucleoplasm |" in card and "## Known limits" in card


def test_a_changed_file_fails_its_sha256_check(runs, tmp_path):
    work = tmp_path / "plain"
    shutil.copytree(runs["plain"], work)
    model = work / exported.EXPORT_DIR / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"model.onnx: sha256 .* is not the manifest's .*: the "
                                         r"file changed after export"):
        commands.predict_command(work, runs["store"], tmp_path / "out", engine="onnx")
    assert not (tmp_path / "out" / "probabilities.npy").exists()


def test_a_store_of_another_size_is_refused_by_name(runs, tmp_path):
    other = synthetic_store(tmp_path / "data", 12, 24)
    with pytest.raises(ValueError, match=r"--input=.*: images of \(24, 24, 4\), but the "
                                         r"exported model takes \(32, 32, 4\)"):
        commands.predict_command(runs["plain"], other, tmp_path / "out", engine="stablehlo")


def test_step_and_views_are_fixed_at_export(runs, tmp_path):
    for flag, kw in (("--step", {"step": 3}), ("--tta", {"tta": 2})):
        with pytest.raises(ValueError, match=f"{flag}: fixed at export"):
            commands.predict_command(runs["plain"], runs["store"], tmp_path, engine="onnx", **kw)


def test_bad_exports_are_clear_errors_that_write_nothing(runs, tmp_path):
    empty = tmp_path / "untrained"
    empty.mkdir()
    shutil.copy(runs["plain"] / "config.json", empty)
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*: train first"):
        export.export_command(empty, output_dir=tmp_path / "a")
    with pytest.raises(ValueError, match=r"--step=5: no such checkpoint .* \(saved: 3, 6\)"):
        export.export_command(runs["plain"], step=5, output_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="--formats=tflite: choose one or more of"):
        export.export_command(runs["plain"], formats=["tflite"], output_dir=tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")
    # into the earlier export: refused on the command line, in one line, the files unchanged
    before = {p.name: p.read_bytes() for p in (runs["plain"] / "export").iterdir()}
    r = subprocess.run([PYTHON, "-m", "hpajax.main", "export", f"--workdir={runs['plain']}"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == (f"export: error: --output_dir={runs['plain']}"
                                                 "/export: not empty; export into a new or "
                                                 "empty folder")
    assert {p.name: p.read_bytes() for p in (runs["plain"] / "export").iterdir()} == before


def test_a_step_saved_without_evaluation_is_recalibrated_as_predict_does(runs, tmp_path):
    """Step 3 of a run that evaluates at step 6 only: its BatchNorm statistics come from the
    training store at export, as at predict."""
    work = tmp_path / "run"
    train.train_and_evaluate(tiny_config(runs["store"], eval_every=6), str(work))
    assert [r["step"] for r in records(work, "val")] == [6]
    export.export_command(work, step=3, formats=["onnx"], output_dir=tmp_path / "e")
    manifest = exported.read_manifest(tmp_path / "e")
    assert manifest["thresholds"] is None and manifest["models"][0]["step"] == 3
    assert list(manifest["files"]) == ["model.onnx", "MODEL_CARD.md"]
    _, run = exported.load(tmp_path / "e", "onnx")
    images = open_store(runs["store"]).images[:IMAGES].read().result()
    want = predicted(work, runs["store"], tmp_path / "p", step=3)[:IMAGES]
    np.testing.assert_allclose(run(images), want, rtol=0, atol=TOLERANCE)


def test_a_bfloat16_model_meets_its_stated_tolerance(runs):
    """A bfloat16 seed CNN with 2 views (fresh weights: no run needed): StableHLO repeats its
    bfloat16 arithmetic in another order, ONNX computes in float32; bfloat16 keeps 8 bits,
    so both stay within 1e-2 of predict's probabilities (observed on ResNet-18: 3.3e-4 and
    1.2e-3)."""
    config = tiny_config(runs["store"], tta=2, **{"model.dtype": "bfloat16",
                                                  "data.input_size": 32})
    steps = steps_lib.build(config, steps_lib.make_mesh(config.eval_batch_size),
                            steps_lib.input_shape(config))
    state = steps_lib.init_state(steps)
    member = export.Member(1.0, runs["plain"], inference.Restored(config, steps, state, 0))
    files = export.serialize([member], 32)
    images = open_store(runs["store"]).images[:IMAGES].read().result()
    batch = {"image": images, "mask": np.ones(IMAGES, bool),
             "label": np.zeros((IMAGES, 28), np.uint8)}
    want = np.asarray(steps.eval(state, steps_lib.to_device(steps, batch))["probs"])
    stablehlo = jax.export.deserialize(bytearray(files["model.jax_export"])).call(images)
    session = onnxruntime.InferenceSession(files["model.onnx"])
    for got in (np.asarray(stablehlo), session.run(None, {"images": images})[0]):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-2)
