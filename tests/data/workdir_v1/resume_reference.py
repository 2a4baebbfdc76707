"""Resumes workdir_v1's run from step 3 to 6 with the code before issue 11's move and saves
the weights it reached (``step6.npz``: each leaf of params and batch_stats under its tree
path) and its step-6 validation record (``step6_val.json``).

The resumed steps run with the geometric augmentation off (``RESAMPLING_OFF``, as the test
resumes): its bilinear sampler can read a neighbouring pixel on another CPU (another
compilation rounds the sampling coordinate differently in the index and in the weight),
which moves thousands of weights by a whole Adam step; brightness, the data order and
everything else stay as the run saved them.

Run from a checkout of commit 400326b (its hpajax first on the path):
  PYTHONPATH=. python /path/to/tests/data/workdir_v1/resume_reference.py \
      /path/to/tests/data/workdir_v1
"""
import json, pathlib, shutil, sys, tempfile
import jax, numpy as np
sys.path.insert(0, "tests")
from conftest import tiny_config
from hpajax import checkpointing, logs, train

old = pathlib.Path(sys.argv[1]).resolve()
scratch = pathlib.Path(tempfile.mkdtemp())
shutil.copytree(old / "store", scratch / "store")
shutil.copytree(old / "run", scratch / "run")
config_file = scratch / "run" / "config.json"
saved = json.loads(config_file.read_text())
saved["data"]["store"] = str(scratch / "store")
config_file.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
reached = {}
digest = checkpointing.params_sha256
def keeping(params, batch_stats):
    for name, tree in (("params", params), ("batch_stats", batch_stats)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
            reached[name + jax.tree_util.keystr(path)] = np.asarray(leaf)
    return digest(params, batch_stats)
checkpointing.params_sha256 = keeping
# tests/conftest.py's RESAMPLING_OFF, which 400326b's conftest lacks
RESAMPLING_OFF = {f"augment.{op}": False for op in ("rotate", "zoom", "hflip", "vflip")}
train.train_and_evaluate(tiny_config(scratch / "store", total_steps=6, keep_checkpoints=1,
                                     **RESAMPLING_OFF), str(scratch / "run"))
val = [r for r in logs.read_records(scratch / "run" / "metrics.jsonl") if r["split"] == "val"]
np.savez(old / "step6.npz", **reached)
(old / "step6_val.json").write_text(json.dumps(val[-1], indent=1, sort_keys=True) + "\n")
shutil.rmtree(scratch)
