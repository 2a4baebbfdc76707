"""torchvision's ResNet-18, -34 and -50 in Flax linen, NHWC.

The architecture is torchvision's (``torchvision.models.resnet``), ResNet-50
as its v1.5: a 7×7 stride-2 stem convolution with padding 3, BatchNorm,
ReLU and a 3×3 stride-2 max-pool with padding 1 (padded with -inf, as
torch's); four stages of 64/128/256/512-wide residual blocks, the first
block of stages 2-4 with stride 2; global average pooling, dropout and one
dense layer to the logits. Basic blocks (ResNet-18/34) are two 3×3
convolutions; bottleneck blocks (ResNet-50) are 1×1, 3×3 (which carries the
stride) and 1×1 to four times the width. A block whose output shape differs
from its input's adds ``1×1 conv (stride s) -> BN`` of its input instead of
the input itself. Paddings are explicit and symmetric, as torch's, so the
output side of every layer is torch's ``floor((n + 2 p - k) / s) + 1``
(Flax's ``"SAME"`` would pad one less before than after in the stride-2
stem at even sides, e.g. 2 and 3 at 32 px). Convolutions have
no bias; their kernels start as torch's ``kaiming_normal_(mode="fan_out")``;
BatchNorm uses torch's defaults (momentum 0.1, i.e. Flax's 0.9; epsilon
1e-5; scale 1, bias 0). The dense layer keeps Flax's default init (LeCun
normal kernel, zero bias), not torch's uniform one: with 28 classes it
starts from scratch either way.

Layer names follow torchvision's state-dict keys, so pretrained weights map
onto them one to one: torch's ``conv1``, ``bn1`` and ``fc`` keep their
names; block ``layerI.J`` is ``layerI_J``, with ``conv1``, ``bn1``,
``conv2``, ``bn2`` (``conv3``, ``bn3`` in a bottleneck) inside; its
``downsample.0`` (conv) and ``downsample.1`` (BN) are ``downsample_conv``
and ``downsample_bn``. Conv ``weight`` [O, I, kh, kw] is ``kernel``
[kh, kw, I, O]; BN ``weight``/``bias`` are params ``scale``/``bias`` and
``running_mean``/``running_var`` are batch_stats ``mean``/``var``;
``fc.weight`` [out, in] is ``fc`` ``kernel`` [in, out].

The model is functional like the others: ``variables = model.init(key, x,
train=False)`` holds ``params`` and ``batch_stats``; a training step calls
``model.apply(variables, x, train=True, mutable=["batch_stats"],
rngs={"dropout": key})`` (the rng only with ``dropout > 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from hpajax.models.layers import TorchLayers, numbers
from hpajax.models.weights import ImportRules

# name -> (blocks per stage, bottleneck blocks)
VARIANTS: dict[str, tuple[tuple[int, ...], bool]] = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
}
# torchvision's keys: layerI.J is layerI_J; downsample.0/.1 are downsample_conv/_bn.
IMPORT_RULES = ImportRules(renames=((r"\blayer(\d+)\.(\d+)\b", r"layer\1_\2"),
                                    (r"\bdownsample\.0\b", "downsample_conv"),
                                    (r"\bdownsample\.1\b", "downsample_bn")))
STAGE_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4  # a bottleneck block's output is 4x its width

class ResNetLayers(TorchLayers):
    """The ResNet parts' layers: convolutions start as torchvision's ResNet's."""

    conv_init = staticmethod(nn.initializers.variance_scaling(2.0, "fan_out", "normal"))


