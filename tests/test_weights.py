"""Importing torchvision-named weights into the backbones (hpajax.models.weights)."""

import functools
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DATA, REPO

from hpajax import config as config_lib
from hpajax import models, steps
from hpajax.models import densenet, resnet, weights

REFERENCE = DATA / "torchvision_reference.npz"
seeded_state_dict = runpy.run_path(
    str(REPO / "experiments" / "torchvision_reference.py"))["seeded_state_dict"]


def torchvision_names_shapes(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """torchvision's state-dict keys and shapes of a model, as the reference file recorded."""
    import json

    with np.load(REFERENCE) as ref:
        return list(zip(ref[f"{name}_names"].tolist(),
                        map(tuple, json.loads(str(ref[f"{name}_shapes"])))))


def zero_variables(model, channels: int, side: int = 64) -> dict:
    """The model's variables, all zeros, without compiling it."""
    x = jax.ShapeDtypeStruct((1, side, side, channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def assert_reference_logits(name: str, model, rules: weights.ImportRules,
                            reference: str = "") -> weights.Imported:
    """Seeded weights in the names of the reference of ``name`` (``reference``, by
    default ``name``; a 1,000-class ``model``): our logits equal the reference's own,
    recorded by experiments/torchvision_reference.py (relative 1e-4)."""
    reference = reference or name
    state = seeded_state_dict(torchvision_names_shapes(reference), seed=0)
    with np.load(REFERENCE) as ref:
        shape = tuple(ref[f"{reference}_input_shape"] if f"{reference}_input_shape" in ref
                      else ref["input_shape"])
        x = np.random.default_rng(int(ref["input_seed"])).random(shape, dtype=np.float32)
        expected = ref[f"{reference}_logits"]
    variables = zero_variables(model, 3, shape[-1])
    imported = weights.import_state(state, variables, (0, 1, 2), rules, new_head=False)
    logits = jax.jit(functools.partial(model.apply, train=False))(
        {"params": imported.params, "batch_stats": imported.batch_stats}, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    return imported


def reference_param_count(name: str) -> int:
    """torch's count of the parameters of the reference of ``name``, as recorded."""
    with np.load(REFERENCE) as ref:
        return int(ref[f"{name}_num_params"])


@pytest.mark.parametrize("name, model", [
    ("resnet18", resnet.ResNet(stage_sizes=(2, 2, 2, 2), num_classes=1000)),
    ("resnet50", resnet.ResNet(stage_sizes=(3, 4, 6, 3), bottleneck=True, num_classes=1000)),
    ("densenet121", densenet.DenseNet(num_classes=1000)),
    ("densenet169", densenet.DenseNet(num_classes=1000,
                                      **densenet.VARIANTS["densenet169"])),
])
def test_imported_weights_give_torchvisions_logits(name, model):
    """Seeded weights in torchvision's names: our logits equal torchvision's own (rtol 1e-4)."""
    rules = models.import_rules(name)
    imported = assert_reference_logits(name, model, rules)
    assert not [key for key, _ in imported.skipped if not key.endswith("num_batches_tracked")]


RESNET = resnet.IMPORT_RULES


@pytest.fixture(scope="module")
def resnet18_file_state():
    return seeded_state_dict(torchvision_names_shapes("resnet18"), seed=0)


def test_a_four_channel_stem_gets_yellow_as_the_mean_of_red_and_green(resnet18_file_state):
    model = resnet.ResNet(stage_sizes=(2, 2, 2, 2))  # 28 classes
    for channels in ((0, 1, 2, 3), (1, 3)):
        variables = zero_variables(model, len(channels))
        imported = weights.import_state(resnet18_file_state, variables, channels, RESNET)
        rgb = resnet18_file_state["conv1.weight"].transpose(2, 3, 1, 0)  # [7, 7, 3, 64]
        rgby = np.concatenate([rgb, (rgb[:, :, :1] + rgb[:, :, 1:2]) / 2], axis=2)
        np.testing.assert_allclose(imported.params["conv1"]["kernel"], rgby[:, :, channels],
                                   rtol=1e-6)
    assert ("fc.weight", "the classifier is new: 28 logits") in imported.skipped
    np.testing.assert_array_equal(imported.params["fc"]["kernel"], 0)  # left as it was
    np.testing.assert_array_equal(imported.batch_stats["layer1_0"]["bn1"]["var"],
                                  resnet18_file_state["layer1.0.bn1.running_var"])


@pytest.mark.parametrize("rule, yellow", [
    ("mean_rgb", lambda rgb: rgb.sum(axis=2, keepdims=True) / 3),
    ("zeros", lambda rgb: 0 * rgb[:, :, :1]),
])
def test_the_yellow_rule_is_configurable(resnet18_file_state, rule, yellow):
    model = resnet.ResNet(stage_sizes=(2, 2, 2, 2))
    variables = zero_variables(model, 4)
    imported = weights.import_state(resnet18_file_state, variables, (0, 1, 2, 3), RESNET,
                                    yellow_init=rule)
    rgb = resnet18_file_state["conv1.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_allclose(imported.params["conv1"]["kernel"],
                               np.concatenate([rgb, yellow(rgb)], axis=2), rtol=1e-6)
    with pytest.raises(ValueError, match="config.model.yellow_init='blue'"):
        weights.import_state(resnet18_file_state, variables, (0, 1, 2, 3), RESNET,
                             yellow_init="blue")


def test_a_file_that_does_not_fit_is_refused_naming_the_tensor(resnet18_file_state):
    model = resnet.ResNet(stage_sizes=(2, 2, 2, 2))
    variables = zero_variables(model, 4)
    stray = {**resnet18_file_state, "layer9.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)}
    with pytest.raises(ValueError, match="tensor 'layer9.0.conv1.weight' fits no variable"):
        weights.import_state(stray, variables, (0, 1, 2, 3), RESNET)
    wrong = {**resnet18_file_state, "layer2.0.conv1.weight": np.zeros((128, 64, 1, 1))}
    with pytest.raises(ValueError, match=r"tensor 'layer2.0.conv1.weight' has shape \[1, 1, 64, "
                                         r"128\] in Flax layout, the backbone's is \[3, 3, 64"):
        weights.import_state(wrong, variables, (0, 1, 2, 3), RESNET)
    short = {k: v for k, v in resnet18_file_state.items() if not k.startswith("layer4.1.")}
    with pytest.raises(ValueError, match="no tensor for batch_stats/layer4_1/bn1/mean|"
                                         "no tensor for params/layer4_1/bn1/bias"):
        weights.import_state(short, variables, (0, 1, 2, 3), RESNET)
    resnet50 = resnet.ResNet(stage_sizes=(3, 4, 6, 3), bottleneck=True)
    with pytest.raises(ValueError, match="has shape|fits no variable"):
        weights.import_state(resnet18_file_state,
                             zero_variables(resnet50, 4), (0, 1, 2, 3), RESNET)


def test_torchvisions_older_densenet_names_are_read():
    state = seeded_state_dict(torchvision_names_shapes("densenet121"), seed=0)
    older = {key.replace("norm1", "norm.1").replace("conv2", "conv.2"): value
             for key, value in state.items()}
    assert older.keys() != state.keys()
    model = densenet.DenseNet()
    variables = zero_variables(model, 4)
    new, old = (weights.import_state(s, variables, (0, 1, 2, 3), densenet.IMPORT_RULES)
                for s in (state, older))
    assert jax.tree.all(jax.tree.map(np.array_equal, new.params, old.params))
    assert len(new.loaded) == len(old.loaded) > 300


def test_an_unreadable_file_is_a_clear_error(tmp_path):
    (tmp_path / "w.safetensors").write_text("not safetensors")
    with pytest.raises(ValueError, match="init_from=.*w.safetensors: cannot read it"):
        weights.read_safetensors(tmp_path / "w.safetensors")


@pytest.mark.parametrize("name, init_from, normalize, expected", [
    ("resnet50", "w.safetensors", "", "imagenet"),
    ("inception_v3", "w.safetensors", "", "inception"),  # torchvision's transform_input
    ("xception", "w.safetensors", "", "inception"),
    ("vit_base_patch16", "w.safetensors", "", "inception"),
    ("vit_base_patch16", "", "", "unit"),  # from scratch: the seed's ÷255
    ("vit_base_patch16", "w.safetensors", "imagenet", "imagenet"),  # set: kept
])
def test_the_weights_choose_the_input_normalization(name, init_from, normalize, expected):
    """With init_from and no model.normalize, the statistics of the backbone's reference
    weights: mean = std = 0.5 per channel for "inception", torchvision's for "imagenet"."""
    config = config_lib.base_config()
    config.model = config_lib.model_config(name)
    config.model.init_from, config.model.normalize = init_from, normalize
    config.data.channels = (1, 3)
    assert steps.normalization_name(config) == expected
    norm = steps.input_normalization(config)
    if expected == "inception":
        np.testing.assert_array_equal(norm, [[0.5, 0.5], [0.5, 0.5]])
    elif expected == "imagenet":
        np.testing.assert_allclose(norm, [[0.456, 0.4705], [0.224, 0.2265]])
    config.model.normalize = "half"
    with pytest.raises(ValueError, match="config.model.normalize='half': choose one of unit"):
        steps.normalization_name(config)
