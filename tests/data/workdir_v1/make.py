"""Makes tests/data/workdir_v1 with the code before issue 11's move."""
import json, pathlib, shutil, sys
sys.path.insert(0, "tests")
from conftest import synthetic_store, tiny_config
from hpajax import train, predict, logs

root = pathlib.Path(sys.argv[1])
shutil.rmtree(root, ignore_errors=True)
store = synthetic_store(root / "build", 32, 80, seed=3)
shutil.copytree(store, root / "store")
shutil.rmtree(root / "build")
over = {"keep_checkpoints": 1}
cfg = tiny_config(root / "store", total_steps=3, **over)
train.train_and_evaluate(cfg, str(root / "run"))
# what the old code reports for this workdir
shutil.copytree(root / "run", root / "scratch")
metrics = predict.evaluate_run(root / "scratch", draw_figures=False)
cfg6 = tiny_config(root / "store", total_steps=6, **over)
train.train_and_evaluate(cfg6, str(root / "scratch"))
recs = logs.read_records(root / "scratch" / "metrics.jsonl")
expected = {"evaluate_step_3": metrics,
            "checkpoint_sha256": {r["step"]: r["params_sha256"] for r in recs if r["split"] == "checkpoint"},
            "val": [r for r in recs if r["split"] == "val"]}
shutil.rmtree(root / "scratch")
(root / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
