"""experiments/bench_predict.py at a toy size: one JSON line per engine, batch and model."""

import importlib.util
import json
import subprocess

from conftest import PYTHON, REPO


def test_bench_predict_times_every_engine_with_positive_rates():
    torch = importlib.util.find_spec("torch") is not None  # .ci/run installs its CPU build
    r = subprocess.run([PYTHON, "experiments/bench_predict.py", "--models=seed_cnn",
                        "--sizes=80", "--batches=1,3", "--repeats=1",
                        *([f"--torch_python={PYTHON}"] if torch else [])],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert all(d["bench"] == "predict" for d in lines) and lines[0]["figure"] == "machine"
    rates = {(d["engine"], d["batch"]): d["img_per_s"] for d in lines if "img_per_s" in d}
    engines = ("xla", "stablehlo", "onnx", *(("torch",) if torch else ()))
    assert set(rates) == {(e, b) for e in engines for b in (1, 3)}
    assert all(rate > 0 for rate in rates.values())
    assert [d for d in lines if "skipped" in d] == ([] if torch else [
        {"bench": "predict", "engine": "torch", "model": "seed_cnn", "size": 80,
         "skipped": "no --torch_python / --torchvision_python for this model"}])
