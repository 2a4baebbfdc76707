"""hpajax.models.convnext: torchvision's ConvNeXt-Tiny sizes, names, golden logits, no
BatchNorm statistics, dtypes, remat, stochastic depth and dropout.

Counts and shapes are traced only (``jax.eval_shape``); the golden logits run the full
model at the reference's 64 px, the other compiled checks a small ConvNeXt at 32 px.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from backbone_checks import (abstract_init, assert_draws_only_with_rng, assert_float32_state,
                             assert_logits_and_statistics, assert_same_training_step,
                             assert_same_variables, count, forward, images, initial_variables,
                             logits_of, mean_square)
from test_weights import assert_reference_logits, reference_param_count

from hpajax import config as config_lib
from hpajax import models
from hpajax.models import convnext, layers

# Four stages (three downsamplings), five blocks: 32 px leaves the last stage at 1x1.
TINY = dict(depths=(1, 2, 1, 1), widths=(8, 16, 24, 32))
SIZE = 32


@pytest.fixture(scope="module")
def tiny():
    """The small float32 model (torchvision's drop_path 0.1), its input and variables."""
    net = convnext.ConvNeXt(**TINY)
    x = images(2, SIZE)
    return net, x, initial_variables(net, x)


def test_param_count_matches_torchvision():
    """3 channels, 1000 classes: torch's count. 4 channels, 28 classes: the stem gains
    one input channel, the classifier loses 972 outputs."""
    expected = reference_param_count("convnext_tiny")
    assert count(abstract_init(convnext.ConvNeXt(num_classes=1000), (1, 64, 64, 3))) == expected
    assert count(abstract_init(convnext.ConvNeXt(), (1, 64, 64, 4))) == (
        expected + 4 * 4 * 1 * 96 + 768 * (28 - 1000) + (28 - 1000))


def test_names_and_shapes():
    """torchvision's features.I flattened: stem, blocks, downsamplings, head; no batch_stats."""
    variables = abstract_init(convnext.ConvNeXt(), (1, 64, 64, 4))
    assert set(variables) == {"params"}
    params = variables["params"]
    blocks = {f"features{i}_{j}" for i, n in zip((1, 3, 5, 7), (3, 3, 9, 3)) for j in range(n)}
    downs = {f"features{i}_{part}" for i in (2, 4, 6) for part in ("norm", "conv")}
    assert set(params) == (blocks | downs | {"features0_conv", "features0_norm",
                                             "classifier_norm", "classifier"})
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert shapes["features0_conv"] == {"kernel": (4, 4, 4, 96), "bias": (96,)}
    assert shapes["features5_8"] == {
        "dwconv": {"kernel": (7, 7, 1, 384), "bias": (384,)},
        "norm": {"scale": (384,), "bias": (384,)},
        "pwconv1": {"kernel": (384, 1536), "bias": (1536,)},
        "pwconv2": {"kernel": (1536, 384), "bias": (384,)},
        "layer_scale": (384,)}
    assert shapes["features6_norm"] == {"scale": (384,), "bias": (384,)}
    assert shapes["features6_conv"] == {"kernel": (2, 2, 384, 768), "bias": (768,)}
    assert shapes["classifier_norm"] == {"scale": (768,), "bias": (768,)}
    assert shapes["classifier"] == {"kernel": (768, 28), "bias": (28,)}
    assert "classifier_norm" not in layers.HEAD_NAMES  # loaded, not new


def test_imported_weights_give_torchvisions_logits():
    """Seeded weights in torchvision's names, 64 px: torchvision's logits (rtol 1e-4);
    every tensor is loaded, only the 18 layer scales reshaped."""
    net = convnext.ConvNeXt(num_classes=1000)
    imported = assert_reference_logits("convnext_tiny", net, models.import_rules("convnext_tiny"))
    assert imported.skipped == []
    assert len(imported.loaded) == 182
    assert imported.fitted == {
        f"features.{i}.{j}.layer_scale": f"[{c}, 1, 1] fitted to [{c}]"
        for i, n, c in zip((1, 3, 5, 7), (3, 3, 9, 3), (96, 192, 384, 768)) for j in range(n)}
    assert imported.batch_stats == {}


def test_layer_scale_fit_leaves_other_tensors_to_be_refused():
    value = np.zeros((96, 1, 1), np.float32)
    assert convnext.IMPORT_RULES.fit("features.1.0.block.0.bias", value, (96,)) is value
    assert convnext.IMPORT_RULES.fit("features.1.0.layer_scale", value, (96,)).shape == (96,)


def test_init_follows_torchvision(tiny):
    """Kernels N(0, 0.02) (torch's trunc_normal_ bounds are ±2 absolute), biases 0,
    LayerNorms 1 and 0, layer scales 1e-6."""
    params = tiny[2]["params"]
    kernel = np.asarray(params["features3_1"]["pwconv1"]["kernel"])  # 16 x 64
    assert abs(kernel.std() / 0.02 - 1) < 0.1
    assert np.abs(kernel).max() > 2.5 * 0.02  # not truncated at 2 std
    np.testing.assert_array_equal(params["features3_1"]["dwconv"]["bias"], 0)
    np.testing.assert_array_equal(params["features4_norm"]["scale"], 1)
    np.testing.assert_array_equal(params["classifier_norm"]["bias"], 0)
    np.testing.assert_allclose(params["features7_0"]["layer_scale"], 1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_output_shape_and_no_batch_stats(tiny, train):
    """[B, 28] float32 logits; init has only params; a training step's mutable
    batch_stats come back empty."""
    net, x, variables = tiny
    assert set(variables) == {"params"}
    assert_logits_and_statistics(*forward(net, variables, x, train), variables, train)


def test_bfloat16_keeps_float32_params_and_logits():
    """Traced: float32 params (no other collection) and logits; bfloat16 blocks and their
    LayerNorms; the head's LayerNorm on the pooled features in float32."""
    variables = assert_float32_state(
        convnext.ConvNeXt(**TINY, dtype=jnp.bfloat16), (2, SIZE, SIZE, 4), True,
        {"features3_1": jnp.bfloat16, "features3_1/norm": jnp.bfloat16,
         "classifier_norm": jnp.float32})
    assert set(variables) == {"params"}


def test_remat_matches_plain(tiny):
    """Same variables, eval logits, and training loss, logits and gradients (stochastic
    depth drawing from the same rng) with and without remat."""
    net, x, variables = tiny
    remat = convnext.ConvNeXt(**TINY, remat=True)
    assert_same_variables(remat, variables, x.shape)
    np.testing.assert_allclose(logits_of(remat, variables, x, False),
                               logits_of(net, variables, x, False), rtol=1e-5, atol=1e-6)
    assert_same_training_step(net, remat, variables, x, rtol=1e-4, atol=1e-7, loss=mean_square,
                              rngs={"dropout": jax.random.key(3)})


@pytest.mark.parametrize("kw", [dict(drop_path=0.5), dict(drop_path=0.0, dropout=0.5)])
def test_stochastic_depth_and_dropout_draw_only_with_an_rng_in_training(tiny, kw):
    """No BatchNorm: without a draw (eval, or training without an rng), the rate-0 model's
    eval logits, bit for bit; training with an rng draws others, different for two rngs."""
    _, x, variables = tiny
    # Layer scales of 1 make the residual branches matter.
    params = {k: ({**v, "layer_scale": jnp.ones_like(v["layer_scale"])} if "layer_scale" in v
                  else v) for k, v in variables["params"].items()}
    assert_draws_only_with_rng(convnext.ConvNeXt(**TINY, drop_path=0.0),
                               convnext.ConvNeXt(**TINY, **kw), {"params": params}, x)


def test_block_drops_whole_samples_and_rescales_the_rest():
    """torchvision's StochasticDepth "row": each sample's branch is zeroed (output = input)
    or divided by 1 - rate."""
    block = convnext.CNBlock(drop_path=0.5)
    x = jax.random.normal(jax.random.key(0), (32, 4, 4, 8))
    params = block.init(jax.random.key(1), x, train=False)["params"]
    params = {**params, "layer_scale": jnp.ones(8)}
    branch = block.apply({"params": params}, x, train=False) - x
    out = block.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(2)})
    kept = np.asarray(jnp.any(out != x, axis=(1, 2, 3)))
    assert 0 < kept.sum() < 32
    np.testing.assert_array_equal(out[~kept], x[~kept])
    np.testing.assert_allclose(out[kept] - x[kept], 2 * branch[kept], rtol=1e-5, atol=1e-5)


