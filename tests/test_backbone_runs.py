"""The new kinds of backbone through the trainer's commands: a ViT (no BatchNorm, a file's
position grid resized, layer-wise LR decay) and an EfficientNet (stochastic depth)."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_store, tiny_config
from test_backbones import assert_exports_give_predicts_probabilities, checkpoint_shas
from test_weights import seeded_state_dict, torchvision_names_shapes

from hpajax import commands, config as config_lib, inference, train
from hpajax import steps as steps_lib
from hpajax.models import efficientnet

SIZE = 32  # a ViT/16 sees a 2x2 grid of patches
pytestmark = pytest.mark.usefixtures("optimized")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """64 synthetic samples at 32 px, converted and split 70/10/20."""
    return synthetic_store(tmp_path_factory.mktemp("data"), 64, SIZE)


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory):
    """ViT-S/16 weights in timm's names for 224 px (a 14x14 grid), seeded."""
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("weights") / "vit_small.safetensors"
    save_file(seeded_state_dict(torchvision_names_shapes("vit_small_patch16"), seed=0),
              str(path))
    return path


def vit_config(store, vit_file, **overrides):
    """ViT-S/16 from the file, AdamW with warm-up + cosine and layer-wise decay."""
    config = tiny_config(store, **{"optimizer.schedule": "cosine",
                                   "optimizer.lr_warmup_steps": 2})
    config.model = config_lib.model_config("vit_small_patch16")
    config.model.init_from = str(vit_file)
    config.optimizer.layer_decay = 0.75
    config.update_from_flattened_dict(overrides)
    return config


@pytest.fixture(scope="module")
def vit_run(store, vit_file, tmp_path_factory):
    """6 steps in one go: the uninterrupted reference."""
    run = tmp_path_factory.mktemp("vit")
    train.train_and_evaluate(vit_config(store, vit_file), str(run))
    return run


def test_a_vit_without_batchnorm_trains_resumes_exactly_evaluates_and_predicts(
        store, vit_file, vit_run, tmp_path):
    """Stopped at 3 (inside the warm-up) and resumed to 6 == 6 uninterrupted, with the
    layer-wise decay's optimizer state; no BatchNorm statistics anywhere; the file's 14x14
    grid resized to the run's 2x2 and said so."""
    train.train_and_evaluate(vit_config(store, vit_file, total_steps=3), str(tmp_path))
    train.train_and_evaluate(vit_config(store, vit_file), str(tmp_path))
    assert checkpoint_shas(tmp_path) == checkpoint_shas(vit_run)
    assert len(checkpoint_shas(vit_run)) == 2

    listed = (vit_run / "init_from.txt").read_text().splitlines()
    assert "loaded  pos_embed ([1, 197, 384] fitted to [1, 5, 384])" in listed
    assert "skipped head.weight: the classifier is new: 28 logits" in listed
    restored = inference.restore(vit_run)
    assert restored.state.batch_stats == {} and restored.config.model.normalize == "inception"
    metrics = commands.evaluate_command(vit_run, draw_figures=False)
    assert metrics["test"]["samples"] > 0
    out = commands.predict_command(vit_run, store, tmp_path / "pred")
    assert (out / "submission.csv").read_text().startswith("Id,Predicted\n")


def test_a_vit_exported_gives_predicts_probabilities_outside_hpajax(store, vit_run, tmp_path):
    """StableHLO and ONNX files of a model without BatchNorm, within float32 rounding of
    predict."""
    assert_exports_give_predicts_probabilities("vit", vit_run, store, tmp_path, 5)


def test_recalibration_runs_without_stochastic_depth():
    """An EfficientNet with stochastic depth 0.5 and dropout 0.5 (two stages of two
    blocks): its BatchNorm moments, computed in training mode by the trainer's
    moments_step, equal those of the same weights without either."""
    stages = ((1, 3, 1, 8, 8, 2), (6, 5, 2, 8, 16, 2))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 4)), jnp.uint8)
    moments = []
    for rate in (0.5, 0.0):
        model = efficientnet.EfficientNet(stages=stages, drop_path=rate, dropout=rate,
                                          bn_momentum=0.0)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 4)), train=False)
        moments.append(jax.jit(lambda params, stats, model=model: steps_lib.moments_step(
            SimpleNamespace(params=params, batch_stats=stats), {"image": images},
            model=model, size=32))(variables["params"], variables["batch_stats"]))
    assert moments[0].keys() == moments[1].keys() and len(moments[0]) > 10
    for key in moments[0]:
        np.testing.assert_array_equal(moments[0][key], moments[1][key], err_msg=str(key))
