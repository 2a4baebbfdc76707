"""timm's legacy Xception (Cadene's port of Keras' Xception) in Flax linen, NHWC.

The architecture is timm's ``legacy_xception`` (``timm.models.xception``):
an entry ``conv1`` 3×3 stride 2 to 32 channels and ``conv2`` 3×3 to 64,
both unpadded, each followed by BatchNorm and ReLU; twelve blocks; then
``conv3`` (1,536) and ``conv4`` (2,048), separable, each followed by
BatchNorm and ReLU; global average pooling, dropout and ``fc``. A separable
convolution is a 3×3 depthwise ``conv1`` (padding 1, one group per channel)
then a 1×1 ``pointwise``, neither with bias.

A block's residual branch ``rep`` is ``reps`` times ``ReLU -> separable ->
BN``, then, at stride 2, a 3×3 stride-2 max-pool with padding 1 (-inf, as
torch's). ``block1`` has no leading ReLU (its input is ``conv2``'s, already
rectified); in the others it is timm's ``ReLU(inplace=False)``, so the
shortcut sees the block's input as it came, not rectified (the original
Cadene code rectified it in place, changing what the shortcut saw). The
shortcut is ``skip`` (1×1 conv with the stride) and ``skipbn`` where the
channels or the side change (blocks 1-3 and 12), else the input; the block
returns the sum, with no ReLU. Blocks 1-3 go to 128, 256, 728 channels at
stride 2; blocks 4-11 keep 728 with three separables; block 12 goes to
1,024 at stride 2 with its first separable at 728 (``grow_first=False``).
Paddings are torch's, explicit and symmetric.

Convolution kernels start as timm's: ``kaiming_normal_`` (fan_out,
untruncated; a depthwise kernel's fan_out is 9 × its channels, as torch's);
BatchNorm at scale 1, bias 0, torch's momentum 0.1 (Flax's 0.9) and epsilon
1e-5; ``fc`` keeps Flax's default init. timm's dropout is 0, as
``dropout``'s default.

Layer names are timm's state-dict keys with ``blockI.rep.N`` as
``blockI`` / ``rep_N``, N torch's index in the ``rep`` sequence (ReLUs and
the max-pool hold places but no weights): ``conv1``, ``bn1``, ``conv2``,
``bn2``, ``blockI`` / ``rep_N`` (a separable's ``conv1`` and ``pointwise``,
or a BN), ``skip``, ``skipbn``; ``conv3`` / ``conv1``, ``pointwise``,
``bn3``, the same for ``conv4`` and ``bn4``; ``fc``. Conv ``weight`` [O, I,
kh, kw] is ``kernel`` [kh, kw, I, O] (a depthwise [C, 1, 3, 3] is [3, 3, 1,
C], as Flax's ``feature_group_count`` has it); BN ``weight``/``bias`` are
params ``scale``/``bias`` and ``running_mean``/``running_var`` are
batch_stats ``mean``/``var``; ``fc.weight`` [out, in] is ``fc`` ``kernel``
[in, out]. The weights expect inputs normalized with mean = std = 0.5
(hpajax's "inception" normalization).

The model is functional like the others: ``variables = model.init(key, x,
train=False)`` holds ``params`` and ``batch_stats``; a training step calls
``model.apply(variables, x, train=True, mutable=["batch_stats"],
rngs={"dropout": key})`` (the rng only with ``dropout > 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from hpajax.models.layers import GroupedConv, TorchLayers, numbers
from hpajax.models.weights import ImportRules


class BlockSpec(NamedTuple):
    """One block's arguments, as timm's ``Block(in, features, reps, strides, ...)``."""

    features: int
    reps: int
    strides: int = 1
    start_with_relu: bool = True
    grow_first: bool = True


XCEPTION_BLOCKS = (BlockSpec(128, 2, 2, start_with_relu=False), BlockSpec(256, 2, 2),
                   BlockSpec(728, 2, 2), *(BlockSpec(728, 3),) * 8,
                   BlockSpec(1024, 2, 2, grow_first=False))
VARIANTS: dict[str, tuple[BlockSpec, ...]] = {"xception": XCEPTION_BLOCKS}
# timm's keys; blockI.rep.N is blockI/rep_N.
IMPORT_RULES = ImportRules(renames=((r"\brep\.(\d+)\b", r"rep_\1"),))
STEM = ((32, 2), (64, 1))  # conv1's and conv2's (channels, stride)
EXIT_WIDTHS = (1536, 2048)


class _XceptionLayers(TorchLayers):
    """The Xception parts' layers: convolutions start as timm's (kaiming normal, fan_out)."""

    conv_init = staticmethod(nn.initializers.variance_scaling(2.0, "fan_out", "normal"))

    def torch_conv(self, features: int, kernel: int, name: str, padding: int, strides: int = 1,
                   groups: int = 1) -> nn.Module:
        """torch's ``Conv2d(in, features, kernel, strides, padding, groups=groups,
        bias=False)`` (grouped: ``GroupedConv``, the same parameters)."""
        pads = ((padding, padding), (padding, padding))
        if groups > 1:
            return GroupedConv(features, (kernel, kernel), groups, strides, pads,
                               dtype=self.dtype, kernel_init=self.conv_init, name=name)
        return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=pads,
                       use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=self.conv_init, name=name)


class SeparableConv2d(_XceptionLayers):
    """3×3 depthwise ``conv1`` (padding 1) then 1×1 ``pointwise`` to ``features``.

    Attributes:
      features: output channels.
    """

    features: int = 728

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC in, NHWC out with ``features`` channels and the same side."""
        channels = x.shape[-1]
        x = self.torch_conv(channels, 3, "conv1", padding=1, groups=channels)(x)
        return self.torch_conv(self.features, 1, "pointwise", padding=0)(x)


