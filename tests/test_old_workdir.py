"""A run directory written by the code before issue 11's move still resumes and evaluates.

``tests/data/workdir_v1`` holds a tiny run stopped after step 3 of 6 and what
that code reported for it (see tests/data/SOURCES.md): resuming it must
reach the weights the old code reached, and evaluating it must give the
numbers the old code gave. This covers the Orbax item names, the parameter
paths, the saved ``config.json`` (which has no ``model.name``), the training
sums and the Grain iterator state.
"""

import json
import shutil

import pytest
from conftest import DATA, tiny_config

from hpajax import commands, records, train

OLD = DATA / "workdir_v1"
EXPECTED = json.loads((OLD / "expected.json").read_text())
# The override of tiny.py the old run was made with (workdir_v1/make.py); its
# shapes are test_train.py's, so the two share their compiled programs.
OVERRIDES = {"keep_checkpoints": 1}


@pytest.fixture
def old_run(tmp_path):
    """A copy of the old store and run, the run's config pointing at the copied store."""
    shutil.copytree(OLD / "store", tmp_path / "store")
    shutil.copytree(OLD / "run", tmp_path / "run")
    config_file = tmp_path / "run" / "config.json"
    saved = json.loads(config_file.read_text())
    assert "name" not in saved["model"]  # written before config.model.name existed
    saved["data"]["store"] = str(tmp_path / "store")
    config_file.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    return tmp_path


def test_it_resumes_to_the_weights_the_old_code_reached(old_run):
    config = tiny_config(old_run / "store", total_steps=6, **OVERRIDES)
    train.train_and_evaluate(config, str(old_run / "run"))
    logged = records.read_records(old_run / "run" / "metrics.jsonl")
    shas = {str(r["step"]): r["params_sha256"] for r in logged if r["split"] == "checkpoint"}
    assert shas == EXPECTED["checkpoint_sha256"]  # step 3 from the old code, 6 from ours
    assert [r for r in logged if r["split"] == "val"] == EXPECTED["val"]


def test_it_evaluates_to_the_numbers_the_old_code_gave(old_run):
    metrics = commands.evaluate_command(old_run / "run", draw_figures=False)
    old = EXPECTED["evaluate_step_3"]
    # Every number the old code reported is unchanged; threshold sets added since come on top.
    assert {k: v for k, v in metrics.items() if k not in ("val", "test")} == {
        k: v for k, v in old.items() if k not in ("val", "test")}
    for split in ("val", "test"):
        assert {k: metrics[split][k] for k in old[split]} == old[split]
    assert {"guarded", "rate"} <= set(metrics["test"]) - set(old["test"])
