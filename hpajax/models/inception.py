"""torchvision's Inception-v3 in Flax linen, NHWC, without its auxiliary head.

The architecture is torchvision's (``torchvision.models.inception``,
``Inception3``). Every convolution is a ``BasicConv2d``: conv (no bias), BatchNorm
(epsilon 1e-3, momentum 0.1, i.e. Flax's 0.9) and ReLU, the two fused as
``layers.BatchNormReLU``. The stem is
``Conv2d_1a_3x3`` (32, stride 2), ``Conv2d_2a_3x3`` (32), ``Conv2d_2b_3x3`` (64,
padding 1), a 3×3 stride-2 max-pool, ``Conv2d_3b_1x1`` (80), ``Conv2d_4a_3x3``
(192), a 3×3 stride-2 max-pool. Then eleven Inception blocks, each the
channel concatenation of its branches in torch's order: ``Mixed_5b``-``5d``
(InceptionA: 1×1; 1×1 -> 5×5; 1×1 -> 3×3 -> 3×3; avg-pool -> 1×1 of 32, 64,
64 channels), ``Mixed_6a`` (InceptionB, stride 2), ``Mixed_6b``-``6e``
(InceptionC: factorized 7×7 as 1×7 and 7×1 with 128, 160, 160, 192 inner
channels), ``Mixed_7a`` (InceptionD, stride 2), ``Mixed_7b``-``7c``
(InceptionE: 1×3 and 3×1 side by side); global average pooling, dropout
and one dense layer ``fc`` on 2,048 features.

Paddings are torch's, explicit and symmetric. Every stride-2 3×3
convolution is unpadded, as are the stem's ``Conv2d_2a_3x3`` and
``Conv2d_4a_3x3`` (each 2 px less out); the other k×k convolutions pad
``k // 2`` (2 for 5×5, 1 for 3×3); a 1×k or k×1 kernel pads ``k // 2``
along its long axis only (``(0, 3)`` for 1×7). Max-pools are 3×3, stride 2, unpadded
(torch's floor mode is ``"VALID"``); the branches' average pools are 3×3,
stride 1, padding 1, counting the zero padding in the divisor as torch's
``count_include_pad=True`` (Flax's ``avg_pool`` default).
Inputs need at least 75×75 px (torchvision's ``min_size``): at 74 px
``Mixed_7a``'s stride-2 3×3 convolutions have a 2×2 input and nothing out;
the model raises ValueError on smaller inputs.

Not here: torchvision's ``AuxLogits`` head (hpajax trains with the final
logits only; its keys are skipped on import) and ``transform_input``. The
pretrained weights see ``transform_input``'s output, which from
ImageNet-normalized input ``(x - mean) / std`` is ``(x - 0.5) / 0.5``:
exactly hpajax's "inception" input normalization (mean = std = 0.5, this
backbone's default with ``init_from``), so the model takes that input as it
is. Without the auxiliary head the parameter count is
torchvision's ``inception_v3(aux_logits=False)``'s, 23,834,568 for 3
channels and 1,000 classes (the reference's 27,161,264 less the auxiliary
head's 3,326,696). Kernels of the convolutions and of ``fc`` start as
torchvision's ``init_weights``: normal with std 0.1 (its truncation at ±2 is
20 std away); BatchNorm at scale 1, bias 0; ``fc``'s bias at 0.
torchvision's dropout is 0.5; ``dropout`` is 0 by default, as the other
backbones'.

Layer names are torchvision's state-dict keys, one dot one level of
nesting, with no renames: ``Conv2d_1a_3x3.conv`` / ``.bn``,
``Mixed_5b.branch1x1.conv`` / ``.bn``, ..., ``Mixed_7c.branch_pool.bn``,
``fc``. Conv ``weight`` [O, I, kh, kw] is ``kernel`` [kh, kw, I, O]; BN
``weight``/``bias`` are params ``scale``/``bias`` and
``running_mean``/``running_var`` are batch_stats ``mean``/``var``;
``fc.weight`` [out, in] is ``fc`` ``kernel`` [in, out].

The model is functional like the others: ``variables = model.init(key, x,
train=False)`` holds ``params`` and ``batch_stats``; a training step calls
``model.apply(variables, x, train=True, mutable=["batch_stats"],
rngs={"dropout": key})`` (the rng only with ``dropout > 0``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from hpajax.models.layers import TorchLayers, numbers
from hpajax.models.weights import ImportRules

MIN_SIDE = 75  # torchvision's min_size: smaller inputs leave Mixed_7a nothing
# torchvision's keys are the layer names; the auxiliary head has no counterpart.
IMPORT_RULES = ImportRules(skips=((r"^AuxLogits\.", "the auxiliary head: hpajax trains "
                                                    "without it"),))
# torchvision's init_weights: N(0, 0.1) for conv and linear kernels.
_INIT = nn.initializers.normal(0.1)
Pair = int | tuple[int, int]


def _pair(value: Pair) -> tuple[int, int]:
    """torch's int-or-pair argument as (height, width)."""
    return (value, value) if isinstance(value, int) else tuple(value)


