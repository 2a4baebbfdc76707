"""hpajax.models (the seed CNN, its layers, the registry) and hpajax.xla_defaults."""

import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from hpajax import models, xla_defaults
from hpajax.models import layers
from hpajax.models import seed_cnn as model
from conftest import REPO

K3_SIZE = model.min_input_size(3)  # 76 px, the smallest (fastest) input for kernel 3
YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"
MEASURED = "0.10.2"  # a jaxlib the CPU flags were measured on


def images(batch: int, size: int, channels: int = 4, seed: int = 0) -> jax.Array:
    """Random float32 images in [0, 1]."""
    return jax.random.uniform(jax.random.key(seed), (batch, size, size, channels))


def init(net: model.SeedCNN, x: jax.Array) -> dict:
    """Variables of ``net`` for inputs like ``x`` (jitted: eager init compiles op by op)."""
    return jax.jit(lambda x: net.init(jax.random.key(1), x, train=False))(x)


def test_param_counts_match_seed_table3():
    """3-channel kernel-3 model: the seed's Table 3 per layer, minus conv biases."""
    x = jax.ShapeDtypeStruct((1, K3_SIZE, K3_SIZE, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.SeedCNN().init(jax.random.key(0), x, train=False), x)
    params = models.param_counts(variables["params"])
    stats = models.param_counts(variables["batch_stats"])
    convs = {f"block{b}_conv{c}": params[f"block{b}_conv{c}"] for b in (1, 2, 3, 4) for c in (1, 2)}
    assert list(convs.values()) == [864, 9_216, 18_432, 36_864, 73_728, 147_456, 294_912, 589_824]
    assert [params["dense1"], params["dense2"], params["logits"]] == [245_760, 131_072, 7_168 + 28]
    widths = {f"block{b}_bn{c}": f for b, f in enumerate((32, 64, 128, 256), 1) for c in (1, 2)}
    widths |= {"bn_dense1": 512, "bn_dense2": 256}
    assert {name: params[name] for name in widths} == {n: 2 * w for n, w in widths.items()}
    assert stats == {n: 2 * w for n, w in widths.items()}
    assert set(params) == set(convs) | set(widths) | {"dense1", "dense2", "logits"}


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_output_shape_and_dtype(kernel_size):
    """Each kernel runs at its minimum size (traced only, for speed)."""
    net = model.SeedCNN(kernel_size=kernel_size)
    x = jax.ShapeDtypeStruct((2, model.min_input_size(kernel_size), model.min_input_size(kernel_size), 4),
                             jnp.float32)
    logits, _ = jax.eval_shape(lambda x: net.init_with_output(jax.random.key(0), x, train=False), x)
    assert (logits.shape, logits.dtype) == ((2, 28), jnp.float32)


@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_min_input_size_is_the_smallest_side_that_survives(kernel_size):
    """Four blocks of two VALID convs and a floor 2×2 pool leave >= 1 px at the
    minimum and nothing one pixel below it."""
    def side_after_blocks(side: int) -> int:
        for _ in range(4):
            side = (side - 2 * (kernel_size - 1)) // 2
        return side

    needed = model.min_input_size(kernel_size)
    assert side_after_blocks(needed) == 1 and side_after_blocks(needed - 1) < 1


@pytest.mark.parametrize("shape", [(1, 128, 128, 4), (1, 196, 195, 4)])
def test_too_small_input_raises_at_trace_time(shape):
    net = model.SeedCNN(kernel_size=7)
    with pytest.raises(ValueError, match=rf"{shape[1]}x{shape[2]} px.*kernel_size=7.*196x196"):
        jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False),
                       jax.ShapeDtypeStruct(shape, jnp.float32))


def test_bfloat16_keeps_float32_params_stats_and_logits():
    """Inference logits agree within bfloat16 precision (about 0.7 % of their
    range here). Train mode is not compared: on these near-identical random
    images the head's batch statistics amplify rounding."""
    x = images(4, K3_SIZE)
    net16 = model.SeedCNN(dtype=jnp.bfloat16)
    variables = init(net16, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    _, stats16 = jax.jit(lambda v, x: net16.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    assert {leaf.dtype for leaf in jax.tree.leaves(stats16)} == {jnp.dtype(jnp.float32)}
    logits16, logits32 = (jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, x)
                          for net in (net16, model.SeedCNN()))
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, atol=0.02 * float(jnp.abs(logits32).max()))


