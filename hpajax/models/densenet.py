"""torchvision's DenseNet-121 and DenseNet-169 in Flax linen, NHWC.

The architecture is torchvision's (``torchvision.models.densenet``): a 7×7
stride-2 stem convolution with padding 3, BatchNorm, ReLU and a 3×3 stride-2
max-pool with padding 1 (padded with -inf, as torch's); then dense blocks of
6/12/24/16 dense layers with a transition after every block but the last;
BatchNorm, ReLU, global average pooling, dropout and one dense layer to the
logits. A dense layer is ``BN -> ReLU -> 1×1 conv to bn_size × growth_rate
-> BN -> ReLU -> 3×3 conv (padding 1) to growth_rate``; its input is the
block's input concatenated with every earlier layer's output, and the block
returns all of them concatenated (the block's input first). A transition is
``BN -> ReLU -> 1×1 conv halving the channels -> 2×2 average pool, stride
2``. Convolutions have no bias and start as torch's ``kaiming_normal_``
(fan_in); BatchNorm uses torch's defaults (momentum 0.1, i.e. Flax's 0.9;
epsilon 1e-5; scale 1, bias 0); the classifier's kernel starts as torch's
``nn.Linear`` default (uniform, bound ``1/sqrt(fan_in)``), its bias at 0.
torchvision has no dropout; ``dropout`` adds it, at 0 by default.

Layer names follow torchvision's state-dict keys: drop the leading
``features.`` and read every dot as one level of nesting. So
``features.conv0``, ``features.norm0``, ``features.norm5`` and
``classifier`` are the top-level ``conv0``, ``norm0``, ``norm5`` and
``classifier``; ``features.denseblockI.denselayerJ.{norm1,conv1,norm2,conv2}``
is ``denseblockI`` / ``denselayerJ`` / the same four names; and
``features.transitionI.{norm,conv}`` is ``transitionI`` / ``norm``,
``conv``. Conv ``weight`` [O, I, kh, kw] is ``kernel`` [kh, kw, I, O]; BN
``weight``/``bias`` are params ``scale``/``bias`` and
``running_mean``/``running_var`` are batch_stats ``mean``/``var`` (torch's
``num_batches_tracked`` has no counterpart); ``classifier.weight``
[out, in] is ``classifier`` ``kernel`` [in, out].

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

from hpajax.models.layers import TorchLayers, numbers
from hpajax.models.weights import ImportRules

VARIANTS: dict[str, dict[str, Any]] = {
    "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64),
    "densenet169": dict(growth_rate=32, block_config=(6, 12, 32, 32), num_init_features=64),
}
# torchvision's keys without their leading "features."; its older names norm.1, conv.1,
# norm.2, conv.2 are norm1, conv1, norm2, conv2.
IMPORT_RULES = ImportRules(renames=((r"^features\.", ""),
                                    (r"\b(norm|conv)\.([12])\b", r"\1\2")))

# The classifier's kernel starts as torch's nn.Linear default,
# kaiming_uniform_(a=sqrt(5)), i.e. U(±1/sqrt(fan_in)).
_LINEAR_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class DenseLayer(TorchLayers):
    """torchvision's ``_DenseLayer``: ``growth_rate`` new channels from its input.

    Attributes:
      growth_rate: output channels.
      bn_size: the bottleneck 1×1 conv has ``bn_size × growth_rate`` channels.
    """

    growth_rate: int = 32
    bn_size: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, NHWC out with ``growth_rate`` channels and the same side."""
        x = self.norm_relu(x, train, "norm1")
        x = self.conv(self.bn_size * self.growth_rate, 1, "conv1")(x)
        x = self.norm_relu(x, train, "norm2")
        return self.conv(self.growth_rate, 3, "conv2")(x)


