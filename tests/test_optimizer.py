"""The optimizer: weight decay on every parameter (the seed's) or on the kernels only; the
head's warm-up."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hpajax import config as config_lib
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
