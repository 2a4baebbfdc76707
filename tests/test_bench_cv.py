"""experiments/bench_cv.py end to end at toy size: two CVs, their figures, an ensemble."""

import json
import subprocess

from conftest import PYTHON, REPO


def test_bench_cv_scores_folds_means_and_an_ensemble(tmp_path):
    r = subprocess.run([PYTHON, "experiments/bench_cv.py", f"--workdir={tmp_path}",
                        "--num_samples=40", "--image_size=32", "--folds=2", "--steps=2",
                        "--seeds=0", "--second_model=seed_cnn", "--second_seeds=0",
                        "--narrow_model"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    test = [x for x in lines if x["figure"] == "test"]
    assert [(x["probs"], x["thresholds"]) for x in test[:4]] == [
        ("fold", "own val"), ("fold", "oof"), ("mean", "own val"), ("mean", "oof")]
    assert len(test) == 9 and test[-1]["model"] == "seed_cnn + seed_cnn"
    assert all(0 <= x["macro_f1"] <= 1 and 0 <= x["micro_f1"] <= 1 for x in test)
    # The CV's own report scored its mean at the out-of-fold thresholds.
    report = json.loads((tmp_path / "seed_cnn" / "seed0" / "report" / "metrics.json").read_text())
    assert test[3]["macro_f1"] == report["test"]["guarded"]["macro_f1"]
    assert (tmp_path / "bench_cv.md").read_text().count("\n") == 2 + 5
