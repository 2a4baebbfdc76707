"""hpajax.models.densenet: torchvision's DenseNet-121 sizes, names, dtypes, remat, dropout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from backbone_checks import (abstract_init, assert_draws_only_with_rng, assert_float32_state,
                             assert_logits_and_statistics, assert_same_training_step,
                             assert_same_variables, count, forward, images, initial_variables,
                             logits_of, mean_square)

from hpajax.models import densenet

TORCHVISION_DENSENET121_PARAMS = 7_978_856  # sum(p.numel() for p in densenet121().parameters())
TORCHVISION_DENSENET169_PARAMS = 14_149_480  # the same of densenet169() (torchvision 0.29.1)
# A small DenseNet that still has a transition; 36 px leaves a 9 px block 1,
# so the transition's pool drops an odd row and column as torch's does.
TINY = dict(growth_rate=8, block_config=(2, 2), num_init_features=16)
SIZE = 36


def shapes(channels: int, num_classes: int, **kw) -> dict:
    """DenseNet-121's variables as shapes (traced, nothing compiles)."""
    return abstract_init(densenet.DenseNet(num_classes=num_classes, **kw), (1, 224, 224, channels))


def numpy_max_pool(a: np.ndarray) -> np.ndarray:
    """torch's MaxPool2d(3, stride=2, padding=1) on NHWC: -inf padding, floor."""
    padded = np.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    rows, cols = (a.shape[1] - 1) // 2 + 1, (a.shape[2] - 1) // 2 + 1
    return np.stack([np.stack([padded[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(1, 2))
                               for j in range(cols)], axis=1) for i in range(rows)], axis=1)


@pytest.fixture(scope="module")
def tiny():
    """The tiny float32 model, its input and its initial variables."""
    net = densenet.DenseNet(**TINY)
    x = images(2, SIZE)
    return net, x, initial_variables(net, x)


def test_param_count_matches_torchvision():
    """3 channels, 1000 classes: torchvision's count. 4 channels, 28 classes:
    conv0 gains one input channel, the classifier loses 972 outputs."""
    assert count(shapes(3, 1000)["params"]) == TORCHVISION_DENSENET121_PARAMS
    assert count(shapes(4, 28)["params"]) == (TORCHVISION_DENSENET121_PARAMS + 7 * 7 * 1 * 64
                                              + 1024 * (28 - 1000) + (28 - 1000))


def test_densenet169_param_count_matches_torchvision():
    """Its blocks of 6, 12, 32 and 32 layers end at 1,664 features (1,024 for -121)."""
    variant = densenet.VARIANTS["densenet169"]
    assert count(shapes(3, 1000, **variant)["params"]) == TORCHVISION_DENSENET169_PARAMS
    assert count(shapes(4, 28, **variant)["params"]) == (
        TORCHVISION_DENSENET169_PARAMS + 7 * 7 * 1 * 64 + 1664 * (28 - 1000) + (28 - 1000))


def test_feature_widths_and_names_follow_torchvision():
    variables = shapes(4, 28)
    params, stats = variables["params"], variables["batch_stats"]
    assert set(params) == ({"conv0", "norm0", "norm5", "classifier"}
                           | {f"denseblock{i}" for i in (1, 2, 3, 4)}
                           | {f"transition{i}" for i in (1, 2, 3)})
    assert params["conv0"]["kernel"].shape == (7, 7, 4, 64)
    assert params["norm5"]["scale"].shape == (1024,)
    assert params["classifier"]["kernel"].shape == (1024, 28)
    assert params["classifier"]["bias"].shape == (28,)
    width = 64
    for block, (layers, out) in enumerate(zip((6, 12, 24, 16), (128, 256, 512, None)), start=1):
        block_params = params[f"denseblock{block}"]
        assert set(block_params) == {f"denselayer{j}" for j in range(1, layers + 1)}
        for j in range(1, layers + 1):
            layer = block_params[f"denselayer{j}"]
            assert jax.tree.map(lambda a: a.shape, layer) == {
                "norm1": {"scale": (width + 32 * (j - 1),), "bias": (width + 32 * (j - 1),)},
                "conv1": {"kernel": (1, 1, width + 32 * (j - 1), 128)},
                "norm2": {"scale": (128,), "bias": (128,)},
                "conv2": {"kernel": (3, 3, 128, 32)}}
        width += 32 * layers
        if out is not None:
            transition = params[f"transition{block}"]
            assert transition["norm"]["scale"].shape == (width,)
            assert transition["conv"]["kernel"].shape == (1, 1, width, out)
            width = out
    assert width == 1024
    # One mean and one variance per BN channel, in the same places as BN's scale.
    bn_scales = {path[:-1]: leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                 if path[-1].key == "scale"}
    assert {path[:-1]: leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(stats)
            if path[-1].key == "mean"} == bn_scales
    assert count(stats) == 2 * sum(shape[0] for shape in bn_scales.values())


