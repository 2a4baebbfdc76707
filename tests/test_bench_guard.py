"""experiments/bench_guard.py: the guard's rationale from the synthetic label model."""

import json
import subprocess

from conftest import PYTHON, REPO

SCRIPT = REPO / "experiments" / "bench_guard.py"


def test_on_a_small_val_split_the_guard_gives_back_the_micro_f1_that_tuning_costs():
    r = subprocess.run([PYTHON, str(SCRIPT), "--val_samples=120", "--repeats=3"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    by_rule = {line["thresholds"]: line for line in lines}
    assert list(by_rule) == ["threshold_0.5", "tuned_on_val", "guarded", "rate"]
    assert all(line["val_samples"] == 120 and line["repeats"] == 3 for line in lines)
    assert 10 < lines[0]["held_back_classes"] < 28  # rare classes: < 5 of 120 positives
    assert abs(lines[0]["test_macro_auc"] - 0.87) < 0.03  # the simulated classifier's
    half, tuned, guarded = (by_rule[k] for k in ("threshold_0.5", "tuned_on_val", "guarded"))
    assert tuned["macro_f1"] > half["macro_f1"] and tuned["micro_f1"] < half["micro_f1"]
    assert guarded["micro_f1"] > tuned["micro_f1"] + 0.05
    assert guarded["macro_f1"] >= tuned["macro_f1"] - 0.02

