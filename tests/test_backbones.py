"""The torchvision backbones through the trainer's own loop and commands, at toy size."""

import functools
import json
import pathlib
import signal

import jax
import numpy as np
import pytest
from conftest import PYTHON, predict_outside, synthetic_store, tiny_config
from test_faults import run_until

from hpajax import commands, config as config_lib, export, inference, models, train
from hpajax import steps as steps_lib
from hpajax.data import open_store, pipeline
from hpajax.data.run_data import open_run_data

SIZE = 32  # the backbones pool 32x down: one pixel left before the global average
# ResNet-18's training steps run four times slower at LLVM's level 0 than at 1: more than
# the level saves on their compilation.
pytestmark = pytest.mark.usefixtures("optimized")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> pathlib.Path:
    """64 synthetic samples at 32 px, converted and split 70/10/20."""
    return synthetic_store(tmp_path_factory.mktemp("data"), 64, SIZE)


def backbone_config(store, name, **overrides):
    """tiny.py with the backbone ``name``, then the flattened ``overrides``."""
    config = tiny_config(store)
    config.model = config_lib.model_config(name)
    config.update_from_flattened_dict(overrides)
    return config


def checkpoint_shas(workdir) -> list[str]:
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r["params_sha256"] for r in map(json.loads, lines) if r["split"] == "checkpoint"]


def assert_exports_give_predicts_probabilities(name: str, run: pathlib.Path,
                                               store: pathlib.Path, tmp_path: pathlib.Path,
                                               count: int) -> None:
    """``run`` exported, its StableHLO and ONNX files run outside hpajax (as ``name``) at two
    batch sizes on the store's first ``count`` images: predict's probabilities to 1e-5."""
    export.export_command(run, output_dir=tmp_path / "export")
    images = open_store(store).images[:count].read().result()
    outside = predict_outside(images, {name: tmp_path / "export"}, tmp_path)
    want = np.load(commands.predict_command(run, store, tmp_path / "pred")
                   / "probabilities.npy")[:count]
    assert len(outside) == 4
    for key, got in outside.items():
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=key)


