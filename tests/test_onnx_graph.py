"""hpajax.onnx_graph against JAX through onnxruntime, and the portable forms it needs.

Each function below uses a few of the converted primitives, with a free
leading dimension; onnxruntime must give JAX's values at two sizes of it.
Tolerances: float32 rounding of the same sums in another order (observed
below 1e-6).
"""

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest

from hpajax import onnx_graph, steps, tta


def run_onnx(fn, weights, x: np.ndarray) -> np.ndarray:
    shape = jax.export.symbolic_shape(", ".join(["B", *map(str, x.shape[1:])]))
    example = jax.ShapeDtypeStruct(shape, x.dtype)
    model = onnx_graph.to_onnx(fn, weights, example)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


def conv_pool_dense(w, x):
    """NHWC convolutions (strided, padded, grouped, dilated), both pools, a dense layer."""
    y = jax.lax.conv_general_dilated(x, w["k1"], (2, 1), ((1, 2), (0, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.lax.conv_general_dilated(y, w["k2"], (1, 1), "SAME", rhs_dilation=(2, 2),
                                     feature_group_count=2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y)
    y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                              ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = jax.lax.reduce_window(y, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    y = y.reshape(y.shape[0], -1) @ w["dense"] + w["bias"]
    return jax.nn.sigmoid(y)


def elementwise_and_shapes(w, x):
    """Broadcasts, reductions, flips, strided slices, selects, stacks and the math ops.

    Slices as ``lax.slice``: under a symbolic batch JAX's strided indexing gathers.
    """
    y = jax.lax.slice_in_dim(jnp.flip(x, (1, 2)), 1, 12, 2, axis=1)  # [:, 1:12:2]
    y = y * w["scale"] - jnp.mean(x, axis=(1, 2), keepdims=True)
    y = jnp.where(y > 0, jnp.sqrt(jnp.abs(y)), jnp.clip(y, -0.5, 0.5) ** 2)
    y = jnp.concatenate([y, jax.lax.rsqrt(1.0 + y * y), jnp.log1p(jnp.exp(-jnp.abs(y)))], -1)
    z = jnp.stack([y.max(axis=(1, 2)), y.min(axis=(1, 2)), jnp.tanh(y).sum(axis=(1, 2))], 1)
    return jnp.einsum("bvc,vc->bc", z, w["mix"]).astype(jnp.float32)


RNG = np.random.default_rng(0)
WEIGHTS = {
    conv_pool_dense: {"k1": RNG.normal(size=(3, 3, 3, 4)).astype(np.float32),
                      "k2": RNG.normal(size=(3, 3, 2, 6)).astype(np.float32),
                      "dense": RNG.normal(size=(2 * 2 * 6, 5)).astype(np.float32),
                      "bias": RNG.normal(size=5).astype(np.float32)},
    elementwise_and_shapes: {"scale": RNG.normal(size=3).astype(np.float32),
                             "mix": RNG.normal(size=(3, 9)).astype(np.float32)},
}


@pytest.mark.parametrize("fn", list(WEIGHTS), ids=lambda f: f.__name__)
@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_gives_jaxs_values(fn, batch):
    x = RNG.normal(size=(batch, 13, 10, 3)).astype(np.float32)
    want = np.asarray(jax.jit(fn)(WEIGHTS[fn], x))
    got = run_onnx(fn, WEIGHTS[fn], x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_weights_used_several_times_are_stored_once():
    w = {"k": RNG.normal(size=(1000,)).astype(np.float32)}
    example = jax.ShapeDtypeStruct(jax.export.symbolic_shape("B, 1000"), jnp.float32)
    model = onnx_graph.to_onnx(lambda w, x: (x * w["k"]) @ w["k"] + x @ w["k"], w, example)
    assert model.ByteSize() < 1.5 * w["k"].nbytes


def test_a_primitive_without_conversion_is_named():
    example = jax.ShapeDtypeStruct(jax.export.symbolic_shape("B, 4"), jnp.float32)
    with pytest.raises(NotImplementedError, match="no conversion of the JAX primitive 'sort'"):
        onnx_graph.to_onnx(lambda w, x: jnp.sort(x), {}, example)


@pytest.mark.parametrize("size", [24, 40])
def test_resize_as_matrices_is_the_antialiased_resize(size):
    images = jnp.asarray(RNG.uniform(size=(2, 32, 32, 3)), jnp.float32)
    # Values in [0, 1], each a weighted sum over each axis in turn: observed within 1.2e-6.
    np.testing.assert_allclose(steps.resize(images, size, as_matrices=True),
                               steps.resize(images, size), rtol=0, atol=2e-6)


@pytest.mark.parametrize("n, crop", [(8, None), (4, 20)])
def test_unrolled_views_are_the_looped_ones(n, crop):
    images = jnp.asarray(RNG.uniform(size=(2, 32, 32, 3)), jnp.float32)
    fn = lambda v: jnp.tanh(v).mean(axis=(1, 2)) * jnp.arange(1, 4) + v[:, 0, 0]  # noqa: E731
    for reduce in ("mean", "max"):
        np.testing.assert_allclose(
            tta.predict_views(fn, images, n, crop, reduce, unrolled=True),
            jax.jit(lambda x: tta.predict_views(fn, x, n, crop, reduce))(images),
            rtol=0, atol=1e-6)


def test_batch_norm_and_relu_take_the_forms_onnxruntime_folds_into_the_convolution():
    """Inference BatchNorm's ``x - mean`` as ``x + (-mean)`` (the same float) and ``max(x, 0)``
    as Relu: onnxruntime then folds both into the convolution before them."""
    w = {"k": RNG.normal(size=(3, 3, 3, 4)).astype(np.float32),
         "mean": RNG.normal(size=4).astype(np.float32), "scale": np.float32(0.5)}

    def fn(w, x):
        y = jax.lax.conv_general_dilated(x, w["k"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu((y - w["mean"]) * w["scale"])

    example = jax.ShapeDtypeStruct(jax.export.symbolic_shape("B, 6, 6, 3"), jnp.float32)
    ops = {n.op_type for n in onnx_graph.to_onnx(fn, w, example).graph.node}
    assert {"Relu", "Neg", "Add"} <= ops and not ops & {"Sub", "Max"}
    x = RNG.normal(size=(2, 6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(fn, w, x), jax.jit(fn)(w, x), rtol=1e-5, atol=1e-6)
