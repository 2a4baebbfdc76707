"""hpajax.models.resnet: torchvision's ResNets, their sizes, stem padding, remat, dropout.

Parameter counts and shapes are traced only (``jax.eval_shape``); the
compiled checks use ResNet-18 at 32 px (remat's, a ResNet of one block per stage).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from backbone_checks import (abstract_init, assert_draws_only_with_rng, assert_float32_state,
                             assert_same_training_step, assert_same_variables, count, forward,
                             images, initial_variables, logits_of, remat_checkpoints,
                             traced_forward)

from hpajax import models
from hpajax.models import resnet

# torchvision's sum(p.numel() for p in model.parameters()), 3 channels, 1,000 classes.
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
SIZE = 32  # small input for the compiled checks: layer4 comes out 1x1


def variant(name: str, **kwargs) -> resnet.ResNet:
    stage_sizes, bottleneck = resnet.VARIANTS[name]
    return resnet.ResNet(stage_sizes=stage_sizes, bottleneck=bottleneck, **kwargs)


@pytest.fixture(scope="module")
def net18() -> resnet.ResNet:
    return variant("resnet18")


@pytest.fixture(scope="module")
def x() -> jax.Array:
    return images(2, SIZE)


@pytest.fixture(scope="module")
def variables18(net18, x) -> dict:
    """ResNet-18 variables with non-trivial running statistics (after one training step)."""
    variables = initial_variables(net18, x)
    _, updates = forward(net18, variables, x, train=True)
    return {"params": variables["params"], "batch_stats": updates["batch_stats"]}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_param_counts_match_torchvision(name):
    """3 channels, 1,000 classes: torchvision's count; 4 channels, 28 classes: the difference."""
    params = abstract_init(variant(name, num_classes=1000), (1, SIZE, SIZE, 3))["params"]
    assert count(params) == TORCHVISION_PARAMS[name]
    features = 2048 if resnet.VARIANTS[name][1] else 512
    stem_extra = 7 * 7 * (4 - 3) * 64
    fc_change = features * (28 - 1000) + (28 - 1000)
    params = abstract_init(variant(name), (1, SIZE, SIZE, 4))["params"]
    assert count(params) == TORCHVISION_PARAMS[name] + stem_extra + fc_change


