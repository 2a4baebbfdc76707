"""The evaluate and predict commands end to end on a tiny trained run."""

import csv
import io
import json
import pathlib
import subprocess

import jax
import numpy as np
import pytest
from PIL import Image
from conftest import DATA, PYTHON, REPO, synthetic_store, tiny_config, write_quads

from hpajax import classes, commands, evaluate, inference, predictions, report, submission, train
from hpajax.data import open_store
from hpajax.data.labels import check_id

SIZE = 32  # the tiny seed CNN's two VALID blocks of kernel 3 need 16 px


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> pathlib.Path:
    """A tiny config trained 6 steps on 96 synthetic samples at 32 px."""
    root = tmp_path_factory.mktemp("run")
    store = synthetic_store(root, 96, SIZE, seed=1, fractions=(0.5, 0.25, 0.25))
    train.train_and_evaluate(tiny_config(store), str(root / "work"))
    return root


def _main(*args):
    return subprocess.run([PYTHON, "-m", "hpajax.main", *args], capture_output=True,
                          text=True, cwd=REPO)


def test_evaluate_writes_the_report_with_thresholds_tuned_on_val(run):
    r = _main("evaluate", f"--workdir={run / 'work'}")
    assert r.returncode == 0, r.stderr[-3000:]
    out = run / "work" / "report"
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "thresholds.json", "per_class.csv", "per_class.md", "roc.png",
            "training_curves.png", "f1_per_class.png"} <= names
    assert names & {"best.png", "worst.png"}
    metrics = json.loads((out / "metrics.json").read_text())
    val = [json.loads(line) for line in open(run / "work" / "metrics.jsonl")]
    best = max((r for r in val if r["split"] == "val"), key=lambda r: r["macro_f1"])
    assert metrics["step"] == best["step"]  # the best checkpoint by default
    assert {"threshold_0.5", "tuned_on_val", "tuned_on_train", "tuned_on_test"} <= set(
        metrics["test"])
    assert metrics["val"]["samples"] == 24 and metrics["test"]["samples"] == 24

    restored = inference.restore(run / "work")
    store = open_store(run / "store")
    parts = store.split("default")
    val = inference.predict(restored.steps, restored.state, store, parts["val"])
    test = inference.predict(restored.steps, restored.state, store, parts["test"])
    for role, expected in (("val", val), ("test", test)):  # what the report was built from
        kept, info = predictions.load(out / predictions.file_name(role))
        assert (info.split, info.step) == (role, metrics["step"])
        assert kept.ids == expected.ids == tuple(store.ids[r] for r in parts[role])
        np.testing.assert_array_equal(kept.probs, expected.probs)
        np.testing.assert_array_equal(kept.labels, store.labels[parts[role]])
    saved = report.load_thresholds(out, "tuned_on_val")
    np.testing.assert_array_equal(saved, evaluate.search_thresholds(val.labels, val.probs))
    tuned = evaluate.classification_report(test.labels, test.probs, saved)
    assert metrics["test"]["tuned_on_val"]["macro_f1"] == pytest.approx(tuned["macro"]["f1"])
    guarded = evaluate.classification_report(test.labels, test.probs, report.load_thresholds(out))
    rows = list(csv.DictReader(open(out / "per_class.csv")))  # at the thresholds predict uses
    assert [float(rows[c]["f1"]) for c in range(28)] == pytest.approx(
        [c["f1"] for c in guarded["per_class"]], abs=1e-6)


def test_predict_on_a_store_writes_probabilities_and_submission(run, tmp_path):
    r = _main("predict", f"--workdir={run / 'work'}", f"--input={run / 'store'}",
              f"--output_dir={tmp_path}", "--at_least_one")
    assert r.returncode == 0, r.stderr[-3000:]
    probs = np.load(tmp_path / "probabilities.npy")
    store = open_store(run / "store")
    assert probs.shape == (96, classes.NUM_CLASSES)
    restored = inference.restore(run / "work")
    np.testing.assert_allclose(probs, inference.predict(restored.steps, restored.state,
                                                        store).probs, rtol=1e-6)
    table = list(csv.reader(open(tmp_path / "probabilities.csv")))
    assert table[0] == ["Id", *classes.CLASS_NAMES] and [t[0] for t in table[1:]] == store.ids
    sub = list(csv.DictReader(open(tmp_path / "submission.csv")))
    assert [s["Id"] for s in sub] == store.ids and all(s["Predicted"] for s in sub)


def test_predict_converts_png_quads_in_the_order_of_an_ids_csv(run, tmp_path):
    store = open_store(run / "store")
    ids = store.ids[::-1][:10]  # a subset, in another order: sample_submission.csv's layout
    (tmp_path / "sample_submission.csv").write_text(
        "Id,Predicted\n" + "".join(f"{i},0\n" for i in ids))
    r = _main("predict", f"--workdir={run / 'work'}", f"--input={run / 'raw' / 'train'}",
              f"--ids_csv={tmp_path / 'sample_submission.csv'}",
              f"--output_dir={tmp_path / 'out'}", "--workers=1")
    assert r.returncode == 0, r.stderr[-3000:]
    sub = list(csv.DictReader(open(tmp_path / "out" / "submission.csv")))
    assert [s["Id"] for s in sub] == ids
    probs = np.load(tmp_path / "out" / "probabilities.npy")
    restored = inference.restore(run / "work")
    rows = np.array([store.ids.index(i) for i in ids])
    from_store = inference.predict(restored.steps, restored.state, store, rows).probs
    np.testing.assert_allclose(probs, from_store, rtol=1e-6)  # same pixels, same outputs


