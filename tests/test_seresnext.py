"""hpajax.models.seresnext: timm's SE-ResNeXt-50 32x4d, its size, names, golden logits in
timm's and Cadene's keys, Cadene's stem pool, dtypes, remat, dropout.

Shapes are traced only (``jax.eval_shape``); the compiled checks besides the golden
logits use one block per stage at 32 px.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from backbone_checks import (abstract_init, assert_draws_only_with_rng, assert_float32_state,
                             assert_same_training_step, count, images, initial_variables,
                             remat_checkpoints, traced_forward)
from test_weights import assert_reference_logits, reference_param_count

from hpajax import models, steps
from hpajax.models import seresnext

SIZE = 32  # small input for the compiled checks
TINY = dict(stage_sizes=(1, 1))  # layer1_0 (stride 1, downsample) and layer2_0 (stride 2)


@pytest.fixture(scope="module")
def tiny() -> tuple[seresnext.SEResNeXt, jax.Array, dict]:
    """The two-block model, 8 images, and its initial variables but bn3's scale at 1 (at 0,
    timm's init, each block would start as its shortcut)."""
    net = seresnext.SEResNeXt(**TINY)
    x = images(8, SIZE, seed=1)
    variables = initial_variables(net, x)
    flat = traverse_util.flatten_dict(variables["params"])
    flat = {k: jnp.ones_like(p) if k[-2:] == ("bn3", "scale") else p for k, p in flat.items()}
    return net, x, {**variables, "params": traverse_util.unflatten_dict(flat)}


def test_param_count_matches_timm():
    """3 channels, 1,000 classes: timm's count; 4 channels, 28 classes: the difference."""
    reference = reference_param_count("seresnext50_32x4d")
    assert reference == 27_559_896
    net = seresnext.SEResNeXt(num_classes=1000)
    assert count(abstract_init(net, (1, SIZE, SIZE, 3))["params"]) == reference
    params = abstract_init(seresnext.SEResNeXt(), (1, SIZE, SIZE, 4))["params"]
    assert count(params) == reference + 7 * 7 * 64 + 2048 * (28 - 1000) + (28 - 1000)


