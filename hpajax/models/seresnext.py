"""timm's SE-ResNeXt-50 (32×4d) in Flax linen, NHWC.

The architecture is timm's ``seresnext50_32x4d`` (``timm.models.resnet``:
``ResNet`` of ``Bottleneck`` blocks with ``cardinality=32``, ``base_width=4``,
``attn_layer="se"``), which is torchvision's ResNet-50 (see
``hpajax.models.resnet``) but for the blocks: ``conv1`` 1×1 to the width
``floor(planes × 4 / 64) × 32`` (128, 256, 512, 1,024: twice ResNet-50's),
``conv2`` a 3×3 grouped convolution (32 groups, padding 1) that carries the
stride, ``conv3`` 1×1 to ``4 × planes``, BatchNorm after each, ReLU after the
first two; then squeeze-and-excitation ``se`` on ``bn3``'s output before the
shortcut is added: ``x × sigmoid(fc2(relu(fc1(mean over H, W of x))))``,
``fc1``/``fc2`` 1×1 convolutions with bias to ``C / 16`` channels and back
(timm's ``make_divisible(C / 16, 8)``, which is ``C // 16`` for every width
here). The stem is ResNet's: 7×7 stride-2 conv (padding 3), BN, ReLU, 3×3
stride-2 max-pool with padding 1 (-inf, as torch's); downsample shortcuts
are ``1×1 conv (stride s) -> BN``; global average pooling, dropout and
``fc``.

Cadene's SE-ResNeXt (timm's ``legacy_seresnext50_32x4d``, ``senet.py``) has
the same layers and arithmetic (stride in ``conv2``, SE reduction 16, SE
before the residual sum, 1×1 downsample) but one difference: its stem
max-pool is ``MaxPool2d(3, stride=2, ceil_mode=True)`` without padding. Its
windows start one pixel later than timm's (rows 0 to 2, 2 to 4, ... rather
than -1 to 1, 1 to 3, ...), so the values differ at every side (the golden
logits at 64 px too), and at an odd stem output side (e.g. 66 px images:
33) it has one row and column fewer (16 rather than 17). With
``ceil_mode_pool=True`` the model pools as Cadene's, so that Cadene's
weights give Cadene's logits; ``from_config`` builds timm's pooling (no
config field selects Cadene's), from which Cadene's weights still start,
their stem pool's windows one pixel off.

Convolution kernels start as timm's ``init_weights``: ``kaiming_normal_``
(fan_out, untruncated), the SE convolutions' biases at 0 (torch's are
uniform); BatchNorm at torch's defaults (momentum 0.1, i.e. Flax's 0.9,
epsilon 1e-5) except ``bn3``'s scale at 0 (timm's ``zero_init_last``: each
block starts as its shortcut); ``fc`` keeps Flax's default init, as ResNet's.

Layer names follow timm's state-dict keys as ResNet's: ``conv1``, ``bn1``,
``fc``; block ``layerI.J`` is ``layerI_J`` with ``conv1``-``conv3``,
``bn1``-``bn3``, ``se`` / ``fc1``, ``fc2`` inside; ``downsample.0`` and
``.1`` are ``downsample_conv`` and ``downsample_bn``. Cadene's keys read
the same after three renames: ``layer0.conv1`` / ``layer0.bn1`` are
``conv1`` / ``bn1``, ``se_module`` is ``se`` and ``last_linear`` is ``fc``.
A grouped conv ``weight`` [O, I / 32, kh, kw] is ``kernel``
[kh, kw, I / 32, O], as Flax's ``feature_group_count`` has it.

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
import jax.numpy as jnp
import ml_collections

from hpajax.models import resnet
from hpajax.models.layers import GroupedConv
from hpajax.models.resnet import BOTTLENECK_EXPANSION, STAGE_WIDTHS
from hpajax.models.weights import ImportRules

# name -> (blocks per stage, cardinality, base width)
VARIANTS: dict[str, tuple[tuple[int, ...], int, int]] = {
    "seresnext50_32x4d": ((3, 4, 6, 3), 32, 4),
}
# timm's keys as ResNet's; Cadene's (legacy_seresnext50_32x4d) after three renames.
IMPORT_RULES = ImportRules(renames=((r"^layer0\.", ""),
                                    (r"\.se_module\.", ".se."),
                                    (r"^last_linear\.", "fc."),
                                    *resnet.IMPORT_RULES.renames))
SE_REDUCTION = 16
# The same top-level layers as ResNet's (conv1, bn1, layerI_J, fc): the same order.
layer_key = resnet.layer_key


class SqueezeExcite(resnet.ResNetLayers):
    """timm's ``SEModule``: channels gated by ``sigmoid(fc2(relu(fc1(spatial mean))))``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """NHWC in, the same shape out: each channel of each image scaled by its gate."""
        channels = x.shape[-1]
        s = x.mean(axis=(1, 2), keepdims=True, dtype=jnp.float32).astype(self.dtype)
        s = nn.relu(self._conv(channels // SE_REDUCTION, "fc1")(s))
        return x * nn.sigmoid(self._conv(channels, "fc2")(s))

    def _conv(self, features: int, name: str) -> nn.Conv:
        """A 1×1 convolution with bias (on the 1×1 pooled map)."""
        return nn.Conv(features, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=self.conv_init, name=name)


class SEResNeXtBottleneck(resnet.ResNetLayers):
    """1×1, grouped 3×3 with the stride, 1×1 to 4 × ``features``; SE; shortcut; ReLU.

    Attributes:
      features: timm's ``planes``; the output has 4× as many channels.
      strides: stride of ``conv2`` and of the downsample.
      cardinality: groups of ``conv2``.
      base_width: width of each group at ``features`` 64.
    """

    features: int = 64
    strides: int = 1
    cardinality: int = 32
    base_width: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, NHWC out with ``4 features`` channels and the side divided by ``strides``."""
        width = self.features * self.base_width // 64 * self.cardinality
        out_features = self.features * BOTTLENECK_EXPANSION
        y = self.conv(width, 1, "conv1")(x)
        y = self.norm_relu(y, train, "bn1")
        y = GroupedConv(width, (3, 3), self.cardinality, self.strides, ((1, 1), (1, 1)),
                        dtype=self.dtype, kernel_init=self.conv_init, name="conv2")(y)
        y = self.norm_relu(y, train, "bn2")
        y = self.conv(out_features, 1, "conv3")(y)
        y = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=jnp.float32,
                         scale_init=nn.initializers.zeros, name="bn3")(y)
        y = SqueezeExcite(**self.layer_kwargs(), name="se")(y)
        return nn.relu(y + resnet.shortcut(self, x, out_features, train))


def ceil_mode_max_pool(x: jax.Array) -> jax.Array:
    """torch's ``MaxPool2d(3, stride=2, ceil_mode=True)``: no padding before, and after
    as much -inf as the last, partial window needs (one at an even side, none at odd)."""
    pads = [(0, (side + 1) % 2) for side in x.shape[1:3]]
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads)


class SEResNeXt(resnet.ResNetLayers):
    """timm's SE-ResNeXt; see the module docstring.

    Attributes:
      stage_sizes: blocks in each of the four stages.
      cardinality: groups of each block's 3×3 convolution.
      base_width: width of each group in the first stage.
      num_classes: logits per image.
      dtype: computation dtype. With ``jnp.bfloat16`` the parameters and the
        BatchNorm statistics stay float32 and the logits come back float32.
      dropout: dropout rate before ``fc``.
      remat: recompute each block's activations in the backward pass
        (``nn.remat``) instead of keeping them: less memory for more compute.
      ceil_mode_pool: the stem max-pool of Cadene's SENet (unpadded, ceil mode)
        instead of timm's ResNet's (padding 1).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    cardinality: int = 32
    base_width: int = 4
    num_classes: int = 28
    dropout: float = 0.0
    remat: bool = False
    ceil_mode_pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps float images ``[B, H, W, C]`` to float32 logits ``[B, num_classes]``."""
        if self.ceil_mode_pool:
            x = self.conv(STAGE_WIDTHS[0], 7, "conv1", strides=2)(x.astype(self.dtype))
            x = ceil_mode_max_pool(self.norm_relu(x, train, "bn1"))
        else:
            x = self.stem(x, train, STAGE_WIDTHS[0], ("conv1", "bn1"))
        block_cls = SEResNeXtBottleneck
        if self.remat:
            block_cls = nn.remat(block_cls, static_argnums=(2,))  # argument 2: train (0 is self)
        for stage, (size, width) in enumerate(zip(self.stage_sizes, STAGE_WIDTHS), start=1):
            for index in range(size):
                strides = 2 if stage > 1 and index == 0 else 1
                x = block_cls(features=width, strides=strides, cardinality=self.cardinality,
                              base_width=self.base_width, **self.layer_kwargs(),
                              name=f"layer{stage}_{index}")(x, train)
        return self.head(x, train, self.num_classes, self.dropout, "fc")


def from_config(cfg: ml_collections.ConfigDict, dtype: Any) -> SEResNeXt:
    """The variant ``cfg.name`` (a key of ``VARIANTS``) with ``cfg.dropout`` and ``cfg.remat``."""
    if cfg.name not in VARIANTS:
        raise ValueError(f"config.model.name={cfg.name!r}: choose one of {sorted(VARIANTS)}")
    stage_sizes, cardinality, base_width = VARIANTS[cfg.name]
    return SEResNeXt(stage_sizes=stage_sizes, cardinality=cardinality, base_width=base_width,
                     dtype=dtype, dropout=cfg.get("dropout", 0.0),
                     remat=cfg.get("remat", False))
