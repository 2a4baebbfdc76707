"""hpajax.models.xception: timm's legacy Xception, its size, names, golden logits, unpadded
stem, unrectified shortcut, dtypes, remat, dropout.

Shapes are traced only (``jax.eval_shape``); the compiled checks besides the golden
logits use a three-block model at 32 px.
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
from hpajax.models import xception
from hpajax.models.xception import BlockSpec

SIZE = 32
# Each kind of block once: block1's (no leading ReLU, skip conv), an identity shortcut,
# block12's (grow_first=False, skip conv).
TINY = dict(blocks=(BlockSpec(32, 2, 2, start_with_relu=False), BlockSpec(32, 2),
                    BlockSpec(64, 2, 2, grow_first=False)))


@pytest.fixture(scope="module")
def tiny() -> tuple[xception.Xception, jax.Array, dict]:
    """The three-block model, 8 images and its initial variables."""
    net = xception.Xception(**TINY)
    x = images(8, SIZE, seed=1)
    return net, x, initial_variables(net, x)


def test_param_count_matches_timm():
    """3 channels, 1,000 classes: timm's count; 4 channels, 28 classes: the difference."""
    reference = reference_param_count("xception")
    assert reference == 22_855_952
    net = xception.Xception(num_classes=1000)
    assert count(abstract_init(net, (1, 64, 64, 3))["params"]) == reference
    params = abstract_init(xception.Xception(), (1, 64, 64, 4))["params"]
    assert count(params) == reference + 3 * 3 * 32 + 2048 * (28 - 1000) + (28 - 1000)


def test_names_follow_timm():
    """blockI.rep.N is blockI/rep_N, N torch's index (ReLUs and pools take places)."""
    variables = abstract_init(xception.Xception(), (1, 64, 64, 3))
    params, stats = variables["params"], variables["batch_stats"]
    blocks = [f"block{i}" for i in range(1, 13)]
    assert set(params) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "bn4", "fc",
                           *blocks}
    assert set(params["block1"]) == {"rep_0", "rep_1", "rep_3", "rep_4", "skip", "skipbn"}
    assert set(params["block2"]) == {"rep_1", "rep_2", "rep_4", "rep_5", "skip", "skipbn"}
    assert set(params["block4"]) == {"rep_1", "rep_2", "rep_4", "rep_5", "rep_7", "rep_8"}
    assert set(stats["block4"]) == {"rep_2", "rep_5", "rep_8"}
    assert params["block1"]["rep_0"]["conv1"]["kernel"].shape == (3, 3, 1, 64)  # depthwise
    assert params["block1"]["rep_0"]["pointwise"]["kernel"].shape == (1, 1, 64, 128)
    block12 = params["block12"]  # grow_first=False: 728 -> 728 -> 1024
    assert block12["rep_1"]["pointwise"]["kernel"].shape == (1, 1, 728, 728)
    assert block12["rep_4"]["pointwise"]["kernel"].shape == (1, 1, 728, 1024)
    assert block12["skip"]["kernel"].shape == (1, 1, 728, 1024)
    assert params["conv3"]["conv1"]["kernel"].shape == (3, 3, 1, 1024)
    assert params["conv4"]["pointwise"]["kernel"].shape == (1, 1, 1536, 2048)


def test_golden_logits():
    """Seeded weights in timm's keys: timm's logits; nothing but the counters skipped."""
    imported = assert_reference_logits("xception", xception.Xception(num_classes=1000),
                                       xception.IMPORT_RULES)
    assert not [key for key, _ in imported.skipped if not key.endswith("num_batches_tracked")]


@pytest.mark.parametrize("side", [64, 65])
def test_sides_match_torch(side):
    """Unpadded stem: 3x3/2 then 3x3; each stride-2 block: the max-pool 3x3/2 pad 1."""
    _, _, state = traced_forward(xception.Xception(), (1, side, side, 4))
    out = state["intermediates"]
    conv1 = (side - 3) // 2 + 1
    conv2 = conv1 - 2
    assert out["conv1"]["__call__"][0].shape == (1, conv1, conv1, 32)
    assert out["conv2"]["__call__"][0].shape == (1, conv2, conv2, 64)
    block1 = (conv2 + 2 - 3) // 2 + 1
    assert out["block1"]["__call__"][0].shape == (1, block1, block1, 128)
    for _ in range(3):  # blocks 2, 3 and 12
        block1 = (block1 - 1) // 2 + 1
    assert out["block12"]["__call__"][0].shape == (1, block1, block1, 1024)