def test_names_and_shapes_follow_timm():
    """timm's keys as ResNet's; the grouped conv2 (32 groups of 4 at layer1), SE to C / 16."""
    variables = abstract_init(seresnext.SEResNeXt(), (1, SIZE, SIZE, 3))
    params, stats = variables["params"], variables["batch_stats"]
    blocks = [f"layer{stage}_{i}" for stage, n in enumerate((3, 4, 6, 3), 1) for i in range(n)]
    assert set(params) == {"conv1", "bn1", "fc", *blocks}
    inner = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "se"}
    for block in blocks:
        extra = {"downsample_conv", "downsample_bn"} if block.endswith("_0") else set()
        assert set(params[block]) == inner | extra
        assert set(stats[block]) == {"bn1", "bn2", "bn3"} | (extra - {"downsample_conv"})
    first, last = params["layer1_0"], params["layer4_2"]
    assert first["conv1"]["kernel"].shape == (1, 1, 64, 128)
    assert first["conv2"]["kernel"].shape == (3, 3, 4, 128)
    assert last["conv2"]["kernel"].shape == (3, 3, 32, 1024)
    assert first["se"]["fc1"]["kernel"].shape == (1, 1, 256, 16)
    assert first["se"]["fc1"]["bias"].shape == (16,)
    assert last["se"]["fc2"]["kernel"].shape == (1, 1, 128, 2048)
    assert params["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 256, 512)


@pytest.mark.parametrize("reference, ceil_mode_pool", [
    ("seresnext50_32x4d", False),
    ("legacy_seresnext50_32x4d", True),
])
def test_golden_logits(reference, ceil_mode_pool):
    """Seeded weights in timm's keys, and in Cadene's (layer0., se_module, last_linear) with
    Cadene's stem pool: the reference's logits; nothing but the counters skipped."""
    net = seresnext.SEResNeXt(num_classes=1000, ceil_mode_pool=ceil_mode_pool)
    imported = assert_reference_logits("seresnext50_32x4d", net, seresnext.IMPORT_RULES,
                                       reference=reference)
    assert not [key for key, _ in imported.skipped if not key.endswith("num_batches_tracked")]
    assert len(imported.loaded) == 384 - 53  # all but the 53 BatchNorms' counters


def test_timm_pooling_does_not_give_cadenes_logits():
    """Same weights, timm's padded stem pool: Cadene's logits are out of reach (the windows
    are one pixel apart), hence ``ceil_mode_pool``."""
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_reference_logits("seresnext50_32x4d", seresnext.SEResNeXt(num_classes=1000),
                                seresnext.IMPORT_RULES, reference="legacy_seresnext50_32x4d")


def torch_ceil_max_pool(a: np.ndarray) -> np.ndarray:
    """torch's MaxPool2d(3, stride=2, ceil_mode=True) on NHWC, written out: windows from 0,
    ceil((n - 3) / 2) + 1 of them, the last clipped at the border."""
    rows, cols = (-(-(n - 3) // 2) + 1 for n in a.shape[1:3])
    return np.stack([np.stack([a[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(1, 2))
                               for j in range(cols)], axis=1) for i in range(rows)], axis=1)


@pytest.mark.parametrize("side", [6, 7])
def test_ceil_mode_max_pool_is_torchs(side):
    x = np.random.default_rng(side).normal(size=(2, side, side + 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(seresnext.ceil_mode_max_pool(jnp.asarray(x)),
                                  torch_ceil_max_pool(x))


@pytest.mark.parametrize("side, timm_side, cadene_side", [(64, 16, 16), (66, 17, 16),
                                                           (68, 17, 17)])
def test_stem_pool_sides(side, timm_side, cadene_side):
    """The two stem pools agree in size at an even stem output (32, 34), not at 33."""
    for ceil_mode_pool, pooled in ((False, timm_side), (True, cadene_side)):
        net = seresnext.SEResNeXt(**TINY, ceil_mode_pool=ceil_mode_pool)
        _, _, state = traced_forward(net, (1, side, side, 4))
        block_input = state["intermediates"]["layer1_0"]["conv1"]["__call__"][0]
        assert block_input.shape == (1, pooled, pooled, 128)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("train", [False, True])
def test_output_shape_and_dtype(dtype, train):
    """4 channels, batch 2: float32 logits, params and statistics; computation in ``dtype``."""
    assert_float32_state(seresnext.SEResNeXt(**TINY, dtype=dtype), (2, SIZE, SIZE, 4), train,
                         {"layer2_0/se": dtype})


def test_init_is_timms():
    """Kaiming normal (fan_out) kernels, bn3's scale 0 (zero_init_last), SE biases 0."""
    block = seresnext.SEResNeXtBottleneck(features=512)
    x = jnp.ones((1, 2, 2, 2048))
    params = jax.jit(lambda x: block.init(jax.random.key(3), x, train=False))(x)["params"]
    kernel = np.asarray(params["conv3"]["kernel"])  # 1x1x1024x2048
    assert abs(kernel.std() / np.sqrt(2.0 / 2048) - 1) < 0.01
    np.testing.assert_array_equal(params["bn3"]["scale"], 0.0)
    np.testing.assert_array_equal(params["bn2"]["scale"], 1.0)
    np.testing.assert_array_equal(params["se"]["fc1"]["bias"], 0.0)


def test_remat_same_values_and_gradients(tiny):
    """``remat=True``: one checkpoint per block, the same loss, logits, gradients and
    statistics in a training step."""
    net, x, variables = tiny
    remat = seresnext.SEResNeXt(**TINY, remat=True)
    assert [remat_checkpoints(model, variables, x) for model in (remat, net)] == [2, 0]
    assert_same_training_step(net, remat, variables, x, rtol=1e-5)


def test_dropout(tiny):
    """Dropout 0.5: the plain model's logits, bit for bit, in eval (with a dropout rng or
    without) and in training without an rng; a training step with a dropout rng differs
    from them, and between two rngs."""
    net, x, variables = tiny
    assert_draws_only_with_rng(net, seresnext.SEResNeXt(**TINY, dropout=0.5), variables, x)


def test_from_config():
    """The variant's architecture; dropout and remat default to 0.0 and False."""
    net = seresnext.from_config(ml_collections.ConfigDict({"name": "seresnext50_32x4d"}),
                                jnp.bfloat16)
    assert (tuple(net.stage_sizes), net.cardinality, net.base_width) == ((3, 4, 6, 3), 32, 4)
    assert (net.dropout, net.remat, net.dtype, net.num_classes) == (0.0, False, jnp.bfloat16, 28)
    assert not net.ceil_mode_pool
    cfg = ml_collections.ConfigDict({"name": "seresnext50_32x4d", "dropout": 0.25,
                                     "remat": True})
    net = seresnext.from_config(cfg, jnp.float32)
    assert (net.dropout, net.remat) == (0.25, True)
    assert models.import_rules("seresnext50_32x4d") is seresnext.IMPORT_RULES
    with pytest.raises(ValueError, match="seresnext50_32x4d"):
        seresnext.from_config(ml_collections.ConfigDict({"name": "seresnext101"}), jnp.float32)


def test_layer_depths():
    """The stem 0, the 16 blocks in order, the head 17."""
    params = abstract_init(seresnext.SEResNeXt(), (1, SIZE, SIZE, 4))["params"]
    depths = steps.layer_depths(params, seresnext.layer_key)
    assert (depths["conv1"], depths["bn1"], depths["layer1_0"], depths["layer3_5"],
            depths["layer4_2"], depths["fc"]) == (0, 0, 1, 13, 16, 17)
