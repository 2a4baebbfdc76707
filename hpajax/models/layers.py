"""Layers the models share: a fast exact 2x2 max-pool, BatchNorm fused with ReLU,
stochastic depth, and the torchvision backbones' parts.

``BatchNormReLU`` has ``nn.BatchNorm``'s variables, statistics and values
followed by a ReLU, with a hand-written gradient; ``max_pool_2x2`` has
``nn.max_pool``'s values. Both exist for speed, and the tests check them
against the Flax layers they replace.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2 max-pool, stride 2, VALID (odd last row/column dropped), NHWC.

    Same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))``, computed as
    elementwise maxima of strided slices, rows first, then columns: with
    hpajax's XLA:CPU defaults the fastest exact form measured (BENCHMARKS.md,
    "Measurements behind the defaults"). ``lax.slice``, as ``x[:, 0::2]`` is
    for static shapes, also under a symbolic batch (where indexing gathers).

    Gradients equal ``nn.max_pool``'s where each window's maximum is unique.
    On ties ``nn.max_pool`` gives the whole gradient to one input; here each
    pairwise ``maximum`` splits it evenly (an all-equal window gets 1/4
    each). After a ReLU the common tie, an all-zero window, gets zero
    gradient either way.
    """
    height, width = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    rows = jnp.maximum(*(jax.lax.slice_in_dim(x, i, height, 2, axis=1) for i in (0, 1)))
    return jnp.maximum(*(jax.lax.slice_in_dim(rows, i, width, 2, axis=2) for i in (0, 1)))


def batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Float32 mean and (biased) variance over all axes but the last.

    The variance is ``E[x²] - E[x]²``, clamped at 0, as ``nn.BatchNorm``'s
    default ``use_fast_variance``: two sums over ``x``, with no centred copy
    of it.
    """
    x = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    return mean, jnp.maximum(jnp.square(x).mean(axes) - jnp.square(mean), 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_relu(x: jax.Array, scale: jax.Array, bias: jax.Array,
                    epsilon: float) -> jax.Array:
    """``relu(scale * (x - mean) / sqrt(var + epsilon) + bias)`` with the batch's
    statistics over all axes but the last; float32 math, ``x``'s dtype out.

    The gradient is written out (two per-channel sums of the incoming
    gradient, then ``dx`` in one elementwise expression) instead of left to
    autodiff, whose gradient of the same function XLA:CPU runs with more
    activation-sized intermediates (BENCHMARKS.md, "Measurements behind the
    defaults").
    """
    return _batch_norm_relu_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_relu_fwd(x, scale, bias, epsilon):
    mean, var = batch_moments(x)
    inv_std = jax.lax.rsqrt(var + epsilon)
    mul = scale * inv_std
    add = bias - mean * mul
    y = nn.relu(x.astype(jnp.float32) * mul + add).astype(x.dtype)
    return y, (x, mean, inv_std, mul, add)


def _batch_norm_relu_bwd(epsilon, residuals, dy):
    del epsilon
    x, mean, inv_std, mul, add = residuals
    x32 = x.astype(jnp.float32)
    axes, count = tuple(range(x.ndim - 1)), x.size // x.shape[-1]
    dz = jnp.where(x32 * mul + add > 0, dy.astype(jnp.float32), 0.0)  # through the ReLU
    dbias = dz.sum(axes)
    dscale = inv_std * ((dz * x32).sum(axes) - mean * dbias)  # sum of dz * x_hat
    dx = mul * (dz - (dbias + (x32 - mean) * inv_std * dscale) / count)
    return dx.astype(x.dtype), dscale, dbias


batch_norm_relu.defvjp(_batch_norm_relu_fwd, _batch_norm_relu_bwd)


class BatchNormReLU(nn.Module):
    """``nn.relu(nn.BatchNorm(...)(x))`` over all axes but the last, as one layer.

    Same variables (params ``scale``, ``bias``; batch_stats ``mean``,
    ``var``, float32), running-average update and values as ``nn.BatchNorm``
    with its default fast variance; the training gradient comes from
    ``batch_norm_relu``.

    Attributes:
      use_running_average: normalize with the running statistics
        (inference) instead of the batch's (training, which also updates
        them; not while initializing, as ``nn.BatchNorm``).
      momentum: running-average decay.
      epsilon: variance epsilon.
      dtype: output dtype.
    """

    use_running_average: bool
    momentum: float = 0.99
    epsilon: float = 1e-3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        x = x.astype(self.dtype)
        if self.use_running_average:
            mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
            add = bias - ra_mean.value * mul
            return nn.relu(x.astype(jnp.float32) * mul + add).astype(self.dtype)
        if not self.is_initializing():
            # XLA computes these once: batch_norm_relu's forward has the same sums.
            mean, var = batch_moments(jax.lax.stop_gradient(x))
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return batch_norm_relu(x, scale, bias, self.epsilon)


# The names torchvision and timm give the backbones' final dense layer: their heads are
# new (28 logits), skipped on import and warmed up alone (steps.make_optimizer).
HEAD_NAMES = ("fc", "classifier", "head")


def numbers(name: str) -> tuple[int, ...]:
    """The integers in a layer's name, in order (``"layer3_1"``: (3, 1)): the backbones'
    ``layer_key`` reads block positions from them."""
    return tuple(int(n) for n in re.findall(r"\d+", name))


def drawing(module: nn.Module, train: bool) -> bool:
    """Whether ``module``'s dropout and stochastic depth draw: in a training step only,
    which passes a ``"dropout"`` rng. BatchNorm recalibration runs ``train=True``
    without one, so that its statistics are those of the whole network, as served."""
    return train and module.has_rng("dropout")


def drop_path(module: nn.Module, x: jax.Array, rate: float, train: bool) -> jax.Array:
    """Stochastic depth (torchvision's ``StochasticDepth(mode="row")``, timm's
    ``DropPath``): each sample's ``x`` is zeroed with probability ``rate``, else
    scaled by ``1 / (1 - rate)``; ``x`` itself unless ``drawing``. Call it inside
    ``module``'s ``__call__``: it draws from ``module``'s ``"dropout"`` rng."""
    if rate == 0.0 or not drawing(module, train):
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(module.make_rng("dropout"), keep,
                                (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


class TorchLayers(nn.Module):
    """Base of the torchvision backbones' parts: their convolutions, BatchNorms, stem and head.

    Convolutions have no bias and torch's symmetric padding ``kernel // 2``
    (Flax's ``"SAME"`` pads one less before than after at stride 2);
    BatchNorm has torch's defaults (momentum 0.1, i.e. Flax's 0.9; epsilon
    1e-5) with float32 scale, bias and statistics. ``conv_init`` is the
    convolutions' kernel init; a model overrides it as torchvision does.

    Attributes:
      dtype: computation dtype; parameters and statistics stay float32.
      bn_momentum: running-statistics momentum.
      bn_epsilon: variance epsilon.
    """

    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    # torch's kaiming_normal_ (ReLU gain, fan_in); JAX's "normal" is untruncated, as torch's.
    conv_init = staticmethod(nn.initializers.variance_scaling(2.0, "fan_in", "normal"))

    def conv(self, features: int, kernel: int, name: str, strides: int = 1) -> nn.Conv:
        """A ``kernel``×``kernel`` convolution, no bias, padding ``kernel // 2`` on every side."""
        pad = kernel // 2
        return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                       padding=((pad, pad), (pad, pad)), use_bias=False, dtype=self.dtype,
                       param_dtype=jnp.float32, kernel_init=self.conv_init, name=name)

    def batch_norm(self, train: bool, name: str) -> nn.BatchNorm:
        """BatchNorm with float32 scale, bias and statistics; output in ``dtype``."""
        return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                            epsilon=self.bn_epsilon, dtype=self.dtype,
                            param_dtype=jnp.float32, name=name)

    def norm_relu(self, x: jax.Array, train: bool, name: str) -> jax.Array:
        """``relu(BatchNorm(x))`` as one ``BatchNormReLU`` (same variables and values)."""
        return BatchNormReLU(use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=self.dtype, name=name)(x)

    def layer_kwargs(self) -> dict[str, Any]:
        """The attributes a child part inherits."""
        return dict(dtype=self.dtype, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)

    def stem(self, x: jax.Array, train: bool, features: int, names: tuple[str, str]
             ) -> jax.Array:
        """torchvision's stem: 7×7 stride-2 conv, BN, ReLU, 3×3 stride-2 max-pool padded by 1.

        Flax's ``max_pool`` pads with -inf, as torch's does.
        """
        x = self.conv(features, 7, names[0], strides=2)(x.astype(self.dtype))
        x = self.norm_relu(x, train, names[1])
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    def head(self, x: jax.Array, train: bool, num_classes: int, dropout: float, name: str,
             kernel_init: Any = nn.linear.default_kernel_init) -> jax.Array:
        """Global average pooling (in float32), dropout, one dense layer: float32 logits."""
        x = x.mean(axis=(1, 2), dtype=jnp.float32).astype(self.dtype)
        x = nn.Dropout(dropout, deterministic=not drawing(self, train))(x)
        x = nn.Dense(num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=kernel_init, name=name)(x)
        return x.astype(jnp.float32)