def test_the_shortcut_gets_the_input_unrectified():
    """timm's leading ReLU(inplace=False): with the last BN at 0, a block returns its input,
    negative values included; without a leading ReLU too."""
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 8))
    for start_with_relu in (True, False):
        block = xception.Block(features=8, reps=2, start_with_relu=start_with_relu)
        variables = block.init(jax.random.key(1), x, train=False)
        last = "rep_5" if start_with_relu else "rep_4"
        flat = traverse_util.flatten_dict(variables["params"])
        flat = {k: jnp.zeros_like(p) if k[0] == last else p for k, p in flat.items()}
        variables = {**variables, "params": traverse_util.unflatten_dict(flat)}
        np.testing.assert_array_equal(block.apply(variables, x, train=False), x)
    assert (x < 0).any()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("train", [False, True])
def test_output_shape_and_dtype(dtype, train):
    """4 channels, batch 2: float32 logits, params and statistics; computation in ``dtype``."""
    assert_float32_state(xception.Xception(**TINY, dtype=dtype), (2, SIZE, SIZE, 4), train,
                         {"block3": dtype})


def test_init_is_timms():
    """Kaiming normal (fan_out) kernels: a depthwise kernel's fan_out is 9 x its channels."""
    conv = xception.SeparableConv2d(features=512)
    params = conv.init(jax.random.key(3), jnp.ones((1, 3, 3, 1024)))["params"]
    depthwise = np.asarray(params["conv1"]["kernel"])  # 3x3x1x1024
    assert abs(depthwise.std() / np.sqrt(2.0 / (9 * 1024)) - 1) < 0.03
    pointwise = np.asarray(params["pointwise"]["kernel"])  # 1x1x1024x512
    assert abs(pointwise.std() / np.sqrt(2.0 / 512) - 1) < 0.01


def test_remat_same_values_and_gradients(tiny):
    """``remat=True``: one checkpoint per block, the same loss, logits, gradients and
    statistics in a training step."""
    net, x, variables = tiny
    remat = xception.Xception(**TINY, remat=True)
    assert [remat_checkpoints(model, variables, x) for model in (remat, net)] == [3, 0]
    assert_same_training_step(net, remat, variables, x, rtol=1e-5)


def test_dropout(tiny):
    """Dropout 0.5: the plain model's logits, bit for bit, in eval (with a dropout rng or
    without) and in training without an rng; a training step with a dropout rng differs
    from them, and between two rngs."""
    net, x, variables = tiny
    assert_draws_only_with_rng(net, xception.Xception(**TINY, dropout=0.5), variables, x)


def test_from_config():
    """The variant's blocks; dropout and remat default to 0.0 and False."""
    net = xception.from_config(ml_collections.ConfigDict({"name": "xception"}), jnp.bfloat16)
    assert tuple(net.blocks) == xception.XCEPTION_BLOCKS and len(net.blocks) == 12
    assert (net.dropout, net.remat, net.dtype, net.num_classes) == (0.0, False, jnp.bfloat16, 28)
    cfg = ml_collections.ConfigDict({"name": "xception", "dropout": 0.25, "remat": True})
    net = xception.from_config(cfg, jnp.float32)
    assert (net.dropout, net.remat) == (0.25, True)
    assert models.import_rules("xception") is xception.IMPORT_RULES
    with pytest.raises(ValueError, match="xception"):
        xception.from_config(ml_collections.ConfigDict({"name": "xception41"}), jnp.float32)


def test_layer_depths():
    """The stem 0, blocks 1-12, conv3/bn3 13, conv4/bn4 14, the head 15."""
    params = abstract_init(xception.Xception(), (1, 64, 64, 4))["params"]
    depths = steps.layer_depths(params, xception.layer_key)
    assert {name: depths[name] for name in ("conv1", "bn2", "block1", "block10", "block12",
                                            "conv3", "bn3", "bn4", "fc")} == {
        "conv1": 0, "bn2": 0, "block1": 1, "block10": 10, "block12": 12, "conv3": 13,
        "bn3": 13, "bn4": 14, "fc": 15}
