"""torchvision's EfficientNet-B0 and -B4 in Flax linen, NHWC.

The architecture is torchvision's (``torchvision.models.efficientnet``): a
3×3 stride-2 stem convolution, BatchNorm and SiLU; seven stages of MBConv
blocks; a 1×1 convolution to four times the last stage's width, BatchNorm,
SiLU; global average pooling, dropout and one dense layer to the logits.
An MBConv block is a 1×1 expansion convolution, BN and SiLU (absent where
the expand ratio is 1: stage 1), a k×k depthwise convolution (which carries
the stride), BN and SiLU, squeeze-and-excitation (global average pool, 1×1
conv with bias to a quarter of the block's input width, SiLU, 1×1 conv with
bias back, sigmoid, times the features) and a 1×1 projection convolution
and BN. A block of stride 1 whose output width equals its input's adds its
input, its branch under stochastic depth (torchvision's
``StochasticDepth(mode="row")``) at rate ``drop_path × k / n`` for the k-th
of the n blocks (from 0: the last block's is ``drop_path × (n - 1) / n``).
B4 scales B0's widths by 1.4 (rounded as torchvision's ``_make_divisible``,
to a multiple of 8 within 10%) and its depths by 1.8 (rounded up). Paddings
are explicit and symmetric, torch's ``(k - 1) // 2``, so the output side is
torch's ``floor((n + 2 p - k) / s) + 1`` (Flax's ``"SAME"`` would pad one
less before than after at stride 2 and even sides).

Init is torchvision's: convolutions ``kaiming_normal_(mode="fan_out")``
(untruncated; a depthwise kernel's fan-out is its channels × k², as
torch's), their biases (squeeze-and-excitation's) 0; BatchNorm torch's
defaults (momentum 0.1, i.e. Flax's 0.9; epsilon 1e-5, which B0-B7 keep;
scale 1, bias 0); the classifier's kernel ``U(±1/sqrt(out_features))``, its
bias 0. torchvision's classifier dropout is 0.2 (B0) or 0.4 (B4); here it is
``dropout``, 0 by default as hpajax's other backbones.

Layer names follow torchvision's state-dict keys by these renames
(``IMPORT_RULES``, applied in order): ``features.0`` is ``stem``,
``features.8`` is ``last``, ``classifier.1`` is ``classifier``, block
``features.S.I`` (stage S from 1, block I from 0) is ``stageS_I``; inside a
block, torchvision's ``block.J`` numbers the layers in order, J = 0, 1, 2, 3
being ``expand``, ``depthwise``, ``se``, ``project`` (0, 1, 2 being
``depthwise``, ``se``, ``project`` in stage 1, which does not expand); the
``.0`` and ``.1`` of a conv-BN pair end in ``_conv`` and ``_bn``. So the
top level holds ``stem_conv``, ``stem_bn``, ``stage1_0`` ... ``stage7_0``,
``last_conv``, ``last_bn`` and ``classifier``; a block holds
``expand_conv``, ``expand_bn``, ``depthwise_conv``, ``depthwise_bn``,
``se`` (with ``fc1`` and ``fc2``), ``project_conv`` and ``project_bn``
(e.g. ``features.2.1.block.3.1.running_var`` is ``stage2_1`` /
``project_bn`` ``var``). Conv ``weight`` [O, I, kh, kw] is ``kernel``
[kh, kw, I, O] (a depthwise [C, 1, k, k] is [k, k, 1, C]); BN
``weight``/``bias`` are params ``scale``/``bias`` and
``running_mean``/``running_var`` batch_stats ``mean``/``var``;
``classifier.1.weight`` [out, in] is ``classifier`` ``kernel`` [in, out].
``layer_key`` orders the top-level layers for layer-wise learning-rate
decay: the stem, the blocks, ``last_conv``/``last_bn``, the classifier.

The model is functional like the others: ``variables = model.init(key, x,
train=False)`` holds ``params`` and ``batch_stats``; a training step calls
``model.apply(variables, x, train=True, mutable=["batch_stats"],
rngs={"dropout": key})`` (the rng draws both dropout and stochastic depth).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from hpajax.models.layers import GroupedConv, TorchLayers, drop_path, numbers
from hpajax.models.weights import ImportRules

# name -> (width multiplier, depth multiplier), torchvision's.
VARIANTS: dict[str, tuple[float, float]] = {
    "efficientnet_b0": (1.0, 1.0),
    "efficientnet_b4": (1.4, 1.8),
}
# B0's stages (torchvision's inverted_residual_setting): expand ratio, kernel, stride of
# the first block, input and output channels, blocks.
STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
          (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
          (6, 3, 1, 192, 320, 1))
STOCHASTIC_DEPTH = 0.2  # torchvision's stochastic_depth_prob
_ROLES = ("expand", "depthwise", "se", "project")  # a block's layers, as torchvision orders them
# See the module docstring. Stage 1 does not expand: its layers are numbered from the
# depthwise convolution.
IMPORT_RULES = ImportRules(renames=(
    (r"^classifier\.1\.", "classifier."),
    (r"^features\.0\.", "stem."),
    (r"^features\.8\.", "last."),
    (r"^features\.(\d)\.(\d+)\.block\.", r"stage\1_\2."),
    *((rf"^(stage1_\d+)\.{j}\.", rf"\1.{role}.") for j, role in enumerate(_ROLES[1:])),
    *((rf"^(stage\d_\d+)\.{j}\.", rf"\1.{role}.") for j, role in enumerate(_ROLES)),
    (r"\.0\.(\w+)$", r"_conv.\1"),
    (r"\.1\.(\w+)$", r"_bn.\1"),
))
# The classifier's kernel starts as torchvision's EfficientNet's: U(±1/sqrt(fan_out)).
_LINEAR_INIT = nn.initializers.variance_scaling(1 / 3, "fan_out", "uniform")


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: ``value`` rounded to a multiple of ``divisor``
    (at least ``divisor``), one ``divisor`` more where rounding lost over 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """One MBConv block: its name, expand ratio, kernel, stride, channels, drop rate."""

    name: str
    expand_ratio: int
    kernel: int
    strides: int
    in_features: int
    features: int
    drop_path: float


def block_configs(stages: Sequence[Sequence[int]], width_mult: float, depth_mult: float,
                  drop_path_rate: float) -> list[BlockConfig]:
    """torchvision's blocks of ``stages`` (as ``STAGES``) scaled, in order, the k-th of n
    at stochastic depth ``drop_path_rate × k / n``."""
    stages = [(expand, kernel, stride, make_divisible(c_in * width_mult),
               make_divisible(c_out * width_mult), math.ceil(layers * depth_mult))
              for expand, kernel, stride, c_in, c_out, layers in stages]
    total = sum(stage[-1] for stage in stages)
    blocks = []
    for s, (expand, kernel, stride, c_in, c_out, layers) in enumerate(stages, start=1):
        for i in range(layers):
            blocks.append(BlockConfig(f"stage{s}_{i}", expand, kernel, stride if i == 0 else 1,
                                      c_in if i == 0 else c_out, c_out,
                                      drop_path_rate * len(blocks) / total))
    return blocks


class _EfficientNetLayers(TorchLayers):
    """The EfficientNet parts' layers: convolutions start as torchvision's EfficientNet's."""

    conv_init = staticmethod(nn.initializers.variance_scaling(2.0, "fan_out", "normal"))

    def conv_bn_silu(self, x: jax.Array, features: int, kernel: int, train: bool, name: str,
                     strides: int = 1) -> jax.Array:
        """torchvision's ``Conv2dNormActivation`` with SiLU: conv, BN, SiLU."""
        x = self.conv(features, kernel, f"{name}_conv", strides=strides)(x)
        return nn.silu(self.batch_norm(train, f"{name}_bn")(x))


