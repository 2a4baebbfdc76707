"""``python -m hpajax.main``'s command line: ``--config.model.name`` brings its model's block,
and a failing command says why in one line on stderr, with no library chatter above it."""

import json
import subprocess

from conftest import PYTHON, REPO

from hpajax import config as config_lib

TINY = f"--config={REPO / 'experiments' / 'configs' / 'tiny.py'}"
# main's flag parsing alone, printing the model block it gives.
PARSE = ("import json, sys\nfrom hpajax import main\nmain.FLAGS(sys.argv)\n"
         "print(json.dumps(main.FLAGS.config.model.to_dict()))")


def run_main(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "hpajax.main", "train", TINY,
                           f"--workdir={tmp_path / 'run'}", *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)


def test_a_model_name_brings_the_fields_of_its_block(tmp_path):
    """The README's pair on the seed CNN's config: a backbone's name, then its weights."""
    r = subprocess.run([PYTHON, "-c", PARSE, "train", TINY, "--config.model.dtype=bfloat16",
                        "--config.model.name", "resnet18",
                        "--config.model.init_from=w.safetensors", "--config.model.dropout=0.25"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    want = config_lib.model_config("resnet18")
    want.update(dtype="bfloat16", init_from="w.safetensors", dropout=0.25)
    assert json.loads(r.stdout.splitlines()[-1]) == want.to_dict()


def test_a_field_of_another_model_is_refused_in_one_line_naming_it(tmp_path):
    r = run_main(tmp_path, "--config.model.init_from=w.safetensors")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"error: --config.model.init_from (config file {TINY.split('=')[1]}): not a field of "
        f"the seed_cnn model block, but of {', '.join(config_lib.BACKBONES)}'s: add "
        "--config.model.name=resnet18"]
    assert not (tmp_path / "run").exists()


def test_a_failing_command_prints_its_error_alone(tmp_path):
    """No INFO line of JAX's backends (``Unable to initialize backend 'tpu'``) above it."""
    r = run_main(tmp_path, f"--config.data.store={tmp_path / 'missing'}")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"train: error: {tmp_path / 'missing'} is not a complete hpajax store: no metadata.json"]
