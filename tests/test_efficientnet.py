"""hpajax.models.efficientnet: torchvision's EfficientNet-B0/B4 sizes, names, golden logits,
init, dtypes, remat, dropout, stochastic depth and layer order."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from backbone_checks import (abstract_init, assert_draws_only_with_rng, assert_float32_state,
                             assert_logits_and_statistics, assert_same_training_step,
                             assert_same_variables, count, forward, images, logits_of,
                             mean_square)
from test_weights import (assert_reference_logits, reference_param_count, seeded_state_dict,
                          torchvision_names_shapes, zero_variables)

from hpajax import models, steps
from hpajax.models import efficientnet, weights

SIZE = 32  # B0's last stage at 1x1
# Two stages of two blocks, three of them residual, one of which does not expand.
TINY = dict(stages=((1, 3, 1, 8, 8, 2), (6, 5, 2, 8, 16, 2)))


def b0(**kw) -> efficientnet.EfficientNet:
    width_mult, depth_mult = efficientnet.VARIANTS["efficientnet_b0"]
    return efficientnet.EfficientNet(width_mult=width_mult, depth_mult=depth_mult, **kw)


def b4(**kw) -> efficientnet.EfficientNet:
    width_mult, depth_mult = efficientnet.VARIANTS["efficientnet_b4"]
    return efficientnet.EfficientNet(width_mult=width_mult, depth_mult=depth_mult, **kw)


def shapes(net, channels: int = 4, batch: int = 1) -> dict:
    """The model's variables as shapes (traced, nothing compiles)."""
    return abstract_init(net, (batch, SIZE, SIZE, channels))


def drawn_variables(net, seed: int = 0) -> dict:
    """The model's variables drawn with NumPy by seeded_state_dict's rules (kernels He
    normal, BN scale U(0.5, 1.5), variance U(0.5, 2), the rest N(0, 0.1)): Flax's init
    compiles one program per parameter, seconds for B0."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5 if name == "scale" else 2.0, leaf.shape)
        return rng.normal(0, 0.1, leaf.shape)

    drawn = jax.tree_util.tree_map_with_path(draw, shapes(net))
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), drawn)


@pytest.fixture(scope="module")
def b0_32px():
    """B0 at 32 px with 4 channels, its input and drawn variables. The tests run it
    op by op (no jit): after the first call each op's program is cached, and a whole
    B0's compilation costs more than its run."""
    net = b0()
    return net, images(2, SIZE), drawn_variables(net)


@pytest.mark.parametrize("name, make", [("efficientnet_b0", b0), ("efficientnet_b4", b4)])
def test_param_count_matches_torchvision(name, make):
    """3 channels, 1000 classes: torch's count. 4 channels, 28 classes: the stem
    gains one input channel, the classifier loses 972 outputs."""
    expected = reference_param_count(name)
    assert count(shapes(make(num_classes=1000), channels=3)["params"]) == expected
    stem, last = {"efficientnet_b0": (32, 1280), "efficientnet_b4": (48, 1792)}[name]
    assert count(shapes(make())["params"]) == (expected + 3 * 3 * 1 * stem
                                               + (last + 1) * (28 - 1000))


@pytest.mark.parametrize("name, make", [("efficientnet_b0", b0), ("efficientnet_b4", b4)])
def test_imported_weights_give_torchvisions_logits(name, make):
    """Seeded weights in torchvision's names (64 px): our logits equal torchvision's own;
    nothing but the BN counters is skipped."""
    imported = assert_reference_logits(name, make(num_classes=1000),
                                       models.import_rules(name))
    assert [key for key, _ in imported.skipped if not key.endswith("num_batches_tracked")] == []


def test_stages_widths_and_names_follow_torchvision():
    """B4's scaled stages (depth ×1.8 rounded up, widths ×1.4 to multiples of 8); stage 1
    does not expand; the depthwise kernels are [k, k, 1, C]."""
    params = shapes(b4())["params"]
    stages = [(2, 24), (4, 32), (4, 56), (6, 112), (6, 160), (8, 272), (2, 448)]
    blocks = {f"stage{s}_{i}" for s, (n, _) in enumerate(stages, start=1) for i in range(n)}
    assert set(params) == blocks | {"stem_conv", "stem_bn", "last_conv", "last_bn", "classifier"}
    assert params["stem_conv"]["kernel"].shape == (3, 3, 4, 48)
    assert params["last_conv"]["kernel"].shape == (1, 1, 448, 1792)
    assert params["classifier"]["kernel"].shape == (1792, 28)
    assert set(params["stage1_0"]) == {"depthwise_conv", "depthwise_bn", "se", "project_conv",
                                       "project_bn"}
    block = jax.tree.map(lambda a: a.shape, params["stage3_0"])  # 32 -> 56 channels, 5x5
    assert block == {"expand_conv": {"kernel": (1, 1, 32, 192)},
                     "expand_bn": {"scale": (192,), "bias": (192,)},
                     "depthwise_conv": {"kernel": (5, 5, 1, 192)},
                     "depthwise_bn": {"scale": (192,), "bias": (192,)},
                     "se": {"fc1": {"kernel": (1, 1, 192, 8), "bias": (8,)},
                            "fc2": {"kernel": (1, 1, 8, 192), "bias": (192,)}},
                     "project_conv": {"kernel": (1, 1, 192, 56)},
                     "project_bn": {"scale": (56,), "bias": (56,)}}