def test_create_builds_the_named_model_from_its_config():
    cfg = ml_collections.ConfigDict({"name": "seed_cnn", "kernel_size": 5,
                                     "filters": [8, 16, 16, 32], "head": [64, 32],
                                     "dtype": "bfloat16"})
    net = models.create(cfg)
    assert isinstance(net, model.SeedCNN)
    assert (net.kernel_size, net.filters, net.head, net.dtype) == (5, (8, 16, 16, 32), (64, 32),
                                                                   jnp.bfloat16)
    del cfg["name"]  # a config.json written before model.name: the seed CNN
    assert isinstance(models.create(cfg), model.SeedCNN)
    with pytest.raises(ValueError, match="float16"):
        models.create(ml_collections.ConfigDict(dict(cfg, dtype="float16")))
    with pytest.raises(ValueError, match="config.model.name='resnet9'.*seed_cnn"):
        models.create(ml_collections.ConfigDict(dict(cfg, name="resnet9")))


def test_pool_equals_flax_max_pool():
    """Same values, and same gradients on random (tie-free) data; odd sides are cropped."""
    x = jax.random.normal(jax.random.key(0), (2, 9, 11, 3))
    weights = jax.random.normal(jax.random.key(1), (2, 4, 5, 3))

    def flax_pool(x):
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")

    np.testing.assert_array_equal(layers.max_pool_2x2(x), flax_pool(x))
    grads = [jax.grad(lambda x: (pool(x) * weights).sum())(x) for pool in (layers.max_pool_2x2, flax_pool)]
    np.testing.assert_array_equal(*grads)


def test_pool_splits_gradient_between_ties():
    """Documented difference from nn.max_pool: an all-equal window shares its gradient."""
    grad = jax.grad(lambda x: layers.max_pool_2x2(x).sum())(jnp.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(grad, np.full((1, 2, 2, 1), 0.25))


def test_train_step_batch_norm_uses_keras_momentum_and_epsilon():
    """block1_bn1 after one train step: running mean = 0.99 old + 0.01 batch
    mean, and its output is normalized with epsilon 1e-3 (input scaled down so
    the batch variance is comparable to epsilon)."""
    net = model.SeedCNN()
    x = 0.05 * images(4, K3_SIZE)
    variables = init(net, x)
    old_mean = jax.random.normal(jax.random.key(2), (32,))
    variables["batch_stats"]["block1_bn1"]["mean"] = old_mean
    _, state = jax.jit(lambda v, x: net.apply(v, x, train=True, capture_intermediates=True,
                                              mutable=["batch_stats", "intermediates"]))(variables, x)
    conv = state["intermediates"]["block1_conv1"]["__call__"][0]
    normed = state["intermediates"]["block1_bn1"]["__call__"][0]
    batch_mean, batch_var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
    assert float(batch_var.mean()) < 1e-2  # so epsilon 1e-3 vs 1e-5 shows
    np.testing.assert_allclose(state["batch_stats"]["block1_bn1"]["mean"],
                               0.99 * old_mean + 0.01 * batch_mean, rtol=1e-5, atol=1e-7)
    bn = variables["params"]["block1_bn1"]
    expected = (conv - batch_mean) / jnp.sqrt(batch_var + 1e-3) * bn["scale"] + bn["bias"]
    np.testing.assert_allclose(normed, nn.relu(expected), rtol=1e-4, atol=1e-5)


def _flax_batch_norm_relu(train: bool, **kwargs):
    """The reference: nn.BatchNorm with Keras' settings, then a ReLU."""
    bn = nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, **kwargs)
    return lambda variables, x: (lambda out: (nn.relu(out[0]), out[1]))(
        bn.apply(variables, x, mutable=["batch_stats"]))


def _batch_norm_variables(channels: int) -> dict:
    """Non-trivial parameters and running statistics."""
    keys = jax.random.split(jax.random.key(3), 4)
    return {"params": {"scale": 1 + 0.3 * jax.random.normal(keys[0], (channels,)),
                       "bias": 0.2 * jax.random.normal(keys[1], (channels,))},
            "batch_stats": {"mean": 0.1 * jax.random.normal(keys[2], (channels,)),
                            "var": 0.5 + jax.random.uniform(keys[3], (channels,))}}