class SqueezeExcitation(_EfficientNetLayers):
    """torchvision's ``SqueezeExcitation`` with SiLU: ``x × sigmoid(fc2(silu(fc1(mean(x)))))``.

    Attributes:
      squeeze: channels of ``fc1``'s output.
    """

    squeeze: int = 8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC in, NHWC out, each channel scaled by its gate in (0, 1)."""
        scale = x.mean(axis=(1, 2), keepdims=True, dtype=jnp.float32).astype(self.dtype)
        scale = nn.silu(self.fc(self.squeeze, "fc1")(scale))
        return x * nn.sigmoid(self.fc(x.shape[-1], "fc2")(scale))

    def fc(self, features: int, name: str) -> nn.Conv:
        """A 1×1 convolution with a bias (starting at 0), as torchvision's ``fc1``, ``fc2``."""
        return nn.Conv(features, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=self.conv_init, name=name)


class MBConv(_EfficientNetLayers):
    """torchvision's ``MBConv``: expand, depthwise, squeeze-and-excitation, project.

    Attributes:
      config: the block's ratio, kernel, stride, channels and stochastic depth rate.
    """

    config: BlockConfig = BlockConfig("stage1_0", 1, 3, 1, 32, 16, 0.0)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, NHWC out with ``config.features`` channels, the side divided by the
        stride."""
        cfg = self.config
        y = x
        expanded = make_divisible(cfg.in_features * cfg.expand_ratio)
        if expanded != cfg.in_features:
            y = self.conv_bn_silu(y, expanded, 1, train, "expand")
        pad = (cfg.kernel - 1) // 2
        y = GroupedConv(expanded, (cfg.kernel, cfg.kernel), expanded, cfg.strides,
                        ((pad, pad), (pad, pad)), dtype=self.dtype,
                        kernel_init=self.conv_init, name="depthwise_conv")(y)
        y = nn.silu(self.batch_norm(train, "depthwise_bn")(y))
        y = SqueezeExcitation(squeeze=max(1, cfg.in_features // 4), **self.layer_kwargs(),
                              name="se")(y)
        y = self.conv(cfg.features, 1, "project_conv")(y)
        y = self.batch_norm(train, "project_bn")(y)
        if cfg.strides == 1 and cfg.in_features == cfg.features:
            y = drop_path(self, y, cfg.drop_path, train) + x
        return y


class EfficientNet(_EfficientNetLayers):
    """torchvision's EfficientNet (B0-B7); see the module docstring.

    Attributes:
      stages: per stage, as ``STAGES`` (torchvision's ``inverted_residual_setting``):
        expand ratio, kernel, stride, input and output channels, blocks, before
        ``width_mult`` and ``depth_mult`` scale them; B0's by default.
      width_mult: channel multiplier of B0's widths (B4: 1.4).
      depth_mult: multiplier of B0's blocks per stage (B4: 1.8).
      num_classes: logits per image.
      dtype: computation dtype. With ``jnp.bfloat16`` the parameters and the
        BatchNorm statistics stay float32 and the logits come back float32.
      dropout: dropout rate before the classifier (torchvision's: 0.2 B0, 0.4 B4).
      drop_path: stochastic depth, torchvision's ``stochastic_depth_prob``:
        block k of n drops its branch at ``drop_path × k / n``.
      remat: recompute each block's activations in the backward pass
        (``nn.remat``) instead of keeping them: less memory, e.g. at 512 px,
        for more compute. Same variables and values either way.
      bn_momentum: running-statistics momentum (torch's 0.1 is Flax's 0.9).
      bn_epsilon: variance epsilon (torch's 1e-5).
    """

    stages: Sequence[Sequence[int]] = STAGES
    width_mult: float = 1.0
    depth_mult: float = 1.0
    num_classes: int = 28
    dropout: float = 0.0
    drop_path: float = STOCHASTIC_DEPTH
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps float images ``[B, H, W, C]`` to float32 logits ``[B, num_classes]``."""
        blocks = block_configs(self.stages, self.width_mult, self.depth_mult, self.drop_path)
        x = self.conv_bn_silu(x.astype(self.dtype), blocks[0].in_features, 3, train, "stem",
                              strides=2)
        block_cls = MBConv
        if self.remat:
            block_cls = nn.remat(MBConv, static_argnums=(2,))  # argument 2: train (0 is self)
        for block in blocks:
            x = block_cls(config=block, **self.layer_kwargs(), name=block.name)(x, train)
        x = self.conv_bn_silu(x, 4 * blocks[-1].features, 1, train, "last")
        return self.head(x, train, self.num_classes, self.dropout, "classifier", _LINEAR_INIT)


def layer_key(name: str) -> tuple[int, ...]:
    """A top-level layer's place in the network (``steps.layer_depths``): the stem, the
    blocks in order, the last 1×1 conv and BN (torchvision's ``features.8``), the head."""
    if name.startswith("stem_"):
        return (0,)
    if name.startswith("stage"):
        return (1, *numbers(name))
    return (2,) if name.startswith("last_") else (3,)


def from_config(cfg: ml_collections.ConfigDict, dtype: Any) -> EfficientNet:
    """The variant ``cfg.name`` (a key of ``VARIANTS``) with ``cfg.dropout``,
    ``cfg.drop_path`` (torchvision's 0.2 if absent) and ``cfg.remat``."""
    if cfg.name not in VARIANTS:
        raise ValueError(f"config.model.name={cfg.name!r}: choose one of {sorted(VARIANTS)}")
    width_mult, depth_mult = VARIANTS[cfg.name]
    return EfficientNet(width_mult=width_mult, depth_mult=depth_mult, dtype=dtype,
                        dropout=cfg.get("dropout", 0.0),
                        drop_path=cfg.get("drop_path", STOCHASTIC_DEPTH),
                        remat=cfg.get("remat", False))