def test_stochastic_depth_rates_grow_linearly_as_torchvisions():
    """Block k of n at drop_path × k / n: B0's 16 blocks from 0 to 0.2 × 15 / 16."""
    blocks = efficientnet.block_configs(efficientnet.STAGES, 1.0, 1.0, 0.2)
    np.testing.assert_allclose([b.drop_path for b in blocks], 0.2 * np.arange(16) / 16)
    assert [b.name for b in blocks][:4] == ["stage1_0", "stage2_0", "stage2_1", "stage3_0"]
    assert [b.strides for b in blocks][:4] == [1, 2, 1, 2]


def test_a_new_head_and_a_yellow_stem_import():
    """28 classes, 4 channels: torchvision's classifier.1 is skipped as the new head, the
    stem kernel grows a yellow filter (the mean of red's and green's)."""
    state = seeded_state_dict(torchvision_names_shapes("efficientnet_b0"), seed=0)
    imported = weights.import_state(state, zero_variables(b0(), 4, SIZE), (0, 1, 2, 3),
                                    efficientnet.IMPORT_RULES)
    assert [key for key, _ in imported.skipped if not key.endswith("num_batches_tracked")] == [
        "classifier.1.weight", "classifier.1.bias"]
    rgb = state["features.0.0.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_allclose(imported.params["stem_conv"]["kernel"],
                               np.concatenate([rgb, rgb[:, :, :2].mean(2, keepdims=True)], 2),
                               rtol=1e-6)
    np.testing.assert_array_equal(imported.batch_stats["stage2_1"]["project_bn"]["var"],
                                  state["features.2.1.block.3.1.running_var"])


@pytest.mark.parametrize("train", [False, True])
def test_output_shape_and_dtype(b0_32px, train):
    """Finite float32 [2, 28] logits; every running statistic moves in training only."""
    net, x, variables = b0_32px
    logits, updates = forward(net, variables, x, train, jit=False)
    assert_logits_and_statistics(logits, updates, variables, train)


def test_bfloat16_keeps_float32_params_and_statistics():
    """Traced: float32 logits, variables and updated statistics; bfloat16 blocks."""
    assert_float32_state(b0(dtype=jnp.bfloat16), (2, SIZE, SIZE, 4), True,
                         {"stage4_1": jnp.bfloat16})


def test_init_follows_torchvision():
    """One block's init: conv kernels N(0, 2/fan_out) untruncated (a depthwise kernel's
    fan-out is C × k², as torch's), biases 0, BN 1/0."""
    block = efficientnet.MBConv(config=efficientnet.BlockConfig("b", 6, 5, 1, 64, 64, 0.0))
    params = block.init(jax.random.key(0), jnp.zeros((1, 4, 4, 64)), train=False)["params"]
    for kernel, fan_out in ((params["expand_conv"]["kernel"], 384),
                            (params["depthwise_conv"]["kernel"], 384 * 25)):
        kernel = np.asarray(kernel)
        assert abs(kernel.std() * np.sqrt(fan_out / 2) - 1) < 0.1
        assert np.abs(kernel).max() * np.sqrt(fan_out / 2) > 2.5  # a truncated one stops at 2
    assert params["se"]["fc1"]["kernel"].shape == (1, 1, 384, 16)
    np.testing.assert_array_equal(params["se"]["fc2"]["bias"], 0)
    np.testing.assert_array_equal(params["project_bn"]["scale"], 1)
    np.testing.assert_array_equal(params["project_bn"]["bias"], 0)