@pytest.mark.parametrize("shape", [(4, 9, 7, 6), (16, 12)])
@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_relu_equals_flax_batch_norm_then_relu(shape, train):
    """Outputs, updated running statistics and all gradients (through the
    hand-written backward pass) match nn.BatchNorm + nn.relu, on conv-shaped
    and dense-shaped inputs."""
    x = 0.5 + jax.random.normal(jax.random.key(4), shape)
    cotangent = jax.random.normal(jax.random.key(5), shape)
    variables = _batch_norm_variables(shape[-1])
    ours = lambda v, x: layers.BatchNormReLU(use_running_average=not train).apply(  # noqa: E731
        v, x, mutable=["batch_stats"])

    @functools.partial(jax.jit, static_argnums=0)  # one compilation each, not one per op
    def outputs_and_grads(fn, params, x):
        (y, stats), pullback = jax.vjp(lambda p, x: fn({**variables, "params": p}, x), params, x)
        return y, stats, pullback((cotangent, jax.tree.map(jnp.zeros_like, stats)))

    reference = _flax_batch_norm_relu(train)
    (y, stats, grads), (y_ref, stats_ref, grads_ref) = (
        outputs_and_grads(fn, variables["params"], x) for fn in (ours, reference))
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 (stats, grads), (stats_ref, grads_ref))
    assert float(jnp.abs(grads[1]).max()) > 0.1  # gradients flow


def test_batch_norm_relu_bfloat16_keeps_float32_variables():
    x = jax.random.normal(jax.random.key(6), (8, 5, 5, 3)).astype(jnp.bfloat16)
    layer = layers.BatchNormReLU(use_running_average=False, dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(0), x)
    (y, stats), pullback = jax.vjp(lambda x: layer.apply(variables, x, mutable=["batch_stats"]), x)
    dx, = pullback((jnp.ones_like(y), jax.tree.map(jnp.zeros_like, stats)))
    assert y.dtype == dx.dtype == jnp.bfloat16
    assert {leaf.dtype for leaf in jax.tree.leaves((variables, stats))} == {jnp.dtype("float32")}
    y_ref, _ = _flax_batch_norm_relu(True, dtype=jnp.float32)(variables, x.astype(jnp.float32))
    np.testing.assert_allclose(y.astype(jnp.float32), y_ref, rtol=2e-2, atol=2e-2)


def test_apply_cpu_defaults_adds_flags_to_empty_environ():
    """The project's CPU venv has no GPU/TPU plugin, so the CPU computes."""
    environ = {}
    added = xla_defaults.apply_cpu_defaults(environ, jaxlib_version=MEASURED)
    assert added == list(xla_defaults.CPU_XLA_FLAGS)
    assert environ == {"XLA_FLAGS": " ".join(xla_defaults.CPU_XLA_FLAGS)}


def test_apply_cpu_defaults_keeps_user_flags():
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/dump", "JAX_PLATFORMS": "cpu"}
    added = xla_defaults.apply_cpu_defaults(environ, jaxlib_version=MEASURED)
    assert added == list(xla_defaults.CPU_XLA_FLAGS)
    assert environ["XLA_FLAGS"] == " ".join(["--xla_dump_to=/tmp/dump", *added])


def test_apply_cpu_defaults_never_overrides_a_user_flag():
    user = f"--xla_dump_to=/tmp/dump --{YNN_FLAG}=-individual_dot"
    environ = {"XLA_FLAGS": user}
    assert xla_defaults.apply_cpu_defaults(environ, jaxlib_version=MEASURED) == []
    assert environ == {"XLA_FLAGS": user}


@pytest.mark.parametrize("platforms", ["cuda", "tpu,cpu"])
def test_apply_cpu_defaults_skips_accelerator_platforms(platforms):
    environ = {"JAX_PLATFORMS": platforms}
    assert xla_defaults.apply_cpu_defaults(environ, jaxlib_version=MEASURED) == []
    assert environ == {"JAX_PLATFORMS": platforms}


def test_cpu_flags_only_for_measured_jaxlib_versions():
    """Outside the measured range the flag may not exist, and XLA would abort."""
    assert [xla_defaults.jaxlib_supported(v) for v in ("0.10.2", "0.10.9.dev20270101", "0.10.1",
                                                        "0.11.0")] == [True, True, False, False]


def test_another_jaxlib_gets_no_flags_and_a_warning():
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/dump"}
    with pytest.warns(UserWarning, match=r"jaxlib 0\.11\.2 is outside 0\.10\.2 <= jaxlib < 0\.11"):
        assert xla_defaults.apply_cpu_defaults(environ, jaxlib_version="0.11.2") == []
    assert environ == {"XLA_FLAGS": "--xla_dump_to=/tmp/dump"}


