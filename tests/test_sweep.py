"""experiments/sweep.py, the seed's input-size and kernel-size sweeps, end to end at toy size."""

import csv
import subprocess

from conftest import PYTHON, REPO

from hpajax import classes


def test_sweep_quick_trains_each_config_and_writes_one_table(tmp_path):
    """Five toy runs (the figures, tested in test_figures.py, left out), one table."""
    r = subprocess.run([PYTHON, str(REPO / "experiments" / "sweep.py"), "--quick",
                        f"--workdir={tmp_path}", "--num_samples=48", "--total_steps=2",
                        "--narrow_model", "--nofigures"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    names = ["size80_k3", "size128_k3", "size200_k3", "size200_k5", "size200_k7"]
    for name in names:
        assert (tmp_path / name / "report" / "per_class.csv").is_file()
        assert not list((tmp_path / name / "report").glob("*.png"))  # --nofigures
    table = list(csv.reader(open(tmp_path / "comparison.csv")))
    assert table[0][1:4] == ["size80_k3 precision", "size80_k3 recall", "size80_k3 f1"]
    assert len(table[0]) == 1 + 3 * len(names)
    assert [row[0] for row in table[1:29]] == list(classes.CLASS_NAMES)
    md = (tmp_path / "comparison.md").read_text()
    assert all(f"| {name} |" in md for name in names)
