"""The README's main job and the data benchmark, end to end at tiny sizes."""

import json
import re
import subprocess

import numpy as np
from conftest import PYTHON, REPO

from hpajax import demo
from hpajax.data import open_store


def _demo(workdir):
    return subprocess.run([PYTHON, "-m", "hpajax.main", "demo", f"--workdir={workdir}",
                           "--num_samples=60", "--image_size=80", "--workers=2",
                           "--train_steps=4"],
                          capture_output=True, text=True, cwd=REPO)


def test_demo_generates_converts_splits_trains_and_tests_then_reuses(tmp_path, capsys):
    """The command line, then the same demo again in this process (what the command runs)."""
    r = _demo(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "samples    60 x 80x80x4 uint8 (red, green, blue, yellow)" in r.stdout
    assert "step 4/4" in r.stdout
    assert "test split, best checkpoint (step 4): macro-F1" in r.stdout
    assert (tmp_path / "run" / "checkpoints" / "4").is_dir()
    assert "split 'default'" in r.stdout and "Nucleoplasm" in r.stdout
    store = open_store(tmp_path / "store")
    parts = store.split("default")
    assert [len(p) for p in parts.values()] == [42, 6, 12]
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(60))
    demo.run(tmp_path, num_samples=60, image_size=80, seed=0, workers=2, train_steps=4)
    again = capsys.readouterr().out
    assert "reusing the synthetic set" in again and "reusing the saved split" in again
    assert "[5/5] reusing the report of the best checkpoint (step 4)" in again
    assert "resumed from" in again and "at step 4" in again
    result = [line for line in r.stdout.splitlines() if line.startswith("test split")]
    assert result == [line for line in again.splitlines() if line.startswith("test split")]
    assert re.fullmatch(r"demo done in \d+m\d\ds; everything is in .+", again.splitlines()[-1])


def test_bench_data_prints_one_json_line_per_figure(tmp_path):
    r = subprocess.run([PYTHON, str(REPO / "experiments" / "bench_data.py"),
                        f"--workdir={tmp_path}", "--num_samples=96", "--image_size=32",
                        "--batches=2", "--codecs=zstd1", "--workers=0",
                        "--remote_delays_ms=20"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    figures = {(d["figure"], d.get("impl"), d.get("workers")) for d in lines}
    assert {("memcpy", None, None), ("convert", "pil_loop_1proc", None),
            ("convert", "hpajax", 1), ("convert", "hpajax", 2),
            ("pipeline", "store", 0), ("pipeline", "png_quads", 0),
            ("pipeline_s3", None, None)} <= figures
    assert all(d["bench"] == "data" for d in lines)
    [remote] = [d for d in lines if d["figure"] == "pipeline_s3"]
    assert remote["delay_ms"] == 20 and remote["s3_samples_per_s"] > 0