class DenseBlock(TorchLayers):
    """torchvision's ``_DenseBlock``: its input and every layer's output, concatenated.

    Attributes:
      num_layers: dense layers; the output has ``num_layers × growth_rate``
        more channels than the input.
      growth_rate: channels each dense layer adds.
      bn_size: bottleneck width factor of each dense layer.
      remat: recompute each dense layer's activations in the backward pass
        (``nn.remat``) instead of keeping them.
    """

    num_layers: int = 6
    growth_rate: int = 32
    bn_size: int = 4
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, NHWC out: ``x`` first, then each layer's new channels in order."""
        layer_cls = DenseLayer
        if self.remat:
            layer_cls = nn.remat(DenseLayer, static_argnums=(2,))  # argument 2: train (0 is self)
        for index in range(1, self.num_layers + 1):
            new = layer_cls(growth_rate=self.growth_rate, bn_size=self.bn_size,
                            **self.layer_kwargs(), name=f"denselayer{index}")(x, train)
            x = jnp.concatenate([x, new], axis=-1)
        return x


class Transition(TorchLayers):
    """torchvision's ``_Transition``: BN, ReLU, 1×1 conv to ``features``, 2×2 average pool.

    Attributes:
      features: output channels.
    """

    features: int = 128

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, NHWC out with ``features`` channels and half the side (floor)."""
        x = self.norm_relu(x, train, "norm")
        x = self.conv(self.features, 1, "conv")(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(TorchLayers):
    """torchvision's DenseNet; see the module docstring.

    Attributes:
      growth_rate: channels each dense layer adds.
      block_config: dense layers in each dense block.
      num_init_features: channels of the stem convolution.
      bn_size: a dense layer's bottleneck has ``bn_size × growth_rate`` channels.
      num_classes: logits per image.
      dtype: computation dtype. With ``jnp.bfloat16`` the parameters and the
        BatchNorm statistics stay float32 and the logits come back float32.
      dropout: dropout rate before the classifier.
      remat: recompute each dense layer's activations in the backward pass
        (``nn.remat``) instead of keeping them: the concatenations make
        DenseNet memory-hungry, e.g. at 512 px. Same variables and values
        either way.
      bn_momentum: running-statistics momentum (torch's 0.1 is Flax's 0.9).
      bn_epsilon: variance epsilon (torch's 1e-5).
    """

    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    num_classes: int = 28
    dropout: float = 0.0
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps float images ``[B, H, W, C]`` to float32 logits ``[B, num_classes]``."""
        x = self.stem(x, train, self.num_init_features, ("conv0", "norm0"))
        for block, num_layers in enumerate(self.block_config, start=1):
            x = DenseBlock(num_layers=num_layers, growth_rate=self.growth_rate,
                           bn_size=self.bn_size, remat=self.remat, **self.layer_kwargs(),
                           name=f"denseblock{block}")(x, train)
            if block < len(self.block_config):
                x = Transition(features=x.shape[-1] // 2, **self.layer_kwargs(),
                               name=f"transition{block}")(x, train)
        x = self.norm_relu(x, train, "norm5")
        return self.head(x, train, self.num_classes, self.dropout, "classifier", _LINEAR_INIT)


def layer_key(name: str) -> tuple[int, ...]:
    """A top-level layer's place in the network (``steps.layer_depths``): the stem, each
    dense block then its transition, the final norm and the head."""
    if name.startswith(("denseblock", "transition")):
        return (1, *numbers(name), name.startswith("transition"))
    return (0,) if name in ("conv0", "norm0") else (2,)


def from_config(cfg: ml_collections.ConfigDict, dtype: Any) -> DenseNet:
    """The variant ``cfg.name`` (a key of ``VARIANTS``) with ``cfg.dropout`` and ``cfg.remat``."""
    if cfg.name not in VARIANTS:
        raise ValueError(f"config.model.name={cfg.name!r}: choose one of {sorted(VARIANTS)}")
    return DenseNet(**VARIANTS[cfg.name], dtype=dtype, dropout=cfg.get("dropout", 0.0),
                    remat=cfg.get("remat", False))
