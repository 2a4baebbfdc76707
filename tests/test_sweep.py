"""experiments/sweep.py, the seed's input-size and kernel-size sweeps, end to end at toy size."""

import csv
import runpy
import subprocess

from conftest import PYTHON, REPO

from hpajax import classes


def test_sweep_quick_trains_each_config_and_writes_one_table(tmp_path):
    """The kernel-size sweep's three toy runs (figures, tested in test_figures.py, left out),
    one table; the input-size runs differ only in their config, checked below."""
    r = subprocess.run([PYTHON, str(REPO / "experiments" / "sweep.py"), "--quick",
                        "--sweeps=kernel_size", f"--workdir={tmp_path}", "--num_samples=48",
                        "--total_steps=2", "--narrow_model", "--nofigures"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    names = ["size200_k3", "size200_k5", "size200_k7"]
    for name in names:
        assert (tmp_path / name / "report" / "per_class.csv").is_file()
        assert not list((tmp_path / name / "report").glob("*.png"))  # --nofigures
    table = list(csv.reader(open(tmp_path / "comparison.csv")))
    assert table[0][1:4] == ["size200_k3 precision", "size200_k3 recall", "size200_k3 f1"]
    assert len(table[0]) == 1 + 3 * len(names)
    assert [row[0] for row in table[1:29]] == list(classes.CLASS_NAMES)
    md = (tmp_path / "comparison.md").read_text()
    assert all(f"| {name} |" in md for name in names)


def test_both_sweeps_give_the_seeds_five_configurations():
    runs = runpy.run_path(str(REPO / "experiments" / "sweep.py"))["runs"]
    quick = {name: (c.data.input_size, c.model.kernel_size, tuple(c.data.channels))
             for name, c in runs(["input_size", "kernel_size"], quick=True).items()}
    assert quick == {"size80_k3": (80, 3, (0, 1, 2)), "size128_k3": (128, 3, (0, 1, 2)),
                     "size200_k3": (200, 3, (0, 1, 2)), "size200_k5": (200, 5, (0, 1, 2)),
                     "size200_k7": (200, 7, (0, 1, 2))}
    full = runs(["input_size", "kernel_size"], quick=False)
    assert [(c.data.input_size, c.model.kernel_size) for c in full.values()] == [
        (128, 3), (256, 3), (512, 3), (512, 5), (512, 7)]
