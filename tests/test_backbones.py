"""The torchvision backbones through the trainer's own loop and commands, at toy size."""

import json
import pathlib

import jax
import numpy as np
import pytest
from conftest import synthetic_store, tiny_config

from hpajax import commands, config as config_lib, inference, models, train
from hpajax import steps as steps_lib
from hpajax.data import pipeline
from hpajax.data.run_data import open_run_data

SIZE = 32  # the backbones pool 32x down: one pixel left before the global average


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


def test_every_backbone_is_registered():
    for name in config_lib.BACKBONES:
        assert type(models.create(config_lib.model_config(name))).__name__ in {
            "ResNet", "DenseNet"}


def test_resnet18_trains_resumes_exactly_and_evaluates(store, tmp_path):
    """3 steps, stop, rerun to 6 == 6 uninterrupted; then evaluate and predict."""
    full = backbone_config(store, "resnet18", **{"model.dropout": 0.2})
    train.train_and_evaluate(full, str(tmp_path / "full"))
    train.train_and_evaluate(backbone_config(store, "resnet18", total_steps=3,
                                             **{"model.dropout": 0.2}), str(tmp_path / "split"))
    train.train_and_evaluate(full, str(tmp_path / "split"))
    assert checkpoint_shas(tmp_path / "full") == checkpoint_shas(tmp_path / "split")
    assert len(checkpoint_shas(tmp_path / "full")) == 2

    metrics = commands.evaluate_command(tmp_path / "full", draw_figures=False)
    assert metrics["step"] in (3, 6) and metrics["test"]["samples"] > 0
    out = commands.predict_command(tmp_path / "full", store, tmp_path / "pred")
    assert (out / "submission.csv").read_text().startswith("Id,Predicted\n")
    restored = inference.restore(tmp_path / "full")
    assert type(restored.steps.model).__name__ == "ResNet"


def test_init_from_loads_a_torchvision_file_before_the_first_step(store, tmp_path):
    """ResNet-18 weights in torchvision's names (seeded, as test_weights.py's) start a run."""
    from safetensors.numpy import save_file

    from test_weights import seeded_state_dict, torchvision_names_shapes

    state = seeded_state_dict(torchvision_names_shapes("resnet18"), seed=0)
    save_file(state, str(tmp_path / "resnet18.safetensors"))
    config = backbone_config(store, "resnet18", total_steps=2, eval_every=2,
                             checkpoint_every=2)
    config.model.init_from = str(tmp_path / "resnet18.safetensors")
    train.train_and_evaluate(config, str(tmp_path / "run"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["normalize"] == "imagenet"  # the weights' input statistics
    listed = (tmp_path / "run" / "init_from.txt").read_text().splitlines()
    assert len(listed) == len(state)  # every tensor of the file, loaded or skipped
    assert "skipped fc.weight: the classifier is new: 28 logits" in listed
    assert sum(line.startswith("loaded ") for line in listed) == len(
        [k for k in state if not k.startswith("fc.") and "num_batches" not in k])

    bad = backbone_config(store, "resnet34")
    bad.model.init_from = str(tmp_path / "resnet18.safetensors")
    with pytest.raises(ValueError, match="init_from=.*no tensor for"):
        train.train_and_evaluate(bad, str(tmp_path / "bad"))
    assert not (tmp_path / "bad" / "checkpoints").exists() or not any(
        (tmp_path / "bad" / "checkpoints").iterdir())


def test_imagenet_normalization_is_what_the_model_sees(store):
    """Red, green, yellow at ImageNet's statistics (yellow's: the mean of red's and green's)."""
    config = backbone_config(store, "resnet18", **{"model.normalize": "imagenet",
                                                   "data.channels": (0, 1, 3)})
    data = open_run_data(config.data)
    steps = train.build_steps(config, data)
    state = steps_lib.init_state(steps)
    batch = next(iter(pipeline.eval_dataset(data.store, data.rows("val"), batch_size=16,
                                            channels=(0, 1, 3))))
    probs = steps.eval(state, steps_lib.to_device(steps, batch))["probs"]
    mean, std = np.array([0.485, 0.456, 0.4705]), np.array([0.229, 0.224, 0.2265])
    x = ((batch["image"] / 255.0 - mean) / std).astype(np.float32)
    logits = steps.model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                               train=False)
    np.testing.assert_allclose(probs, jax.nn.sigmoid(logits), atol=1e-5)