class Block(_XceptionLayers):
    """timm's Xception ``Block``: ``rep(x) + shortcut(x)``, no final ReLU.

    Attributes:
      features: output channels.
      reps: separable convolutions in ``rep``.
      strides: 2 ends ``rep`` with a 3×3 stride-2 max-pool and strides the shortcut.
      start_with_relu: ``rep`` begins with a ReLU (not in place: the shortcut gets
        the input unrectified).
      grow_first: the first separable goes to ``features`` (else the last does).
    """

    features: int = 728
    reps: int = 3
    strides: int = 1
    start_with_relu: bool = True
    grow_first: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, NHWC out with ``features`` channels and the side divided by ``strides``."""
        channels = x.shape[-1]
        if self.grow_first:
            widths = [self.features] * self.reps
        else:
            widths = [channels] * (self.reps - 1) + [self.features]
        offset = int(self.start_with_relu)  # torch's rep index of the first separable
        y = nn.relu(x) if self.start_with_relu else x
        for i, width in enumerate(widths):
            index = 3 * i + offset  # each rep is ReLU, separable, BN in torch's sequence
            y = SeparableConv2d(features=width, **self.layer_kwargs(), name=f"rep_{index}")(y)
            if i < len(widths) - 1:  # the next rep's ReLU
                y = self.norm_relu(y, train, f"rep_{index + 1}")
            else:
                y = self.batch_norm(train, f"rep_{index + 1}")(y)
        if self.strides != 1:
            s = self.strides
            y = nn.max_pool(y, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)))
        if channels == self.features and self.strides == 1:
            return y + x
        skip = self.torch_conv(self.features, 1, "skip", padding=0, strides=self.strides)(x)
        return y + self.batch_norm(train, "skipbn")(skip)


class Xception(_XceptionLayers):
    """timm's legacy Xception; see the module docstring.

    Attributes:
      blocks: the blocks' arguments, in order.
      num_classes: logits per image.
      dtype: computation dtype. With ``jnp.bfloat16`` the parameters and the
        BatchNorm statistics stay float32 and the logits come back float32.
      dropout: dropout rate before ``fc``.
      remat: recompute each block's activations in the backward pass
        (``nn.remat``) instead of keeping them: less memory for more compute.
    """

    blocks: Sequence[BlockSpec] = XCEPTION_BLOCKS
    num_classes: int = 28
    dropout: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps float images ``[B, H, W, C]`` to float32 logits ``[B, num_classes]``."""
        x = x.astype(self.dtype)
        for index, (width, strides) in enumerate(STEM, start=1):
            x = self.torch_conv(width, 3, f"conv{index}", padding=0, strides=strides)(x)
            x = self.norm_relu(x, train, f"bn{index}")
        block_cls = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
        for index, spec in enumerate(self.blocks, start=1):
            x = block_cls(**spec._asdict(), **self.layer_kwargs(), name=f"block{index}")(x, train)
        for index, width in enumerate(EXIT_WIDTHS, start=3):
            x = SeparableConv2d(features=width, **self.layer_kwargs(), name=f"conv{index}")(x)
            x = self.norm_relu(x, train, f"bn{index}")
        return self.head(x, train, self.num_classes, self.dropout, "fc")


def layer_key(name: str) -> tuple[int, ...]:
    """A top-level layer's place in the network (``steps.layer_depths``): the stem
    (``conv1``, ``bn1``, ``conv2``, ``bn2``), the blocks in order, ``conv3``/``bn3``, then
    ``conv4``/``bn4``, the head."""
    if name.startswith("block"):
        return (1, *numbers(name))
    if name in ("conv3", "bn3", "conv4", "bn4"):
        return (2, *numbers(name))
    return (3,) if name == "fc" else (0,)


def from_config(cfg: ml_collections.ConfigDict, dtype: Any) -> Xception:
    """The variant ``cfg.name`` (a key of ``VARIANTS``) with ``cfg.dropout`` and ``cfg.remat``."""
    if cfg.name not in VARIANTS:
        raise ValueError(f"config.model.name={cfg.name!r}: choose one of {sorted(VARIANTS)}")
    return Xception(blocks=VARIANTS[cfg.name], dtype=dtype, dropout=cfg.get("dropout", 0.0),
                    remat=cfg.get("remat", False))
