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


def images(batch: int, size: int, channels: int = 4, seed: int = 0) -> jax.Array:
    """Random float32 images in [-1, 1], as the "inception" normalization gives."""
    return jax.random.uniform(jax.random.key(seed), (batch, size, size, channels), minval=-1)


def shapes(net: inception.Inception3, channels: int, side: int = SIZE) -> dict:
    """Shapes and dtypes of ``net``'s variables (nothing compiles)."""
    x = jax.ShapeDtypeStruct((1, side, side, channels), jnp.float32)
    return jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False), x)


def count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def reference_keys() -> dict[str, tuple[int, ...]]:
    """The reference's state-dict keys and shapes but num_batches_tracked's."""
    return {key: shape for key, shape in torchvision_names_shapes(NAME)
            if not key.endswith("num_batches_tracked")}


def apply(net, variables, x, train: bool, **rngs):
    """Compiled logits and batch statistics (updated in training)."""
    def forward(v, x, r):
        logits, state = net.apply(v, x, train=train, mutable=["batch_stats"], rngs=r)
        return logits, state["batch_stats"]
    return jax.jit(forward)(variables, x, rngs)


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
    return images(2, SIZE)


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


@pytest.fixture(scope="module")
def outputs(net, variables, x) -> dict[bool, tuple[jax.Array, dict]]:
    """train -> the plain model's logits and batch statistics."""
    return {train: apply(net, variables, x, train) for train in (False, True)}


@pytest.mark.parametrize("train", [False, True])
def test_output_shape_and_dtype(outputs, variables, train):
    logits, stats = outputs[train]
    assert (logits.shape, logits.dtype) == ((2, 28), jnp.float32)
    assert np.isfinite(logits).all() and np.abs(logits).max() > 0.1
    changed = not np.array_equal(stats["Mixed_7c"]["branch_pool"]["bn"]["mean"],
                                 variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["mean"])
    assert changed == train  # the running statistics move in training only


def test_bfloat16_keeps_float32_params_and_statistics():
    net = inception.Inception3(dtype=jnp.bfloat16)
    variables = shapes(net, 4)
    x = jax.ShapeDtypeStruct((2, SIZE, SIZE, 4), jnp.float32)
    logits, state = jax.eval_shape(
        lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats", "intermediates"],
                               capture_intermediates=True), variables, x)
    for tree in (variables, state["batch_stats"]):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
    assert logits.dtype == jnp.float32
    assert state["intermediates"]["Mixed_6b"]["__call__"][0].dtype == jnp.bfloat16


def test_block_shapes_follow_torchvision_at_299_px():
    """torchvision's comments at 299 px: 35, 17 and 8 px after the stem and the two
    stride-2 blocks, 256/288/288, 768 and 1280/2048/2048 channels."""
    net = inception.Inception3()
    x = jax.ShapeDtypeStruct((1, 299, 299, 4), jnp.float32)
    _, state = jax.eval_shape(lambda v, x: net.apply(
        v, x, train=False, capture_intermediates=True, mutable=["intermediates"]),
        shapes(net, 4, 299), x)
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
    """``remat=True`` wraps each Inception block in a checkpoint and keeps the variables,
    training logits, gradients and statistics, at 80 px. The values on six blocks,
    one or two of each kind (half the compilation of all eleven), named and shaped as the
    full model's, so that they take its variables."""
    names = ("Mixed_5b", "Mixed_5c", "Mixed_6a", "Mixed_6b", "Mixed_7a", "Mixed_7b")
    blocks = tuple(block for block in inception.MIXED if block[0] in names)
    plain, remat = (inception.Inception3(blocks=blocks, remat=r) for r in (False, True))
    x = images(2, 80, seed=1)
    variables = {collection: {name: tree for name, tree in variables[collection].items()
                              if not name.startswith("Mixed_") or name in names}
                 for collection in variables}
    assert jax.tree.structure(shapes(remat, 4)) == jax.tree.structure(shapes(plain, 4))
    assert jax.tree.structure(shapes(plain, 4)) == jax.tree.structure(variables)

    def checkpoints(net):
        x = jax.ShapeDtypeStruct((1, 80, 80, 4), jnp.float32)
        jaxpr = jax.make_jaxpr(lambda v, x: net.apply(v, x, train=False))(shapes(net, 4), x)
        return sum(any(word in eqn.primitive.name for word in ("remat", "checkpoint"))
                   for eqn in jaxpr.jaxpr.eqns)

    assert (checkpoints(inception.Inception3(remat=True)), checkpoints(plain)) == (11, 0)

    def grads(net):
        def loss(params):
            logits, updates = net.apply({**variables, "params": params}, x, train=True,
                                        mutable=["batch_stats"])
            return jnp.sum(logits * jnp.arange(28.0) / 28), (logits, updates["batch_stats"])
        return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

    def close(got, want):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

    (g_remat, (logits_remat, s_remat)), (g_plain, (logits_plain, s_plain)) = (
        grads(remat), grads(plain))
    np.testing.assert_allclose(logits_remat, logits_plain, rtol=1e-6, atol=1e-6)
    jax.tree.map(close, g_remat, g_plain)
    jax.tree.map(close, s_remat, s_plain)


def test_dropout_draws_only_in_training_with_an_rng(outputs, variables, x):
    """Dropout 0.5 is the identity in eval mode and in training without a "dropout" rng
    (BatchNorm recalibration), and draws with one."""
    dropped = inception.Inception3(dropout=0.5)
    plain_eval, plain_train = outputs[False][0], outputs[True][0]
    np.testing.assert_array_equal(apply(dropped, variables, x, False)[0], plain_eval)
    np.testing.assert_array_equal(apply(dropped, variables, x, True)[0], plain_train)
    drawn = apply(dropped, variables, x, True, dropout=jax.random.key(0))[0]
    assert np.abs(drawn - plain_train).max() > 1e-3


def test_init_is_torchvisions():
    """Kernels N(0, 0.1) untruncated (torchvision's init_weights), BN 1/0, fc bias 0;
    on the stem alone (no Inception blocks), which is quick to compile."""
    net = inception.Inception3(blocks=())
    params = jax.jit(lambda x: net.init(jax.random.key(1), x, train=False))(
        images(1, 80))["params"]
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