class BasicBlock(ResNetLayers):
    """ResNet-18/34 block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Attributes:
      features: output channels.
      strides: stride of ``conv1`` and of the downsample.
    """

    features: int = 64
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, NHWC out with ``features`` channels and the side divided by ``strides``."""
        y = self.conv(self.features, 3, "conv1", strides=self.strides)(x)
        y = self.norm_relu(y, train, "bn1")
        y = self.conv(self.features, 3, "conv2")(y)
        y = self.batch_norm(train, "bn2")(y)
        return nn.relu(y + shortcut(self, x, self.features, train))


class Bottleneck(ResNetLayers):
    """ResNet-50 block (v1.5): 1×1 to ``features``, 3×3 with the stride, 1×1 to 4×.

    Attributes:
      features: width of the inner convolutions; the output has 4× as many channels.
      strides: stride of ``conv2`` and of the downsample.
    """

    features: int = 64
    strides: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, NHWC out with ``4 features`` channels and the side divided by ``strides``."""
        out_features = self.features * BOTTLENECK_EXPANSION
        y = self.conv(self.features, 1, "conv1")(x)
        y = self.norm_relu(y, train, "bn1")
        y = self.conv(self.features, 3, "conv2", strides=self.strides)(y)
        y = self.norm_relu(y, train, "bn2")
        y = self.conv(out_features, 1, "conv3")(y)
        y = self.batch_norm(train, "bn3")(y)
        return nn.relu(y + shortcut(self, x, out_features, train))


def shortcut(block: ResNetLayers, x: jax.Array, out_features: int,
              train: bool) -> jax.Array:
    """``x``, or torchvision's downsample ``BN(1×1 conv stride s)`` where the shape changes."""
    if block.strides == 1 and x.shape[-1] == out_features:
        return x
    x = block.conv(out_features, 1, "downsample_conv", strides=block.strides)(x)
    return block.batch_norm(train, "downsample_bn")(x)


class ResNet(ResNetLayers):
    """torchvision's ResNet; see the module docstring.

    Attributes:
      stage_sizes: residual blocks in each of the four stages.
      bottleneck: bottleneck blocks (ResNet-50) instead of basic ones.
      num_classes: logits per image.
      dtype: computation dtype. With ``jnp.bfloat16`` the parameters and the
        BatchNorm statistics stay float32 and the logits come back float32.
      dropout: dropout rate before the final dense layer.
      remat: recompute each residual block's activations in the backward
        pass (``nn.remat``) instead of keeping them: less memory, e.g. at
        512 px, for more compute. Same variables and values either way.
      bn_momentum: running-statistics momentum (torch's 0.1 is Flax's 0.9).
      bn_epsilon: variance epsilon (torch's 1e-5).
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    num_classes: int = 28
    dropout: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps float images ``[B, H, W, C]`` to float32 logits ``[B, num_classes]``."""
        x = self.stem(x, train, STAGE_WIDTHS[0], ("conv1", "bn1"))
        block_cls = Bottleneck if self.bottleneck else BasicBlock
        if self.remat:
            block_cls = nn.remat(block_cls, static_argnums=(2,))  # argument 2: train (0 is self)
        for stage, (size, width) in enumerate(zip(self.stage_sizes, STAGE_WIDTHS), start=1):
            for index in range(size):
                strides = 2 if stage > 1 and index == 0 else 1
                x = block_cls(features=width, strides=strides, **self.layer_kwargs(),
                              name=f"layer{stage}_{index}")(x, train)
        return self.head(x, train, self.num_classes, self.dropout, "fc")


def layer_key(name: str) -> tuple[int, ...]:
    """A top-level layer's place in the network (``steps.layer_depths``): the stem, the
    blocks in order, the head."""
    if name.startswith("layer"):
        return (1, *numbers(name))
    return (2,) if name == "fc" else (0,)


def from_config(cfg: ml_collections.ConfigDict, dtype: Any) -> ResNet:
    """The variant ``cfg.name`` (a key of ``VARIANTS``) with ``cfg.dropout`` and ``cfg.remat``."""
    if cfg.name not in VARIANTS:
        raise ValueError(f"config.model.name={cfg.name!r}: choose one of {sorted(VARIANTS)}")
    stage_sizes, bottleneck = VARIANTS[cfg.name]
    return ResNet(stage_sizes=stage_sizes, bottleneck=bottleneck, dtype=dtype,
                  dropout=cfg.get("dropout", 0.0), remat=cfg.get("remat", False))
