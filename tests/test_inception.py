"""hpajax.models.inception: torchvision's Inception-v3 without its auxiliary head.

Shapes and counts are traced only (``jax.eval_shape``). The compiled checks
start from the reference's seeded weights imported for 4 channels (no
``init`` to compile) with a random 28-logit ``fc``, at 96 px (the golden
file's side) or 80 px (remat's gradients).
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from backbone_checks import (abstract_init, assert_draws_only_with_rng, assert_float32_state,
                             assert_logits_and_statistics, assert_same_training_step,
                             assert_same_variables, count, forward, images, remat_checkpoints,
                             traced_forward)
from test_weights import (assert_reference_logits, reference_param_count, seeded_state_dict,
                          torchvision_names_shapes, zero_variables)

from hpajax import models, steps
from hpajax.models import inception, weights

NAME = "inception_v3"
SIZE = 96  # the golden file's side (inception_v3_input_shape)
# torchvision's inception_v3(aux_logits=False): the reference's count less AuxLogits'.
TORCHVISION_PARAMS_WITHOUT_AUX = 23_834_568
AUX_REASON = "the auxiliary head: hpajax trains without it"
# torch's leaf names of our variables' leaves.
TORCH_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias",
                "mean": "running_mean", "var": "running_var"}


def shapes(net: inception.Inception3, channels: int, side: int = SIZE) -> dict:
    """Shapes and dtypes of ``net``'s variables (nothing compiles)."""
    return abstract_init(net, (1, side, side, channels))


