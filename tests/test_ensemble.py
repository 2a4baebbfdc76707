"""hpajax.main ensemble, and predict with an ensemble's members at their own image sizes."""

import json
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from conftest import PYTHON, REPO, synthetic_store, tiny_config

from hpajax import commands, ensemble, evaluate, predictions, report, train
from hpajax.data import split

NUM_SAMPLES = 40


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, pathlib.Path]:
    """One run on a 32 px store and one on a 48 px store of the same images and split."""
    root = tmp_path_factory.mktemp("ensemble")
    out = {}
    for size in (32, 48):
        store = synthetic_store(root / f"data{size}", NUM_SAMPLES, size)
        out[f"run{size}"] = root / f"run{size}"
        train.train_and_evaluate(tiny_config(store), str(out[f"run{size}"]))
    out["pngs"] = root / "data48" / "raw" / "train"
    return out


def probabilities(workdir, input_path, out_dir) -> np.ndarray:
    commands.predict_command(workdir, input_path, out_dir)
    return np.load(out_dir / "probabilities.npy")


def test_predict_averages_the_members_each_at_its_own_size(runs, tmp_path):
    work = tmp_path / "e"
    ensemble.ensemble_command(f"{runs['run32']}:1,{runs['run48']}:3", work, draw_figures=False)
    mean = probabilities(work, runs["pngs"], tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").glob("store*")) == ["store_32px",
                                                                      "store_48px"]
    alone = [probabilities(runs[f"run{size}"], runs["pngs"], tmp_path / f"p{size}")
             for size in (32, 48)]
    np.testing.assert_allclose(mean, (1 * alone[0] + 3 * alone[1]) / 4, rtol=0, atol=1e-7)


def test_thresholds_are_tuned_on_the_weighted_mean_of_the_members_validation(runs, tmp_path):
    metrics = ensemble.ensemble_command(f"{runs['run32']}:1,{runs['run48']}:3", tmp_path,
                                        draw_figures=False)
    val = [predictions.load(tmp_path / "members" / str(i) / "predictions_val.npz")[0]
           for i in (0, 1)]
    assert val[0].ids == val[1].ids
    mean = (0.25 * val[0].probs.astype(np.float64) + 0.75 * val[1].probs).astype(np.float32)
    saved = json.loads((tmp_path / "report" / "thresholds.json").read_text())
    np.testing.assert_array_equal(saved["tuned_on_val"],
                                  evaluate.search_thresholds(val[0].labels, mean))
    assert [metrics["members"][f"member{i}"]["weight"] for i in (0, 1)] == [0.25, 0.75]
    assert set(metrics) == {"step", "decision_rule", "val", "test", "members"}
    assert report.rebuild(tmp_path, draw_figures=False) == metrics  # without JAX's help


def test_a_one_member_ensemble_is_its_member(runs, tmp_path):
    metrics = ensemble.ensemble_command(str(runs["run32"]), tmp_path / "e", draw_figures=False)
    own = commands.evaluate_command(runs["run32"], seed_thresholds=False, draw_figures=False)
    assert {k: metrics[k] for k in ("val", "test")} == {k: own[k] for k in ("val", "test")}
    store = json.loads((runs["run32"] / "config.json").read_text())["data"]["store"]
    np.testing.assert_array_equal(probabilities(tmp_path / "e", store, tmp_path / "p1"),
                                  probabilities(runs["run32"], store, tmp_path / "p2"))


def test_members_of_other_images_or_kinds_are_refused(runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs["run32"], other)
    config = json.loads((other / "config.json").read_text())
    split.split_store(config["data"]["store"], name="seed1", seed=1)
    config["data"]["split"] = "seed1"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"members {runs['run32']} and {other} were not "
                                         r"evaluated on the same images: their test parts "
                                         r"differ \(8 and 8 Ids, \d shared\)"):
        ensemble.ensemble_command(f"{runs['run32']},{other}", tmp_path / "e")
    fake_cv = tmp_path / "cv"
    fake_cv.mkdir()
    (fake_cv / report.CV_FILE).write_text("{}")
    with pytest.raises(ValueError, match="mixes cross-validations and single runs"):
        ensemble.ensemble_command(f"{runs['run32']},{fake_cv}", tmp_path / "e")
    assert not (tmp_path / "e").exists()  # nothing written


@pytest.mark.parametrize("members, message", [
    ("", "--members: give one or more WORKDIR[:WEIGHT], comma-separated"),
    ("{run}:0", "--members entry '{run}:0': weight must be positive"),
    ("{run},{run}:2", "--members names a workdir twice"),
    ("{run}x", "--members entry '{run}x': {run}x is neither a training run"),
])
def test_bad_members_are_named_in_one_line(runs, tmp_path, members, message):
    run = runs["run32"]
    with pytest.raises(ValueError, match=message.format(run=run).replace("[", r"\[")):
        ensemble.parse_members(members.format(run=run))


def test_the_command_line_names_a_bad_step_for_an_ensemble(runs, tmp_path):
    ensemble.ensemble_command(str(runs["run32"]), tmp_path / "e", draw_figures=False)
    r = subprocess.run([PYTHON, "-m", "hpajax.main", "predict", f"--workdir={tmp_path / 'e'}",
                        f"--input={runs['pngs']}", "--step=3"], capture_output=True, text=True,
                       cwd=REPO)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"predict: error: --step=3: {tmp_path / 'e'} is an ensemble or a cross-validation; "
        "each of its models predicts with the checkpoint it was scored with")