Padding = tuple[tuple[int, int], tuple[int, int]]  # (before, after) for rows, then columns


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def grouped_conv(x: jax.Array, kernel: jax.Array, strides: int, padding: Padding) -> jax.Array:
    """A grouped convolution, NHWC, kernel [kh, kw, C / G, O]: ``nn.Conv``'s with
    ``feature_group_count=G``, same values up to float32 rounding, faster on XLA:CPU.

    XLA:CPU runs grouped and depthwise convolutions many times slower than torch, a
    grouped one's gradients hundreds of times (BENCHMARKS.md, "Grouped and depthwise
    convolutions"), but slices, products and small batched matrix products at memory
    speed. So a depthwise kernel (one input channel per group) is a sum of the
    ``kh × kw`` shifted views of ``x`` weighed per channel (``_by_slices``), forward and
    backward; a grouped one keeps XLA's forward and takes its gradients from
    ``_by_slices``, which multiplies each group's patch by its matrix.
    """
    if _depthwise(x, kernel):
        return _by_slices(x, kernel, strides, padding)
    return jax.lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1] // kernel.shape[2])


def _grouped_conv_fwd(x, kernel, strides, padding):
    return grouped_conv(x, kernel, strides, padding), (x, kernel)


def _grouped_conv_bwd(strides, padding, residuals, dy):
    x, kernel = residuals
    _, vjp = jax.vjp(lambda x, k: _by_slices(x, k, strides, padding), x, kernel)
    return vjp(dy)


grouped_conv.defvjp(_grouped_conv_fwd, _grouped_conv_bwd)


def _depthwise(x: jax.Array, kernel: jax.Array) -> bool:
    """One input channel per group and one output per input channel."""
    return kernel.shape[2] == 1 and kernel.shape[3] == x.shape[-1]


def _by_slices(x: jax.Array, kernel: jax.Array, strides: int, padding: Padding) -> jax.Array:
    """``grouped_conv`` from the ``kh × kw`` strided slices of the padded ``x``: weighed
    and summed per channel (depthwise), or stacked into patches that an einsum
    multiplies by each group's [``kh kw C/G``, ``O/G``] matrix."""
    (kh, kw, per_group, out), channels = kernel.shape, x.shape[-1]
    groups = channels // per_group
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    rows = (x.shape[1] - kh) // strides + 1
    cols = (x.shape[2] - kw) // strides + 1
    views = [jax.lax.slice(x, (0, i, j, 0),
                           (x.shape[0], i + (rows - 1) * strides + 1,
                            j + (cols - 1) * strides + 1, channels), (1, strides, strides, 1))
             for i in range(kh) for j in range(kw)]
    taps = kernel.reshape(kh * kw, per_group, out)
    if _depthwise(x, kernel):  # sums in float32, as a convolution's
        y = sum(view.astype(jnp.float32) * taps[k, 0].astype(jnp.float32)
                for k, view in enumerate(views))
        return y.astype(x.dtype)
    patches = jnp.stack(views, axis=3).reshape(*views[0].shape[:3], kh * kw, groups, per_group)
    weights = taps.reshape(kh * kw, per_group, groups, out // groups)
    y = jnp.einsum("bhwkgc,kcgo->bhwgo", patches, weights, preferred_element_type=jnp.float32)
    return y.reshape(*y.shape[:3], out).astype(x.dtype)


class GroupedConv(nn.Module):
    """``nn.Conv`` with ``feature_group_count=groups`` (the same ``kernel`` [kh, kw,
    C / groups, features] and ``bias`` parameters, float32; ``dtype`` computation),
    computed by ``grouped_conv``.

    Attributes:
      features: output channels.
      kernel_size: (kh, kw).
      groups: channel groups (``features`` for a depthwise convolution).
      strides: stride along both axes.
      padding: explicit (before, after) zeros for rows, then columns.
      use_bias: add a bias.
      dtype: computation dtype.
      kernel_init: the kernel's initializer.
    """

    features: int
    kernel_size: tuple[int, int]
    groups: int
    strides: int = 1
    padding: Padding = ((0, 0), (0, 0))
    use_bias: bool = False
    dtype: Any = jnp.float32
    kernel_init: Any = nn.linear.default_kernel_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (*self.kernel_size, x.shape[-1] // self.groups, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        y = grouped_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.strides,
                         tuple(tuple(p) for p in self.padding))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y