def test_init_follows_torchvision(tiny):
    """Conv kernels N(0, 2/fan_in) untruncated, BN 1/0, classifier U(±1/sqrt(fan_in)), bias 0."""
    _, _, variables = tiny
    params = variables["params"]
    kernel = np.asarray(params["denseblock2"]["denselayer1"]["conv2"]["kernel"])  # 3x3x32x8
    std = np.sqrt(2 / (3 * 3 * 32))
    assert abs(kernel.std() / std - 1) < 0.1
    assert np.abs(kernel).max() > 2.5 * std  # a truncated normal stops at 2 std
    classifier = np.asarray(params["classifier"]["kernel"])
    bound = 1 / np.sqrt(classifier.shape[0])
    assert bound * 0.9 < np.abs(classifier).max() <= bound
    np.testing.assert_array_equal(params["classifier"]["bias"], 0)
    norm = params["transition1"]["norm"]
    np.testing.assert_array_equal(norm["scale"], 1)
    np.testing.assert_array_equal(norm["bias"], 0)


@pytest.mark.parametrize("train", [False, True])
def test_output_shape_and_dtype(tiny, train):
    """Finite float32 [2, 28] logits; every running statistic moves in training only."""
    net, x, variables = tiny
    assert_logits_and_statistics(*forward(net, variables, x, train), variables, train)


def test_bfloat16_keeps_float32_params_and_statistics():
    """Traced: float32 logits, variables and updated statistics; bfloat16 blocks."""
    assert_float32_state(densenet.DenseNet(**TINY, dtype=jnp.bfloat16), (2, SIZE, SIZE, 4),
                         True, {"denseblock2": jnp.bfloat16})


def test_remat_matches_plain(tiny):
    """Same variables, eval logits, and training loss, logits, gradients and statistics
    with and without remat."""
    net, x, variables = tiny
    remat = densenet.DenseNet(**TINY, remat=True)
    assert_same_variables(remat, variables, x.shape)
    np.testing.assert_allclose(logits_of(remat, variables, x, False),
                               logits_of(net, variables, x, False), rtol=1e-5, atol=1e-6)
    assert_same_training_step(net, remat, variables, x, rtol=1e-4, atol=1e-6, loss=mean_square)


def test_dropout_only_in_training(tiny):
    """Dropout 0.5: the plain model's logits, bit for bit, in eval and in training without
    a dropout rng; training with one draws (differently for two rngs)."""
    net, x, variables = tiny
    assert_draws_only_with_rng(net, densenet.DenseNet(**TINY, dropout=0.5), variables, x)


def test_concatenation_and_pools_against_numpy(tiny):
    """From one forward pass's intermediates, written out in NumPy: the stem's
    3x3/2 max-pool padded with -inf feeds block 1, which returns its input
    unchanged in its first channels and then each layer's new channels in
    order; the transition's output is its conv's 2x2 means (odd edge dropped);
    block 2 starts with the transition's output."""
    net, x, variables = tiny
    _, state = jax.jit(lambda v, x: net.apply(
        v, x, train=True, capture_intermediates=True,
        mutable=["batch_stats", "intermediates"]))(variables, x)
    out = jax.tree.map(np.asarray, state["intermediates"])

    pooled = numpy_max_pool(np.maximum(out["norm0"]["__call__"][0], 0))  # from [2, 18, 18, 16]
    block1 = out["denseblock1"]["__call__"][0]
    assert block1.shape == (2, 9, 9, 16 + 2 * 8)
    np.testing.assert_array_equal(block1[..., :16], pooled)
    for j in (1, 2):
        new = out["denseblock1"][f"denselayer{j}"]["__call__"][0]
        np.testing.assert_array_equal(block1[..., 16 + 8 * (j - 1):16 + 8 * j], new)

    conv = out["transition1"]["conv"]["__call__"][0]  # [2, 9, 9, 16]
    conv = conv[:, :8, :8]
    means = (conv[:, 0::2, 0::2] + conv[:, 0::2, 1::2] + conv[:, 1::2, 0::2]
             + conv[:, 1::2, 1::2]) / 4
    transition = out["transition1"]["__call__"][0]
    assert transition.shape == (2, 4, 4, 16)
    np.testing.assert_allclose(transition, means, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out["denseblock2"]["__call__"][0][..., :16], transition)


def test_flax_max_pool_pads_with_minus_infinity():
    """The stem's pool pads as torch's: a negative input's border windows keep
    their own maximum instead of a padded 0."""
    a = -1 - np.random.default_rng(0).random((1, 7, 6, 2), dtype=np.float32)
    pooled = nn.max_pool(jnp.asarray(a), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    assert pooled.shape == (1, 4, 3, 2)
    np.testing.assert_array_equal(pooled, numpy_max_pool(a))


def test_from_config():
    cfg = ml_collections.ConfigDict(dict(name="densenet121", dtype="bfloat16"))
    net = densenet.from_config(cfg, jnp.bfloat16)
    assert (net.growth_rate, tuple(net.block_config), net.num_init_features) == (
        32, (6, 12, 24, 16), 64)
    assert (net.dtype, net.dropout, net.remat, net.num_classes) == (jnp.bfloat16, 0.0, False, 28)
    cfg.update(dropout=0.2, remat=True)
    net = densenet.from_config(cfg, jnp.float32)
    assert (net.dropout, net.remat) == (0.2, True)
    net = densenet.from_config(ml_collections.ConfigDict(dict(name="densenet169")), jnp.float32)
    assert tuple(net.block_config) == (6, 12, 32, 32)
    with pytest.raises(ValueError, match="densenet201"):
        densenet.from_config(ml_collections.ConfigDict(dict(name="densenet201")), jnp.float32)
