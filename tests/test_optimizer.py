"""The optimizer's weight decay: on every parameter (the seed's) or on the kernels only."""

import jax.numpy as jnp
import ml_collections
import numpy as np
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
