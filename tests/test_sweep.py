"""experiments/sweep.py, the seed's input-size and kernel-size sweeps, end to end at toy size."""

import csv
import json
import runpy
import subprocess

from conftest import PYTHON, REPO

from hpajax import classes


def test_sweep_quick_trains_each_config_and_writes_one_table(tmp_path):
    """The input-size sweep's three toy runs (figures, tested in test_figures.py, left out),
    one table; the kernel-size runs differ only in their config, checked below.

    The input-size sweep rather than the kernel-size one: the same runner, loop and table at
    80/128/200 px instead of three 200 px runs with kernels up to 7, and it also trains
    below the store's side (200 px), each run resizing on the device to its own config's."""
    r = subprocess.run([PYTHON, str(REPO / "experiments" / "sweep.py"), "--quick",
                        "--sweeps=input_size", f"--workdir={tmp_path}", "--num_samples=48",
                        "--total_steps=2", "--narrow_model", "--nofigures"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    sizes = {"size80_k3": 80, "size128_k3": 128, "size200_k3": 200}
    names = list(sizes)
    for name in names:
        assert (tmp_path / name / "report" / "per_class.csv").is_file()
        assert not list((tmp_path / name / "report").glob("*.png"))  # --nofigures
        saved = json.loads((tmp_path / name / "config.json").read_text())
        assert saved["data"]["input_size"] == sizes[name] and saved["data"]["image_size"] == 200
    table = list(csv.reader(open(tmp_path / "comparison.csv")))
    assert table[0][1:4] == ["size80_k3 precision", "size80_k3 recall", "size80_k3 f1"]
    assert len(table[0]) == 1 + 3 * len(names)
    assert [row[0] for row in table[1:29]] == list(classes.CLASS_NAMES)
    md = (tmp_path / "comparison.md").read_text()
    assert all(f"| {name} | {size} | 3 |" in md for name, size in sizes.items())


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