def test_every_backbone_is_registered():
    """Each name of the one list builds a model of its module, which orders its layers."""
    for name, (module_name, _) in config_lib.BACKBONES.items():
        module = models.module(name)
        assert module.__name__ == f"hpajax.models.{module_name}"
        assert type(models.create(config_lib.model_config(name))).__module__ == module.__name__
        assert name in module.VARIANTS and callable(module.layer_key)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """ResNet-18 weights in torchvision's names (seeded, as test_weights.py's), and the file."""
    from safetensors.numpy import save_file

    from test_weights import seeded_state_dict, torchvision_names_shapes

    state = seeded_state_dict(torchvision_names_shapes("resnet18"), seed=0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.safetensors"
    save_file(state, str(path))
    return path, state


def pretrained_config(store, weights_file, **overrides):
    """ResNet-18 from the seeded file, with head dropout; one set of compiled programs."""
    config = backbone_config(store, "resnet18", **{"model.dropout": 0.2, **overrides})
    config.model.init_from = str(weights_file[0])
    return config


@pytest.fixture(scope="module")
def pretrained_run(store, weights_file, tmp_path_factory) -> pathlib.Path:
    """ResNet-18 from the seeded file, 6 steps in one go: the uninterrupted reference."""
    run = tmp_path_factory.mktemp("full")
    train.train_and_evaluate(pretrained_config(store, weights_file), str(run))
    return run


def test_resnet18_from_torchvision_weights_trains_resumes_exactly_and_evaluates(
        store, weights_file, pretrained_run, tmp_path):
    """init_from, then 3 steps, stop, rerun to 6 == 6 uninterrupted; evaluate and predict."""
    train.train_and_evaluate(pretrained_config(store, weights_file, total_steps=3),
                             str(tmp_path / "split"))
    train.train_and_evaluate(pretrained_config(store, weights_file), str(tmp_path / "split"))
    assert checkpoint_shas(pretrained_run) == checkpoint_shas(tmp_path / "split")
    assert len(checkpoint_shas(pretrained_run)) == 2

    run = pretrained_run
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["normalize"] == "imagenet"  # the weights' input statistics
    state = weights_file[1]
    listed = (run / "init_from.txt").read_text().splitlines()
    assert len(listed) == len(state)  # every tensor of the file, loaded or skipped
    assert "skipped fc.weight: the classifier is new: 28 logits" in listed
    assert sum(line.startswith("loaded ") for line in listed) == len(
        [k for k in state if not k.startswith("fc.") and "num_batches" not in k])

    metrics = commands.evaluate_command(run, draw_figures=False)
    assert metrics["step"] in (3, 6) and metrics["test"]["samples"] > 0
    out = commands.predict_command(run, store, tmp_path / "pred")
    assert (out / "submission.csv").read_text().startswith("Id,Predicted\n")
    assert type(inference.restore(run).steps.model).__name__ == "ResNet"


def test_resnet18_exported_gives_predicts_probabilities_outside_hpajax(store, pretrained_run,
                                                                       tmp_path):
    """ImageNet-normalized ResNet-18 with head dropout (off at inference): the StableHLO and
    ONNX files at two batch sizes, within float32 rounding (observed 2e-7) of predict."""
    assert_exports_give_predicts_probabilities("resnet18", pretrained_run, store, tmp_path, 7)


def test_sigkill_mid_run_then_resume_is_exact(store, weights_file, pretrained_run, tmp_path,
                                              capsys):
    """The same run as a process killed right after step 6's evaluation, while its
    checkpoint is written (step 3's, written asynchronously, is complete by then): the
    relaunch resumes from a checkpoint, not from the file, and ends with the uninterrupted
    run's weights."""
    cmd = [PYTHON, "-m", "hpajax.main", "train", "--config=experiments/configs/tiny.py:resnet18",
           f"--config.data.store={store}", f"--workdir={tmp_path}",
           f"--config.model.init_from={weights_file[0]}", "--config.model.dropout=0.2"]
    rc, _ = run_until(cmd, "step 6 val", signal.SIGKILL)
    assert rc == -signal.SIGKILL
    train.train_and_evaluate(pretrained_config(store, weights_file), str(tmp_path))  # cmd's
    assert "resumed from" in capsys.readouterr().out
    assert checkpoint_shas(tmp_path) == checkpoint_shas(pretrained_run)


def test_a_file_of_another_backbone_stops_the_run_before_anything_compiles(
        store, weights_file, tmp_path):
    """The file is checked against the model's shapes, not its initialized weights."""
    bad = backbone_config(store, "resnet34")
    bad.model.init_from = str(weights_file[0])
    compiled = []
    listener = lambda event, seconds, **_: compiled.append(event)  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        with pytest.raises(ValueError, match="init_from=.*no tensor for"):
            train.train_and_evaluate(bad, str(tmp_path))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert "/jax/core/compile/backend_compile_duration" not in compiled
    assert not (tmp_path / "metrics.jsonl").exists()


def test_imagenet_normalization_is_what_the_model_sees(store, weights_file):
    """ImageNet's statistics per channel, yellow's the mean of red's and green's."""
    config = pretrained_config(store, weights_file)
    data = open_run_data(config.data)
    steps = train.build_steps(config, data)
    state = steps_lib.init_state(steps)
    batch = next(iter(pipeline.eval_dataset(data.store, data.rows("val"), batch_size=16)))
    probs = steps.eval(state, steps_lib.to_device(steps, batch))["probs"]
    mean = np.array([0.485, 0.456, 0.406, 0.4705])
    std = np.array([0.229, 0.224, 0.225, 0.2265])
    x = ((batch["image"] / 255.0 - mean) / std).astype(np.float32)
    logits = jax.jit(functools.partial(steps.model.apply, train=False))(
        {"params": state.params, "batch_stats": state.batch_stats}, x)
    np.testing.assert_allclose(probs, jax.nn.sigmoid(logits), atol=1e-5)
