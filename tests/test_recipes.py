"""experiments/recipes.py end to end on tiny stores: two stores made, recipes run, the table."""

import json
import subprocess

import numpy as np

from conftest import PYTHON, REPO


def test_recipes_make_two_stores_train_evaluate_and_tabulate(tmp_path):
    work = tmp_path / "recipes"
    command = [PYTHON, "experiments/recipes.py", f"--workdir={work}", "--steps=2",
               "--num_samples=40", "--external_samples=16", "--seeds=0",
               "--recipes=seed,tta,external", "--narrow_model"]
    r = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    results = {name: json.loads((work / name / "seed0" / "result.json").read_text())
               for name in ("seed", "tta", "external")}
    assert results["tta"]["train_seconds"] < 1  # evaluation only: the seed recipe's run
    for rule in ("threshold_0.5", "tuned_on_val", "guarded", "rate"):
        assert 0 <= results["external"][f"{rule}/macro_f1"] <= 1
    # The tta recipe evaluated the seed recipe's checkpoint with 8 views, the seed recipe with 1.
    probs = [np.load(work / name / "seed0" / "report" / "predictions_test.npz")["probs"]
             for name in ("seed", "tta")]
    assert probs[0].shape == probs[1].shape and not np.allclose(probs[0], probs[1])
    sources = json.loads((work / "external" / "seed0" / "data.json").read_text())["sources"]
    assert [s["samples"] for s in sources] == [40, 16]
    table = (work / "recipes.md").read_text()
    assert [line.split(" | ")[0] for line in table.splitlines()[2:5]] == [
        "| seed", "| tta", "| external"]