def test_predict_on_a_store_follows_the_ids_csv(run, tmp_path):
    """--ids_csv selects and orders a store's rows; an Id the store lacks is an error."""
    store = open_store(run / "store")
    ids = store.ids[::-1][:10]
    ids_csv = tmp_path / "ids.csv"
    ids_csv.write_text("Id,Predicted\n" + "".join(f"{i},0\n" for i in ids))
    out = commands.predict_command(run / "work", run / "store", tmp_path / "out",
                                   ids_csv=ids_csv)
    assert [s["Id"] for s in csv.DictReader(open(out / "submission.csv"))] == ids
    assert [t[0] for t in csv.reader(open(out / "probabilities.csv"))][1:] == ids
    restored = inference.restore(run / "work")
    rows = np.array([store.ids.index(i) for i in ids])
    np.testing.assert_allclose(np.load(out / "probabilities.npy"), inference.predict(
        restored.steps, restored.state, store, rows).probs, rtol=1e-6)
    ids_csv.write_text(f"Id,Predicted\n{ids[0]},0\nnope,0\nnada,0\n")
    with pytest.raises(ValueError) as err:
        commands.predict_command(run / "work", run / "store", tmp_path / "out", ids_csv=ids_csv)
    assert (f"--ids_csv={ids_csv}: ids.csv:3: Id 'nope' is not in the store {run / 'store'} "
            "(2 of its 3 Ids are missing)") in str(err.value)


def test_predict_on_the_kaggle_test_layout(run, tmp_path):
    """The real sample_submission.csv's first Ids, with stand-in PNG quads."""
    lines = (DATA / "hpa2019" / "sample_submission.csv").read_text().splitlines()
    assert lines[0] == "Id,Predicted"
    ids = [line.split(",")[0] for line in lines[1:6]]
    write_quads(tmp_path / "test", ids, size=SIZE)
    (tmp_path / "head.csv").write_text("\n".join(lines[:6]) + "\n")
    out = commands.predict_command(run / "work", tmp_path / "test", tmp_path / "out",
                                   ids_csv=tmp_path / "head.csv")  # as the command calls it
    sub = (out / "submission.csv").read_text().splitlines()
    assert sub[0] == "Id,Predicted" and [s.split(",")[0] for s in sub[1:]] == ids
    for row in sub[1:]:
        labels = row.split(",")[1].split()
        assert all(0 <= int(c) < classes.NUM_CLASSES for c in labels)


def test_submission_thresholds_and_at_least_one():
    probs = np.full((2, classes.NUM_CLASSES), 0.1)
    probs[0, [3, 5]] = 0.7
    probs[1, 9] = 0.4
    thresholds = np.full(classes.NUM_CLASSES, 0.5)
    thresholds[5] = 0.75
    assert submission.submission_csv(["a", "b"], probs, thresholds) == "Id,Predicted\na,3\nb,\n"
    assert submission.submission_csv(["a", "b"], probs, thresholds,
                                  at_least_one=True) == "Id,Predicted\na,3\nb,9\n"


def test_submission_quotes_ids_that_need_it():
    """check_id allows ',' and '"' in an Id: csv.reader must give every Id back."""
    ids = ["a,b", 'q"x', "plain"]
    assert all(check_id(i) is None for i in ids)
    probs = np.full((3, classes.NUM_CLASSES), 0.1)
    probs[:, 4] = 0.9
    text = submission.submission_csv(ids, probs, np.full(classes.NUM_CLASSES, 0.5))
    assert list(csv.reader(io.StringIO(text))) == [["Id", "Predicted"], ["a,b", "4"],
                                                   ['q"x', "4"], ["plain", "4"]]


def test_evaluate_and_predict_errors_name_the_problem(run, tmp_path):
    r = _main("evaluate", f"--workdir={run / 'work'}", "--step=5")
    assert r.returncode == 1 and "--step=5: no such checkpoint" in r.stderr
    assert "saved: 3, 6" in r.stderr
    (tmp_path / "config.json").write_text((run / "work" / "config.json").read_text())
    r = _main("evaluate", f"--workdir={tmp_path}")
    assert r.returncode == 1 and "no checkpoint in" in r.stderr
    r = _main("predict", f"--workdir={run / 'work'}", f"--input={tmp_path / 'nope'}")
    assert r.returncode == 1 and "neither a store nor a folder" in r.stderr


def test_a_smaller_input_size_resizes_on_device(run, tmp_path):
    """Trained at input_size 28 on a 32 px store, the model sees the images resized."""
    config = tiny_config(run / "store", **{"data.input_size": 28,  # the store is 32 px
                                           "total_steps": 3})
    train.train_and_evaluate(config, str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["data"]["input_size"] == 28
    restored = inference.restore(tmp_path)
    steps, state = restored.steps, restored.state
    assert steps.image_shape == (28, 28, 4)
    assert state.params["block1_conv1"]["kernel"].shape[2] == 4
    # The model sees the 32 px images resized to 28 px (antialiased linear, on device):
    # its probabilities equal those of the same weights on images resized by Pillow's
    # antialiased bilinear, an independent implementation (measured max difference 2e-6;
    # with the resize removed, the model sees 32 px and they differ by up to 0.48).
    rows = np.arange(steps.config.eval_batch_size)  # one batch
    got = inference.predict(steps, state, open_store(run / "store"), rows).probs
    images = open_store(run / "store").images[rows].read().result().astype(np.float32) / 255
    small = np.stack([np.stack([np.asarray(Image.fromarray(image[..., c], mode="F").resize(
        (28, 28), Image.Resampling.BILINEAR)) for c in range(4)], -1) for image in images])
    logits = jax.jit(steps.model.apply, static_argnames="train")(
        {"params": state.params, "batch_stats": state.batch_stats}, small, train=False)
    np.testing.assert_allclose(got, jax.nn.sigmoid(logits), atol=1e-4)
