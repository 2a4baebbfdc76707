"""The optimizer: weight decay on every parameter (the seed's) or on the kernels only; the
head's warm-up."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hpajax import config as config_lib
from hpajax import steps
from hpajax.steps import make_optimizer

PARAMS = {"conv1": {"kernel": jnp.ones((3, 3, 4, 8))},
          "bn1": {"scale": jnp.ones(8), "bias": jnp.ones(8)},
          "fc": {"kernel": jnp.ones((8, 28)), "bias": jnp.ones(28)}}


def first_update(decay: str) -> dict:
    """The first update with zero gradients: Adam's part is 0, what is left is the decay."""
    cfg = config_lib.base_config().optimizer
    cfg.decay, cfg.weight_decay = decay, 0.01
    tx = make_optimizer(cfg)
    zeros = {k: {n: jnp.zeros_like(v) for n, v in layer.items()} for k, layer in PARAMS.items()}
    updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
    return updates


def test_all_decays_every_parameter_and_kernels_only_the_kernels():
    lr = config_lib.base_config().optimizer.learning_rate
    decayed = -lr * 0.01  # -lr * weight_decay * parameter, the parameters being 1
    for layer, leaves in first_update("all").items():
        for update in leaves.values():
            np.testing.assert_allclose(update, decayed, rtol=1e-6)
    kernels = first_update("kernels")
    np.testing.assert_allclose(kernels["conv1"]["kernel"], decayed, rtol=1e-6)
    np.testing.assert_allclose(kernels["fc"]["kernel"], decayed, rtol=1e-6)
    for layer, name in (("bn1", "scale"), ("bn1", "bias"), ("fc", "bias")):
        np.testing.assert_array_equal(kernels[layer][name], 0.0)


def test_an_unknown_choice_is_refused():
    cfg = ml_collections.ConfigDict(dict(config_lib.base_config().optimizer, decay="bn"))
    with pytest.raises(ValueError, match="config.optimizer.decay='bn'"):
        make_optimizer(cfg)


@pytest.mark.parametrize("scale", [0.0, 0.1])
def test_the_head_warms_up_with_the_backbone_scaled_then_all_train_as_adamw(scale):
    """First 2 steps: backbone updates are optax.adamw's x scale, the head's adamw's; then all
    are adamw's (the backbone's moments kept accumulating meanwhile)."""
    cfg = config_lib.base_config().optimizer
    cfg.head_warmup_steps, cfg.head_warmup_scale = 2, scale
    tx = make_optimizer(cfg)
    reference = optax.adamw(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                            weight_decay=cfg.weight_decay)
    state, ref_state = tx.init(PARAMS), reference.init(PARAMS)
    rng = np.random.default_rng(0)
    for step in range(4):
        grads = {k: {n: jnp.asarray(rng.normal(size=v.shape), jnp.float32)
                     for n, v in layer.items()} for k, layer in PARAMS.items()}
        updates, state = tx.update(grads, state, PARAMS)
        expected, ref_state = reference.update(grads, ref_state, PARAMS)
        for layer in PARAMS:
            factor = scale if step < 2 and layer != "fc" else 1.0
            for name in PARAMS[layer]:
                np.testing.assert_allclose(updates[layer][name],
                                           factor * expected[layer][name], rtol=1e-6)


def test_a_warm_up_needs_a_head():
    cfg = config_lib.base_config().optimizer
    cfg.head_warmup_steps = 5
    tx = make_optimizer(cfg)
    with pytest.raises(ValueError, match="head_warmup_steps is set but the model has no fc"):
        tx.init({"conv1": PARAMS["conv1"], "dense2": PARAMS["fc"]})


def resnet18_names() -> list[str]:
    """ResNet-18's top-level layer names, as its params have them (sorted, as Flax's)."""
    return sorted(["conv1", "bn1", "fc"] + [f"layer{s}_{b}" for s in range(1, 5)
                                            for b in range(2)])


def test_layer_depths_follow_the_network_not_the_names():
    """ResNet-18: the stem 0, blocks 1-8 in order, the head 9; DenseNet: each transition
    after its block; the ViT as timm counts (embeddings 0, block i at i + 1, norm and head
    last)."""
    from hpajax.models import densenet, resnet

    depths = steps.layer_depths(resnet18_names(), resnet.layer_key)
    assert depths == {"conv1": 0, "bn1": 0, "layer1_0": 1, "layer1_1": 2, "layer2_0": 3,
                      "layer2_1": 4, "layer3_0": 5, "layer3_1": 6, "layer4_0": 7,
                      "layer4_1": 8, "fc": 9}
    names = ["classifier", "conv0", "denseblock1", "denseblock2", "norm0", "norm5",
             "transition1"]
    assert steps.layer_depths(names, densenet.layer_key) == {
        "conv0": 0, "norm0": 0, "denseblock1": 1, "transition1": 2, "denseblock2": 3,
        "norm5": 4, "classifier": 4}


def test_layer_decay_scales_each_layers_adamw_update_by_decay_to_its_height():
    """Each update equals optax.adamw's times decay ** (9 - depth), written out per layer,
    over a few steps (the multi-transform keeps one Adam state for all)."""
    from hpajax.models import resnet

    cfg = config_lib.base_config().optimizer
    cfg.layer_decay, cfg.weight_decay = 0.5, 0.01
    params = {name: {"kernel": jnp.ones((2, 3))} for name in resnet18_names()}
    depths = steps.layer_depths(params, resnet.layer_key)
    tx = make_optimizer(cfg, depths=depths)
    reference = optax.adamw(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                            weight_decay=cfg.weight_decay)
    state, ref_state = tx.init(params), reference.init(params)
    rng = np.random.default_rng(0)
    expected_scale = {"conv1": 0.5 ** 9, "bn1": 0.5 ** 9, "layer1_0": 0.5 ** 8,
                      "layer2_1": 0.5 ** 5, "layer4_1": 0.5, "fc": 1.0}
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32),
                             params)
        updates, state = tx.update(grads, state, params)
        want, ref_state = reference.update(grads, ref_state, params)
        for name, scale in expected_scale.items():
            np.testing.assert_allclose(updates[name]["kernel"], scale * want[name]["kernel"],
                                       rtol=1e-6)


def test_layer_decay_is_checked():
    cfg = config_lib.base_config().optimizer
    cfg.layer_decay = 1.5
    with pytest.raises(ValueError, match=r"config.optimizer.layer_decay=1.5: choose 0"):
        make_optimizer(cfg, depths={"fc": 0})
    cfg.layer_decay = 0.75
    with pytest.raises(ValueError, match="layer_decay is set but the model has no layer"):
        make_optimizer(cfg)