def test_one_off_programs_compile_at_level_1_unless_xla_flags_name_a_level():
    assert xla_defaults.one_off_compiler_options({}) == {"xla_backend_optimization_level": 1}
    assert xla_defaults.one_off_compiler_options(
        {"XLA_FLAGS": "--xla_dump_to=/tmp/d --xla_backend_optimization_level=0"}) == {}


def test_the_pinned_versions_are_the_measured_ones():
    """constraints.txt (what setup and CI install) pins a jaxlib the CPU flags
    were measured on, and the installed one is that pin; pyproject.toml keeps
    jax uncapped for accelerator hosts."""
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["jax"] == pins["jaxlib"] and xla_defaults.jaxlib_supported(pins["jaxlib"])
    assert "torch" not in pins  # an unpinned torch would resolve to a CUDA build
    assert '"jax>=0.10.2",' in (REPO / "pyproject.toml").read_text()
    if xla_defaults.installed_jaxlib() != pins["jaxlib"]:
        pytest.skip(f"jaxlib {xla_defaults.installed_jaxlib()} installed, not the pinned one")


# Prints what apply_cpu_defaults added (if argv[1] == "apply") and how many
# YNNPACK fusions XLA:CPU makes of a convolution gradient.
_YNN_PROBE = """
import sys
import jax, jax.numpy as jnp
from hpajax import xla_defaults
print(xla_defaults.apply_cpu_defaults() if sys.argv[1] == "apply" else [])
x, w = jnp.ones((8, 32, 32, 32)), jnp.ones((3, 3, 32, 32))
conv = lambda w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
print(jax.jit(jax.grad(conv)).lower(w).compile().as_text().count("__ynn_fusion"))
"""


def ynn_probe(mode: str) -> tuple[str, int]:
    """Runs _YNN_PROBE in a fresh process without the caller's XLA settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    result = subprocess.run([sys.executable, "-c", _YNN_PROBE, mode], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr  # XLA aborts on a flag it does not know
    added, fusions = result.stdout.splitlines()[:2]
    return added, int(fusions)


@pytest.mark.skipif(not xla_defaults.jaxlib_supported(),
                    reason="the CPU flags apply only on the jaxlib they were measured on")
def test_cpu_flags_are_accepted_and_apply_after_import_jax():
    """Applied after ``import jax``, the flags parse and take effect: XLA:CPU
    stops handing the convolution to YNNPACK."""
    assert ynn_probe("default") == ("[]", 1)
    assert ynn_probe("apply") == (repr(list(xla_defaults.CPU_XLA_FLAGS)), 0)


@pytest.mark.parametrize("channels, kernel, groups, strides", [
    (16, 3, 4, 1),  # grouped: SE-ResNeXt's 3x3 (XLA's forward, the gradients by slices)
    (12, 3, 3, 2),  # grouped, strided
    (8, 3, 8, 1),  # depthwise: Xception's, EfficientNet's
    (8, 5, 8, 2),  # depthwise, strided: EfficientNet's 5x5
    (6, 7, 6, 1),  # depthwise 7x7: ConvNeXt's
])
def test_grouped_conv_equals_xlas_values_and_gradients(channels, kernel, groups, strides):
    """layers.grouped_conv against lax.conv_general_dilated with feature_group_count, at an
    odd side (so the strided windows stop short of the edge): values and both gradients."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 9, channels)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, channels // groups, channels)),
                    jnp.float32)
    pad = ((kernel // 2, kernel // 2),) * 2

    def xla(x, w):
        return jax.lax.conv_general_dilated(x, w, (strides, strides), pad,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=groups)

    def ours(x, w):
        return layers.grouped_conv(x, w, strides, pad)

    want = xla(x, w)
    np.testing.assert_allclose(ours(x, w), want, rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    grads = [jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) * cotangent), argnums=(0, 1))(x, w)
             for f in (ours, xla)]
    for got, expected in zip(*grads):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_grouped_conv_module_has_nn_convs_parameters():
    """GroupedConv: nn.Conv's kernel and bias names, shapes and float32 dtype, and its
    values; bfloat16 computes in bfloat16."""
    x = jnp.ones((1, 8, 8, 6))
    ours = layers.GroupedConv(6, (3, 3), 3, padding=((1, 1), (1, 1)), use_bias=True)
    theirs = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=3)
    variables = ours.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, theirs.init(jax.random.key(0), x))
    np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x),
                               rtol=1e-6)
    half = ours.clone(dtype=jnp.bfloat16)
    assert half.apply(variables, x).dtype == jnp.bfloat16
    assert jax.tree.leaves(variables)[0].dtype == jnp.float32