class _InceptionLayers(TorchLayers):
    """The Inception parts' layers: BatchNorm epsilon 1e-3, kernels as torchvision's."""

    bn_epsilon: float = 1e-3
    conv_init = staticmethod(_INIT)

    def basic(self, x: jax.Array, train: bool, name: str, features: int, kernel: Pair = 1,
              padding: Pair = 0, strides: int = 1) -> jax.Array:
        """torchvision's ``BasicConv2d(in, features, kernel_size, padding, stride)`` on ``x``."""
        return BasicConv2d(features=features, kernel=_pair(kernel), padding=_pair(padding),
                           strides=strides, **self.layer_kwargs(), name=name)(x, train)


class BasicConv2d(_InceptionLayers):
    """``relu(bn(conv(x)))``: a convolution without bias, torch's symmetric padding.

    Attributes:
      features: output channels.
      kernel: (height, width) of the kernel.
      padding: zeros added above and below, left and right.
      strides: stride along both axes.
    """

    features: int = 32
    kernel: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, NHWC out with ``features`` channels."""
        (ph, pw), s = self.padding, self.strides
        x = nn.Conv(self.features, self.kernel, strides=(s, s), padding=((ph, ph), (pw, pw)),
                    use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=self.conv_init, name="conv")(x)
        return self.norm_relu(x, train, "bn")


def _avg_pool(x: jax.Array) -> jax.Array:
    """torch's ``avg_pool2d(x, 3, stride=1, padding=1)``: zero padding counted in the mean."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=True)


def _max_pool(x: jax.Array) -> jax.Array:
    """torch's ``max_pool2d(x, 3, stride=2)``: no padding, floor."""
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(_InceptionLayers):
    """``Mixed_5b``-``5d``: 64 + 64 + 96 + ``pool_features`` channels, same side.

    Attributes:
      pool_features: channels of the average-pool branch.
    """

    pool_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, the branches concatenated out."""
        b1 = self.basic(x, train, "branch1x1", 64)
        b5 = self.basic(x, train, "branch5x5_1", 48)
        b5 = self.basic(b5, train, "branch5x5_2", 64, 5, 2)
        b3 = self.basic(x, train, "branch3x3dbl_1", 64)
        b3 = self.basic(b3, train, "branch3x3dbl_2", 96, 3, 1)
        b3 = self.basic(b3, train, "branch3x3dbl_3", 96, 3, 1)
        bp = self.basic(_avg_pool(x), train, "branch_pool", self.pool_features)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_InceptionLayers):
    """``Mixed_6a``: 384 + 96 channels plus the input's, max-pooled; the side halves."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, the branches concatenated out at ``(side - 3) // 2 + 1``."""
        b3 = self.basic(x, train, "branch3x3", 384, 3, strides=2)
        bd = self.basic(x, train, "branch3x3dbl_1", 64)
        bd = self.basic(bd, train, "branch3x3dbl_2", 96, 3, 1)
        bd = self.basic(bd, train, "branch3x3dbl_3", 96, 3, strides=2)
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(_InceptionLayers):
    """``Mixed_6b``-``6e``: 4 × 192 channels, 7×7 factorized as 1×7 and 7×1, same side.

    Attributes:
      channels_7x7: inner channels of the factorized branches.
    """

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, the branches concatenated out."""
        c7, row, col = self.channels_7x7, ((1, 7), (0, 3)), ((7, 1), (3, 0))
        b1 = self.basic(x, train, "branch1x1", 192)
        b7 = self.basic(x, train, "branch7x7_1", c7)
        b7 = self.basic(b7, train, "branch7x7_2", c7, *row)
        b7 = self.basic(b7, train, "branch7x7_3", 192, *col)
        bd = self.basic(x, train, "branch7x7dbl_1", c7)
        for index, (features, shape) in enumerate(
                [(c7, col), (c7, row), (c7, col), (192, row)], start=2):
            bd = self.basic(bd, train, f"branch7x7dbl_{index}", features, *shape)
        bp = self.basic(_avg_pool(x), train, "branch_pool", 192)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_InceptionLayers):
    """``Mixed_7a``: 320 + 192 channels plus the input's, max-pooled; the side halves."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, the branches concatenated out at ``(side - 3) // 2 + 1``."""
        b3 = self.basic(x, train, "branch3x3_1", 192)
        b3 = self.basic(b3, train, "branch3x3_2", 320, 3, strides=2)
        b7 = self.basic(x, train, "branch7x7x3_1", 192)
        b7 = self.basic(b7, train, "branch7x7x3_2", 192, (1, 7), (0, 3))
        b7 = self.basic(b7, train, "branch7x7x3_3", 192, (7, 1), (3, 0))
        b7 = self.basic(b7, train, "branch7x7x3_4", 192, 3, strides=2)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(_InceptionLayers):
    """``Mixed_7b``-``7c``: 320 + 2 × 768 + 192 = 2,048 channels, same side."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, the branches concatenated out (each 1×3 before its 3×1)."""
        b1 = self.basic(x, train, "branch1x1", 320)
        b3 = self.basic(x, train, "branch3x3_1", 384)
        b3 = [self.basic(b3, train, "branch3x3_2a", 384, (1, 3), (0, 1)),
              self.basic(b3, train, "branch3x3_2b", 384, (3, 1), (1, 0))]
        bd = self.basic(x, train, "branch3x3dbl_1", 448)
        bd = self.basic(bd, train, "branch3x3dbl_2", 384, 3, 1)
        bd = [self.basic(bd, train, "branch3x3dbl_3a", 384, (1, 3), (0, 1)),
              self.basic(bd, train, "branch3x3dbl_3b", 384, (3, 1), (1, 0))]
        bp = self.basic(_avg_pool(x), train, "branch_pool", 192)
        return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