def test_names_follow_torchvision_state_dict():
    """ResNet-50's layer names: torch's keys with ``layerI.J`` -> ``layerI_J``, downsample split."""
    variables = abstract_init(variant("resnet50"), (1, SIZE, SIZE, 3))
    params, stats = variables["params"], variables["batch_stats"]
    blocks = [f"layer{stage}_{i}" for stage, n in enumerate((3, 4, 6, 3), 1) for i in range(n)]
    assert set(params) == {"conv1", "bn1", "fc", *blocks}
    assert set(stats) == {"bn1", *blocks}
    inner = {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3"}
    for block in blocks:
        downsample = block.endswith("_0")  # each stage's first block changes the shape
        assert set(params[block]) == inner | ({"downsample_conv", "downsample_bn"} if downsample
                                              else set())
    assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)  # v1.5: stride here
    assert params["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 256, 512)
    assert set(params["layer1_0"]["bn1"]) == {"scale", "bias"}
    assert set(stats["layer1_0"]["bn1"]) == {"mean", "var"}
    assert params["fc"]["kernel"].shape == (2048, 28)
    blocks18 = abstract_init(variant("resnet18"), (1, SIZE, SIZE, 3))["params"]
    assert "downsample_conv" not in blocks18["layer1_0"]  # 64 -> 64, stride 1: identity
    assert "downsample_conv" in blocks18["layer2_0"]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("train", [False, True])
def test_output_shape_and_dtype(dtype, train):
    """4 channels, batch 2: float32 logits, params and statistics; computation in ``dtype``."""
    assert_float32_state(variant("resnet18", dtype=dtype), (2, SIZE, SIZE, 4), train,
                         {"layer4_1": dtype})


@pytest.mark.parametrize("side", [32, 33, 34, 35])
def test_stem_sides_match_torch(side):
    """Conv 7x7/2 pad 3 and max-pool 3x3/2 pad 1 give torch's floor((n + 2p - k) / s) + 1."""
    _, _, state = traced_forward(variant("resnet18"), (1, side, side, 4))
    conv_side = (side + 2 * 3 - 7) // 2 + 1
    pool_side = (conv_side + 2 * 1 - 3) // 2 + 1
    assert state["intermediates"]["conv1"]["__call__"][0].shape == (1, conv_side, conv_side, 64)
    # layer1 keeps the side (stride 1), so its output shows the pool's.
    assert state["intermediates"]["layer1_0"]["__call__"][0].shape == (1, pool_side, pool_side, 64)


def test_stem_conv_corners_equal_hand_computation(net18, variables18):
    """The stem conv at both corners of a 32 px input equals NumPy's sum with zero padding 3.

    ``out[i, j, o] = sum over dy, dx < 7 and c of xpad[2 i + dy, 2 j + dx, c] * k[dy, dx, c, o]``
    with ``xpad`` the input with 3 zero rows and columns on every side. Flax's
    ``"SAME"`` would pad 2 before and 3 after at this side, which moves every window.
    """
    x = images(1, SIZE, seed=3)
    _, state = jax.jit(lambda v, x: net18.apply(v, x, train=False, capture_intermediates=True,
                                                mutable=["intermediates"]))(variables18, x)
    out = np.asarray(state["intermediates"]["conv1"]["__call__"][0][0], np.float64)
    kernel = np.asarray(variables18["params"]["conv1"]["kernel"], np.float64)  # [7, 7, 4, 64]
    xpad = np.pad(np.asarray(x[0], np.float64), ((3, 3), (3, 3), (0, 0)))
    last = out.shape[0] - 1  # 15
    for i, j in [(0, 0), (last, last)]:
        window = xpad[2 * i:2 * i + 7, 2 * j:2 * j + 7, :]
        expected = np.einsum("hwc,hwco->o", window, kernel)
        np.testing.assert_allclose(out[i, j], expected, rtol=1e-5, atol=1e-5)


def test_max_pool_pads_with_minus_infinity():
    """``nn.max_pool`` with explicit padding pads with -inf, as torch: a negative corner stays."""
    x = -jnp.arange(1.0, 17.0).reshape(1, 4, 4, 1)
    pooled = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    # top-left window: input rows/columns 0..1 only -> max(-1, -2, -5, -6) = -1, not a padded 0
    np.testing.assert_array_equal(pooled[0, :, :, 0], [[-1.0, -2.0], [-5.0, -6.0]])


def test_conv_init_is_torchvision_kaiming_normal(variables18):
    """Conv kernels: untruncated normal, std sqrt(2 / fan_out); BN scale 1, bias 0."""
    kernel = np.asarray(variables18["params"]["layer4_1"]["conv2"]["kernel"])  # 3x3x512x512
    std = np.sqrt(2.0 / (3 * 3 * 512))
    assert abs(kernel.std() / std - 1) < 0.01
    assert abs(np.mean(np.abs(kernel) > 2 * std) - 0.0455) < 0.002  # a truncated normal has none
    bn = variables18["params"]["layer4_1"]["bn2"]
    np.testing.assert_array_equal(bn["scale"], 1.0)
    np.testing.assert_array_equal(bn["bias"], 0.0)


def test_remat_same_values_and_gradients():
    """``remat=True`` keeps the variables (names, shapes, dtypes), wraps each block in a
    checkpoint, and keeps the eval logits and a training step's loss, logits, gradients
    and statistics.

    On a ResNet of one basic block per stage (the blocks are what remat wraps; half
    of ResNet-18's to compile) and 8 images: training-mode BatchNorm
    over a 1x1 layer4 of 2 images makes the gradients chaotic, so that two compilations
    of the same sums could differ in sign. Over 8, the two agree to float32 rounding of
    their size: 1e-4 of each gradient's largest entry (observed: 1.1e-5 at LLVM's
    optimization level 0, equal at level 1).
    """
    plain, remat = (resnet.ResNet(stage_sizes=(1, 1, 1, 1), remat=r) for r in (False, True))
    x = images(8, SIZE, seed=1)
    variables = initial_variables(plain, x)
    assert_same_variables(remat, variables, x.shape)
    assert [remat_checkpoints(net, variables, x) for net in (remat, plain)] == [4, 0]
    np.testing.assert_allclose(logits_of(remat, variables, x, False),
                               logits_of(plain, variables, x, False), rtol=1e-6, atol=1e-6)
    assert_same_training_step(plain, remat, variables, x, rtol=1e-4)


def test_dropout(net18, variables18, x):
    """Dropout 0.5: dropout 0.0's logits, bit for bit, in eval (with a dropout rng or without)
    and in training without one; in training with one, finite logits that differ from them
    and between two rngs."""
    assert_draws_only_with_rng(net18, variant("resnet18", dropout=0.5), variables18, x)


def test_from_config():
    """``from_config`` builds each variant; dropout and remat default to 0.0 and False."""
    for name, (stage_sizes, bottleneck) in resnet.VARIANTS.items():
        net = resnet.from_config(ml_collections.ConfigDict({"name": name}), jnp.bfloat16)
        assert (tuple(net.stage_sizes), net.bottleneck) == (stage_sizes, bottleneck)
        assert (net.dropout, net.remat, net.dtype, net.num_classes) == (
            0.0, False, jnp.bfloat16, 28)
    cfg = ml_collections.ConfigDict({"name": "resnet34", "dropout": 0.25, "remat": True})
    net = resnet.from_config(cfg, jnp.float32)
    assert (net.dropout, net.remat) == (0.25, True)
    with pytest.raises(ValueError, match="resnet50"):
        resnet.from_config(ml_collections.ConfigDict({"name": "resnet101"}), jnp.float32)


def test_param_counts_helper_sees_torch_layers():
    """``models.param_counts`` splits ResNet-18's parameters by torch's top-level names."""
    params = abstract_init(variant("resnet18", num_classes=1000), (1, SIZE, SIZE, 3))["params"]
    counts = models.param_counts(params)
    assert counts["conv1"] == 7 * 7 * 3 * 64
    assert counts["fc"] == 512 * 1000 + 1000
    assert counts["layer1_0"] == 2 * (3 * 3 * 64 * 64 + 2 * 64)