def reference_keys() -> dict[str, tuple[int, ...]]:
    """The reference's state-dict keys and shapes but num_batches_tracked's."""
    return {key: shape for key, shape in torchvision_names_shapes(NAME)
            if not key.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def net() -> inception.Inception3:
    return inception.Inception3()


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    """The reference's seeded weights, in torchvision's names."""
    return seeded_state_dict(torchvision_names_shapes(NAME), seed=0)


@pytest.fixture(scope="module")
def imported(net, state) -> weights.Imported:
    """``state`` imported for red, green, blue, yellow."""
    return weights.import_state(state, zero_variables(net, 4, SIZE), (0, 1, 2, 3),
                                inception.IMPORT_RULES)


@pytest.fixture(scope="module")
def variables(imported) -> dict:
    """The imported variables with a random ``fc`` (the import leaves the new one as it was)."""
    rng = np.random.default_rng(0)
    fc = {"kernel": rng.normal(0, 0.02, (2048, 28)).astype(np.float32),
          "bias": rng.normal(0, 0.1, 28).astype(np.float32)}
    return {"params": {**imported.params, "fc": fc}, "batch_stats": imported.batch_stats}


@pytest.fixture(scope="module")
def x() -> jax.Array:
    """Random images in [-1, 1], as the "inception" normalization gives."""
    return images(2, SIZE, minval=-1.0)


def test_param_count_is_torchvisions_without_the_auxiliary_head():
    """3 channels, 1,000 classes: the reference's count less AuxLogits' parameters
    (torchvision's ``inception_v3(aux_logits=False)``); 4 channels, 28 classes: the
    difference."""
    aux = sum(math.prod(shape) for key, shape in reference_keys().items()
              if key.startswith("AuxLogits.") and not key.endswith(("running_mean",
                                                                     "running_var")))
    assert reference_param_count(NAME) - aux == TORCHVISION_PARAMS_WITHOUT_AUX
    params = shapes(inception.Inception3(num_classes=1000), 3)["params"]
    assert count(params) == TORCHVISION_PARAMS_WITHOUT_AUX
    stem_extra = 3 * 3 * (4 - 3) * 32
    fc_change = 2048 * (28 - 1000) + (28 - 1000)
    assert count(shapes(inception.Inception3(), 4)["params"]) == (
        TORCHVISION_PARAMS_WITHOUT_AUX + stem_extra + fc_change)


def test_names_and_shapes_are_torchvisions_without_aux_logits():
    """Every variable, read as a torch key (dots for nesting, torch's leaf names and
    layouts), is the reference's key of the same shape, and back: AuxLogits aside."""
    variables = shapes(inception.Inception3(num_classes=1000), 3)
    ours = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in traverse_util.flatten_dict(variables[collection]).items():
            shape = leaf.shape
            if len(shape) == 4:  # [kh, kw, I, O] -> [O, I, kh, kw]
                shape = (shape[3], shape[2], shape[0], shape[1])
            elif len(shape) == 2:  # [in, out] -> [out, in]
                shape = shape[::-1]
            ours[".".join((*path[:-1], TORCH_LEAVES[path[-1]]))] = tuple(shape)
    expected = {k: tuple(s) for k, s in reference_keys().items()
                if not k.startswith("AuxLogits.")}
    assert ours == expected
    assert ours["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert ours["Mixed_7b.branch3x3_2b.conv.weight"] == (384, 384, 3, 1)


def test_golden_logits_skip_only_the_auxiliary_head_and_counters():
    imported = assert_reference_logits(NAME, inception.Inception3(num_classes=1000),
                                       models.import_rules(NAME))
    aux = {key for key in reference_keys() if key.startswith("AuxLogits.")}
    assert len(aux) == 12
    assert {key for key, why in imported.skipped if why == AUX_REASON} == aux
    assert all(key.endswith("num_batches_tracked") for key, why in imported.skipped
               if why != AUX_REASON)
    assert len(imported.loaded) == len(reference_keys()) - len(aux)


def test_four_channels_import_skips_the_classifiers(state, imported):
    """A 4-channel import: a yellow stem, both heads (fc new, AuxLogits absent) skipped."""
    skipped = dict(imported.skipped)
    assert skipped["fc.weight"] == "the classifier is new: 28 logits"
    assert skipped["AuxLogits.fc.weight"] == AUX_REASON
    rgb = state["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_allclose(imported.params["Conv2d_1a_3x3"]["conv"]["kernel"][:, :, 3],
                               (rgb[:, :, 0] + rgb[:, :, 1]) / 2, rtol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_output_shape_and_dtype(net, variables, x, train):
    """Finite float32 [2, 28] logits, not all near 0; every running statistic moves in
    training only."""
    logits, updates = forward(net, variables, x, train)
    assert_logits_and_statistics(logits, updates, variables, train)
    assert np.abs(logits).max() > 0.1


def test_bfloat16_keeps_float32_params_and_statistics():
    """Traced: float32 logits, variables and updated statistics; bfloat16 blocks."""
    assert_float32_state(inception.Inception3(dtype=jnp.bfloat16), (2, SIZE, SIZE, 4), True,
                         {"Mixed_6b": jnp.bfloat16})


def test_block_shapes_follow_torchvision_at_299_px():
    """torchvision's comments at 299 px: 35, 17 and 8 px after the stem and the two
    stride-2 blocks, 256/288/288, 768 and 1280/2048/2048 channels."""
    net = inception.Inception3()
    _, _, state = traced_forward(net, (1, 299, 299, 4))
    out = {name: tree["__call__"][0].shape for name, tree in state["intermediates"].items()
           if "__call__" in tree}
    assert out["Conv2d_1a_3x3"] == (1, 149, 149, 32)
    assert out["Conv2d_4a_3x3"] == (1, 71, 71, 192)
    sides = {"5": 35, "6": 17, "7": 8}
    widths = [256, 288, 288] + [768] * 5 + [1280, 2048, 2048]
    for (name, _, _), width in zip(inception.MIXED, widths, strict=True):
        assert out[name] == (1, sides[name[6]], sides[name[6]], width), name


def test_inputs_under_75_px_are_refused():
    net = inception.Inception3()
    out = jax.eval_shape(lambda v, x: net.apply(v, x, train=False), shapes(net, 4, 75),
                         jax.ShapeDtypeStruct((1, 75, 75, 4), jnp.float32))
    assert out.shape == (1, 28)
    with pytest.raises(ValueError, match="74x80 px is too small for Inception-v3.*75x75"):
        jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False),
                       jax.ShapeDtypeStruct((1, 74, 80, 4), jnp.float32))


def test_branch_pools_are_torchs():
    """Average pool 3x3/1 padded by 1 counts the padding (torch's count_include_pad);
    max pool 3x3/2 unpadded drops what a window cannot cover (floor)."""
    covered = np.array([2, 3, 3, 2])  # inputs under each window along one axis
    np.testing.assert_allclose(inception._avg_pool(jnp.ones((1, 4, 4, 1)))[0, :, :, 0],
                               np.outer(covered, covered) / 9, rtol=1e-6)
    ramp = jnp.arange(64.0).reshape(1, 8, 8, 1)
    np.testing.assert_array_equal(inception._max_pool(ramp)[0, :, :, 0],
                                  [[18, 20, 22], [34, 36, 38], [50, 52, 54]])


def test_remat_same_values_and_gradients(variables):
    """``remat=True`` wraps each Inception block in a checkpoint and keeps the variables
    and a training step's loss, logits (to 1e-6), gradients and statistics (to 1e-4 of
    each array's largest magnitude), at 80 px. The values on six blocks,
    one or two of each kind (half the compilation of all eleven), named and shaped as the
    full model's, so that they take its variables."""
    names = ("Mixed_5b", "Mixed_5c", "Mixed_6a", "Mixed_6b", "Mixed_7a", "Mixed_7b")
    blocks = tuple(block for block in inception.MIXED if block[0] in names)
    plain, remat = (inception.Inception3(blocks=blocks, remat=r) for r in (False, True))
    x = images(2, 80, seed=1, minval=-1.0)
    variables = {collection: {name: tree for name, tree in variables[collection].items()
                              if not name.startswith("Mixed_") or name in names}
                 for collection in variables}
    for net in (plain, remat):
        assert_same_variables(net, variables, x.shape)
    shape = jax.ShapeDtypeStruct((1, 80, 80, 4), jnp.float32)
    assert [remat_checkpoints(net, shapes(net, 4), shape)
            for net in (inception.Inception3(remat=True), plain)] == [11, 0]
    remat_step, plain_step = assert_same_training_step(plain, remat, variables, x, rtol=1e-4)
    np.testing.assert_allclose(remat_step.logits, plain_step.logits, rtol=1e-6, atol=1e-6)


def test_dropout_draws_only_in_training_with_an_rng(net, variables, x):
    """Dropout 0.5 is the identity in eval mode (with a "dropout" rng or without) and in
    training without one (BatchNorm recalibration), and draws with one (differently for
    two rngs)."""
    assert_draws_only_with_rng(net, inception.Inception3(dropout=0.5), variables, x)


def test_init_is_torchvisions():
    """Kernels N(0, 0.1) untruncated (torchvision's init_weights), BN 1/0, fc bias 0;
    on the stem alone (no Inception blocks), which is quick to compile."""
    net = inception.Inception3(blocks=())
    params = jax.jit(lambda x: net.init(jax.random.key(1), x, train=False))(
        images(1, 80, minval=-1.0))["params"]
    for kernel in (params["Conv2d_4a_3x3"]["conv"]["kernel"], params["fc"]["kernel"]):
        kernel = np.asarray(kernel)
        assert abs(kernel.std() / 0.1 - 1) < 0.05
        assert np.abs(kernel).max() > 0.3  # beyond a 2-std truncation
    bn = params["Conv2d_4a_3x3"]["bn"]
    np.testing.assert_array_equal(bn["scale"], 1)
    np.testing.assert_array_equal(bn["bias"], 0)
    np.testing.assert_array_equal(params["fc"]["bias"], 0)


def test_layer_depths():
    """The stem's convolutions 0, Mixed_5b ... Mixed_7c 1 ... 11, fc 12."""
    depths = steps.layer_depths(shapes(inception.Inception3(), 4)["params"],
                                inception.layer_key)
    stem = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
    assert depths == {**dict.fromkeys(stem, 0), "fc": 12,
                      **{name: depth for depth, (name, _, _) in enumerate(inception.MIXED, 1)}}


def test_from_config():
    net = inception.from_config(ml_collections.ConfigDict({"name": NAME}), jnp.bfloat16)
    assert net.blocks == inception.VARIANTS[NAME] == inception.MIXED
    assert (net.dtype, net.dropout, net.remat, net.num_classes) == (jnp.bfloat16, 0.0, False, 28)
    assert (net.bn_epsilon, net.bn_momentum) == (1e-3, 0.9)
    assert hash(net) == hash(inception.Inception3(dtype=jnp.bfloat16))  # a static argument
    cfg = ml_collections.ConfigDict({"name": NAME, "dropout": 0.5, "remat": True})
    net = inception.from_config(cfg, jnp.float32)
    assert (net.dropout, net.remat) == (0.5, True)
    assert isinstance(models.create(ml_collections.ConfigDict(
        {"name": NAME, "dtype": "float32"})), inception.Inception3)
    with pytest.raises(ValueError, match="inception_v3"):
        inception.from_config(ml_collections.ConfigDict({"name": "inception_v4"}), jnp.float32)