def test_stochastic_depth_rates_are_torchvisions(monkeypatch):
    """Block k of 18 drops at 0.1 * k / 17.0 (torchvision's formula), in block order."""
    rates = convnext.stochastic_depth_rates(0.1, (3, 3, 9, 3))
    assert rates == [0.1 * k / (18 - 1.0) for k in range(18)]
    assert (rates[0], rates[-1]) == (0.0, 0.1)
    seen = []
    monkeypatch.setattr(layers, "drop_path",
                        lambda module, y, rate, train: seen.append((module.name, rate)) or y)
    net = convnext.ConvNeXt(**TINY, drop_path=0.2)
    jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=True),
                   jax.ShapeDtypeStruct((1, SIZE, SIZE, 4), jnp.float32))
    names = ("features1_0", "features3_0", "features3_1", "features5_0", "features7_0")
    assert seen == [(name, 0.2 * k / (5 - 1.0)) for k, name in enumerate(names)]


def test_from_config():
    cfg = config_lib.model_config("convnext_tiny")
    net = models.create(cfg)
    assert isinstance(net, convnext.ConvNeXt)
    assert (tuple(net.depths), tuple(net.widths)) == ((3, 3, 9, 3), (96, 192, 384, 768))
    assert (net.dtype, net.dropout, net.drop_path, net.remat, net.num_classes) == (
        jnp.float32, 0.0, 0.1, False, 28)
    cfg.update(dtype="bfloat16", dropout=0.2, drop_path=0.3, remat=True)
    net = models.create(cfg)
    assert (net.dtype, net.dropout, net.drop_path, net.remat) == (jnp.bfloat16, 0.2, 0.3, True)
    assert net.clone(bn_momentum=0.0).bn_momentum == 0.0  # as steps' recalibration program
    with pytest.raises(ValueError, match="convnext_small"):
        convnext.from_config(ml_collections.ConfigDict(dict(name="convnext_small")), jnp.float32)