def test_remat_matches_plain():
    """Same variables, eval logits, stochastic depth draws, and training loss, logits,
    gradients and statistics with and without remat (on TINY: the gradients compile)."""
    net, remat = efficientnet.EfficientNet(**TINY), efficientnet.EfficientNet(**TINY, remat=True)
    x, variables = images(2, SIZE), drawn_variables(net)
    assert_same_variables(remat, variables, x.shape)
    np.testing.assert_allclose(logits_of(remat, variables, x, False, jit=False),
                               logits_of(net, variables, x, False, jit=False),
                               rtol=1e-5, atol=1e-6)
    rngs = {"dropout": jax.random.key(2)}
    drawn = [logits_of(model.clone(drop_path=0.5), variables, x, True, rngs, jit=False)
             for model in (net, remat)]
    np.testing.assert_allclose(*drawn, rtol=1e-5, atol=1e-6)
    assert_same_training_step(net, remat, variables, x, rtol=1e-4, atol=1e-6, loss=mean_square)


def test_dropout_and_stochastic_depth_draw_only_in_training_with_an_rng(b0_32px):
    """Eval logits ignore both rates and the rng; training without an rng (BatchNorm
    recalibration) gives the rate-0 model's logits, bit for bit; with one, both change
    the logits (differently for two rngs), and so do dropout alone and stochastic depth
    alone."""
    _, x, variables = b0_32px
    plain = b0(drop_path=0.0)
    assert_draws_only_with_rng(plain, b0(dropout=0.5, drop_path=0.5), variables, x, jit=False)
    plain_train = logits_of(plain, variables, x, True, jit=False)
    for model in (b0(dropout=0.5, drop_path=0.0), b0(drop_path=0.5)):
        drawn = logits_of(model, variables, x, True, {"dropout": jax.random.key(2)}, jit=False)
        assert np.abs(drawn - plain_train).max() > 1e-3


def test_stochastic_depth_drops_whole_residual_branches(b0_32px):
    """With an rng, a residual block's output minus its input is, for each sample, either
    0 or its projection's BN output / (1 - rate); both happen. A block that changes the
    shape has no residual: its projection is its output."""
    _, x, variables = b0_32px
    net = b0(drop_path=0.8)
    _, state = net.apply(variables, x, train=True, capture_intermediates=True,
                         mutable=["batch_stats", "intermediates"],
                         rngs={"dropout": jax.random.key(3)})
    out = jax.tree.map(np.asarray, state["intermediates"])
    blocks = efficientnet.block_configs(efficientnet.STAGES, 1.0, 1.0, 0.8)
    dropped = []
    for before, block in zip(blocks, blocks[1:]):
        branch, after = out[block.name]["project_bn"]["__call__"][0], out[block.name]["__call__"][0]
        if block.strides == 2 or block.in_features != block.features:
            np.testing.assert_array_equal(after, branch)
            continue
        for delta, sample_branch in zip(after - out[before.name]["__call__"][0], branch):
            dropped.append(not delta.any())
            if not dropped[-1]:
                np.testing.assert_allclose(delta, sample_branch / (1 - block.drop_path),
                                           rtol=1e-4, atol=1e-5)
    assert len(dropped) == 2 * 9 and 0 < sum(dropped) < len(dropped)


def test_layer_depths():
    """The stem 0, B0's 16 blocks 1-16 in order, the last conv and BN 17, the head 18."""
    depths = steps.layer_depths(shapes(b0())["params"], efficientnet.layer_key)
    blocks = efficientnet.block_configs(efficientnet.STAGES, 1.0, 1.0, 0.2)
    assert [depths[block.name] for block in blocks] == list(range(1, 17))
    assert {name: depths[name] for name in ("stem_conv", "stem_bn", "last_conv", "last_bn",
                                            "classifier")} == {
        "stem_conv": 0, "stem_bn": 0, "last_conv": 17, "last_bn": 17, "classifier": 18}


def test_from_config():
    cfg = ml_collections.ConfigDict(dict(name="efficientnet_b0", dtype="bfloat16"))
    net = efficientnet.from_config(cfg, jnp.bfloat16)
    assert (net.width_mult, net.depth_mult) == (1.0, 1.0)
    assert (net.dtype, net.dropout, net.drop_path, net.remat, net.num_classes) == (
        jnp.bfloat16, 0.0, 0.2, False, 28)
    cfg.update(dropout=0.4, drop_path=0.1, remat=True)
    net = efficientnet.from_config(cfg, jnp.float32)
    assert (net.dropout, net.drop_path, net.remat) == (0.4, 0.1, True)
    net = efficientnet.from_config(ml_collections.ConfigDict(dict(name="efficientnet_b4")),
                                   jnp.float32)
    assert (net.width_mult, net.depth_mult) == (1.4, 1.8)
    with pytest.raises(ValueError, match="efficientnet_b7"):
        efficientnet.from_config(ml_collections.ConfigDict(dict(name="efficientnet_b7")),
                                 jnp.float32)