# An Inception block: (name, class, its attributes as (name, value) pairs: hashable, as a
# Flax module's attributes must be for the module to be).
Block = tuple[str, type[_InceptionLayers], tuple[tuple[str, int], ...]]
# The Inception blocks in order.
MIXED: tuple[Block, ...] = (
    ("Mixed_5b", InceptionA, (("pool_features", 32),)),
    ("Mixed_5c", InceptionA, (("pool_features", 64),)),
    ("Mixed_5d", InceptionA, (("pool_features", 64),)),
    ("Mixed_6a", InceptionB, ()),
    ("Mixed_6b", InceptionC, (("channels_7x7", 128),)),
    ("Mixed_6c", InceptionC, (("channels_7x7", 160),)),
    ("Mixed_6d", InceptionC, (("channels_7x7", 160),)),
    ("Mixed_6e", InceptionC, (("channels_7x7", 192),)),
    ("Mixed_7a", InceptionD, ()),
    ("Mixed_7b", InceptionE, ()),
    ("Mixed_7c", InceptionE, ()),
)
VARIANTS: dict[str, tuple[Block, ...]] = {"inception_v3": MIXED}


class Inception3(_InceptionLayers):
    """torchvision's Inception-v3 without ``AuxLogits``; see the module docstring.

    Attributes:
      blocks: the Inception blocks, (name, class, attributes) in order.
      num_classes: logits per image.
      dtype: computation dtype. With ``jnp.bfloat16`` the parameters and the
        BatchNorm statistics stay float32 and the logits come back float32.
      dropout: dropout rate before ``fc`` (torchvision's is 0.5).
      remat: recompute each Inception block's activations in the backward
        pass (``nn.remat``) instead of keeping them: less memory for more
        compute. Same variables and values either way.
      bn_momentum: running-statistics momentum (torch's 0.1 is Flax's 0.9).
      bn_epsilon: variance epsilon (torchvision's BasicConv2d's 1e-3).
    """

    blocks: tuple[Block, ...] = MIXED
    num_classes: int = 28
    dropout: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps float images ``[B, H, W, C]``, H and W >= 75, to float32 logits
        ``[B, num_classes]``."""
        if min(x.shape[1:3]) < MIN_SIDE:
            raise ValueError(f"input {x.shape[1]}x{x.shape[2]} px is too small for "
                             f"Inception-v3: it needs at least {MIN_SIDE}x{MIN_SIDE} px")
        x = self.basic(x.astype(self.dtype), train, "Conv2d_1a_3x3", 32, 3, strides=2)
        x = self.basic(x, train, "Conv2d_2a_3x3", 32, 3)
        x = _max_pool(self.basic(x, train, "Conv2d_2b_3x3", 64, 3, 1))
        x = self.basic(x, train, "Conv2d_3b_1x1", 80)
        x = _max_pool(self.basic(x, train, "Conv2d_4a_3x3", 192, 3))
        for name, block_cls, attributes in self.blocks:
            if self.remat:
                block_cls = nn.remat(block_cls, static_argnums=(2,))  # 2: train (0 is self)
            x = block_cls(**dict(attributes), **self.layer_kwargs(), name=name)(x, train)
        return self.head(x, train, self.num_classes, self.dropout, "fc", _INIT)


def layer_key(name: str) -> tuple[int, ...]:
    """A top-level layer's place in the network (``steps.layer_depths``): the stem's five
    convolutions together, the Inception blocks in order (``Mixed_5b`` ... ``Mixed_7c``),
    the head."""
    if name.startswith("Mixed_"):
        return (1, *numbers(name), ord(name[-1]))
    return (2,) if name == "fc" else (0,)


def from_config(cfg: ml_collections.ConfigDict, dtype: Any) -> Inception3:
    """The variant ``cfg.name`` (a key of ``VARIANTS``) with ``cfg.dropout`` and ``cfg.remat``."""
    if cfg.name not in VARIANTS:
        raise ValueError(f"config.model.name={cfg.name!r}: choose one of {sorted(VARIANTS)}")
    return Inception3(blocks=VARIANTS[cfg.name], dtype=dtype, dropout=cfg.get("dropout", 0.0),
                      remat=cfg.get("remat", False))
