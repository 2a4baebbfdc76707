"""experiments/compare_backbones.py end to end: one model, both points, the table, a rerun."""

import json
import subprocess

from conftest import PYTHON, REPO


def run(workdir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "experiments/compare_backbones.py", f"--workdir={workdir}", "--models=seed_cnn",
         "--num_samples=48", "--image_size=32", "--checkpoint_every=4", "--steps=4",
         "--narrow_model", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600)


def test_a_run_stopped_before_the_equal_steps_point_resumes_to_it(tmp_path):
    """--max_steps stands in for the clock (deterministic): stopped at 2, resumed to 4,
    both checkpoints evaluated on the test split and tabled; a rerun trains nothing.

    4 is the equal-steps point on a checkpoint grid of 4 (the script's runs use the
    config's 100), and 2, off that grid, is where a clock's SIGTERM leaves a run: the
    trainer saves the step it stopped at, and that checkpoint is the one evaluated at
    equal wall-clock."""
    r = run(tmp_path, "--max_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "seed_cnn" / "compare.json").read_text())
    assert result["steps_in_time"] == 2
    assert result["equal_time"]["step"] == 2 and result["equal_steps"]["step"] == 4
    assert (tmp_path / "seed_cnn" / "report_step2" / "metrics.json").is_file()
    assert (tmp_path / "seed_cnn" / "report_step4" / "metrics.json").is_file()
    table = (tmp_path / "comparison.md").read_text()
    assert f"| seed_cnn | {result['params']:,} | 2 |" in table
    saved = json.loads((tmp_path / "seed_cnn" / "config.json").read_text())
    assert saved["model"]["filters"] == [8, 16]  # --narrow_model reached the trainer
    log = (tmp_path / "seed_cnn" / "train.log").read_text()
    assert "resumed from" in log and "at step 2" in log
    r = run(tmp_path, "--max_steps=2")
    assert r.returncode == 0 and (tmp_path / "seed_cnn" / "train.log").read_text() == log


def test_steps_off_the_checkpoint_grid_are_refused(tmp_path):
    r = run(tmp_path, "--steps=6")
    assert r.returncode != 0 and "--steps=6: not a multiple of 4" in r.stderr
    r = run(tmp_path, "--steps=150", "--checkpoint_every=0")  # the config's grid
    assert r.returncode != 0 and "--steps=150: not a multiple of 100" in r.stderr
    assert not (tmp_path / "seed_cnn").exists()
