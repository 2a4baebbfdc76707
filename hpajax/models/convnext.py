"""torchvision's ConvNeXt-Tiny in Flax linen, NHWC.

The architecture is torchvision's (``torchvision.models.convnext``): a 4×4
stride-4 stem convolution (no padding, with bias) and a LayerNorm; four
stages of 3/3/9/3 ConvNeXt blocks, 96/192/384/768 wide, with a downsampling
(LayerNorm, then a 2×2 stride-2 convolution with bias, no padding) between
stages; global average pooling, LayerNorm, dropout and one dense layer to
the logits. A block is ``x + drop_path(layer_scale * pwconv2(gelu(pwconv1(
norm(dwconv(x))))))``: a depthwise 7×7 convolution with padding 3 and bias,
a LayerNorm, a dense layer to 4× the width, the exact (erf) GELU of torch's
``nn.GELU``, a dense layer back, a per-channel ``layer_scale`` (1e-6 at
init) and stochastic depth (torchvision's ``StochasticDepth(mode="row")``).
Block ``k`` of the 18 (from 0) drops at ``drop_path * k / 17``, torchvision's
``stochastic_depth_prob * stage_block_id / (total_stage_blocks - 1.0)``:
0 for the first block, ``drop_path`` (0.1 as torchvision's) for the last.
There is no BatchNorm: ``model.init`` gives ``params`` only, and a training
step's ``mutable=["batch_stats"]`` gets no statistics back.

Every LayerNorm is torchvision's (``LayerNorm2d`` over the channels, or
``nn.LayerNorm`` in the block's channels-last part): Flax's over the last
axis, epsilon 1e-6, with torch's variance ``E[(x - mean)²]`` (Flax's faster
``E[x²] - E[x]²`` loses digits where a pixel's mean is large against its
spread). Its statistics and normalization are float32 also with
``dtype=jnp.bfloat16`` (Flax upcasts); only its output is ``dtype``. Flax's
``VALID`` stem and downsampling are torch's ``padding=0``; the depthwise
convolution's padding 3 is written out. Kernels start as torchvision's
``trunc_normal_(std=0.02)``, whose bounds are an absolute ±2, i.e. 100
standard deviations: a plain normal; biases at 0, LayerNorms 1 and 0.
torchvision has no dropout; ``dropout`` adds it before the classifier, at 0
by default.

Layer names follow torchvision's state-dict keys with ``features.I`` and
its index inside flattened into one name: ``features.0.0`` (stem conv) and
``features.0.1`` (stem norm) are the top-level ``features0_conv`` and
``features0_norm``; block ``features.I.J`` (I = 1, 3, 5, 7) is
``featuresI_J``, inside which ``block.0``, ``block.2``, ``block.3`` and
``block.5`` are ``dwconv``, ``norm``, ``pwconv1`` and ``pwconv2`` (the
ConvNeXt paper's names) and ``layer_scale`` keeps its name; downsampling
``features.I.0`` (norm) and ``features.I.1`` (conv) (I = 2, 4, 6) are
``featuresI_norm`` and ``featuresI_conv``; the head's ``classifier.0``
(LayerNorm, loaded with the rest) is ``classifier_norm`` and
``classifier.2`` (the dense layer, new) is ``classifier``. Conv ``weight``
[O, I, kh, kw] is ``kernel`` [kh, kw, I, O] (depthwise: [7, 7, 1, C]);
linear ``weight`` [out, in] is ``kernel`` [in, out]; a LayerNorm's
``weight`` is ``scale``. torchvision's ``layer_scale`` [C, 1, 1] broadcasts
over an NCHW map; here it is [C], as a LayerNorm's scale, broadcasting over
NHWC, and ``IMPORT_RULES``' ``fit`` reshapes it on import.

``ConvNeXt`` is a ``TorchLayers`` for the attributes the trainer sets on
every backbone (``steps`` clones the model with ``bn_momentum=0.0`` for its
BatchNorm recalibration, which a model without statistics skips); its
BatchNorm attributes are unused. A training step calls ``model.apply(
variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})``:
stochastic depth and dropout draw only with that rng (``layers.drawing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hpajax.models import layers
from hpajax.models.weights import ImportRules

VARIANTS: dict[str, dict[str, Any]] = {
    "convnext_tiny": dict(depths=(3, 3, 9, 3), widths=(96, 192, 384, 768)),
}
EXPANSION = 4  # pwconv1's width is 4x the block's
LAYER_NORM_EPSILON = 1e-6
LAYER_SCALE_INIT = 1e-6
# torchvision's Conv2d and Linear kernels: trunc_normal_(std=0.02) within ±2 (absolute).
_KERNEL_INIT = nn.initializers.normal(0.02)


def _fit_layer_scale(key: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """torchvision's ``layer_scale`` [C, 1, 1] (NCHW) as the NHWC block's [C]; any other
    tensor unchanged (its shape is then refused)."""
    del shape
    return value.reshape(-1) if key.endswith(".layer_scale") else value


IMPORT_RULES = ImportRules(
    renames=((r"^features\.0\.0\.", "features0_conv."),
             (r"^features\.0\.1\.", "features0_norm."),
             (r"^features\.([246])\.0\.", r"features\1_norm."),
             (r"^features\.([246])\.1\.", r"features\1_conv."),
             (r"^features\.(\d+)\.(\d+)\.", r"features\1_\2."),  # blocks: features.I.J
             (r"\.block\.0\.", ".dwconv."), (r"\.block\.2\.", ".norm."),
             (r"\.block\.3\.", ".pwconv1."), (r"\.block\.5\.", ".pwconv2."),
             (r"^classifier\.0\.", "classifier_norm."),
             (r"^classifier\.2\.", "classifier.")),
    fit=_fit_layer_scale)


def stochastic_depth_rates(drop_path_rate: float, depths: Sequence[int]) -> list[float]:
    """Each block's drop rate, in order: torchvision's ``stochastic_depth_prob *
    stage_block_id / (total_stage_blocks - 1.0)``, from 0 to ``drop_path_rate``."""
    total = sum(depths)
    return [drop_path_rate * index / (total - 1.0) for index in range(total)]


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    """torchvision's LayerNorm over the channels (last axis): float32 math and params."""
    return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, use_fast_variance=False, dtype=dtype,
                        param_dtype=jnp.float32, name=name)


def _conv(features: int, kernel: int, dtype: Any, name: str, strides: int = 1,
          padding: int = 0, groups: int = 1) -> nn.Module:
    """A ``kernel``×``kernel`` convolution with bias and symmetric ``padding``, as torch's
    (grouped: ``layers.GroupedConv``, the same parameters)."""
    pads = ((padding, padding), (padding, padding))
    if groups > 1:
        return layers.GroupedConv(features, (kernel, kernel), groups, strides, pads,
                                  use_bias=True, dtype=dtype, kernel_init=_KERNEL_INIT,
                                  name=name)
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding=pads,
                   dtype=dtype, param_dtype=jnp.float32, kernel_init=_KERNEL_INIT, name=name)


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    """torch's ``nn.Linear`` on the last axis, kernel initialized as torchvision's ConvNeXt."""
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=_KERNEL_INIT,
                    name=name)


class CNBlock(nn.Module):
    """torchvision's ``CNBlock``; see the module docstring.

    Attributes:
      drop_path: this block's stochastic depth rate.
      dtype: computation dtype; parameters stay float32.
    """

    drop_path: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """NHWC in, NHWC out of the same shape."""
        width = x.shape[-1]
        y = _conv(width, 7, self.dtype, "dwconv", padding=3, groups=width)(x)
        y = _layer_norm(self.dtype, "norm")(y)
        y = nn.gelu(_dense(EXPANSION * width, self.dtype, "pwconv1")(y), approximate=False)
        y = _dense(width, self.dtype, "pwconv2")(y)
        scale = self.param("layer_scale", nn.initializers.constant(LAYER_SCALE_INIT),
                           (width,), jnp.float32)
        y = y * scale.astype(self.dtype)
        return x + layers.drop_path(self, y, self.drop_path, train)


class ConvNeXt(layers.TorchLayers):
    """torchvision's ConvNeXt; see the module docstring.

    Attributes:
      depths: blocks in each stage.
      widths: channels of each stage.
      num_classes: logits per image.
      dtype: computation dtype. With ``jnp.bfloat16`` the parameters stay
        float32, LayerNorms compute in float32 and the logits come back
        float32.
      dropout: dropout rate before the final dense layer.
      drop_path: stochastic depth rate of the last block (torchvision's
        ``stochastic_depth_prob``); earlier blocks' grow linearly from 0.
      remat: recompute each block's activations in the backward pass
        (``nn.remat``) instead of keeping them: less memory, e.g. at 512 px,
        for more compute. Same variables and values either way.
    """

    depths: Sequence[int] = (3, 3, 9, 3)
    widths: Sequence[int] = (96, 192, 384, 768)
    num_classes: int = 28
    dropout: float = 0.0
    drop_path: float = 0.1
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps float images ``[B, H, W, C]`` to float32 logits ``[B, num_classes]``."""
        x = _conv(self.widths[0], 4, self.dtype, "features0_conv", strides=4)(
            x.astype(self.dtype))
        x = _layer_norm(self.dtype, "features0_norm")(x)
        block_cls = CNBlock
        if self.remat:
            block_cls = nn.remat(CNBlock, static_argnums=(2,))  # argument 2: train (0 is self)
        rates = iter(stochastic_depth_rates(self.drop_path, self.depths))
        for stage, (depth, width) in enumerate(zip(self.depths, self.widths)):
            if stage:  # torchvision's features.2, .4, .6
                x = _layer_norm(self.dtype, f"features{2 * stage}_norm")(x)
                x = _conv(width, 2, self.dtype, f"features{2 * stage}_conv", strides=2)(x)
            for index in range(depth):
                x = block_cls(drop_path=next(rates), dtype=self.dtype,
                              name=f"features{2 * stage + 1}_{index}")(x, train)
        x = x.mean(axis=(1, 2), dtype=jnp.float32)
        x = _layer_norm(jnp.float32, "classifier_norm")(x).astype(self.dtype)
        x = nn.Dropout(self.dropout, deterministic=not layers.drawing(self, train))(x)
        return _dense(self.num_classes, self.dtype, "classifier")(x).astype(jnp.float32)


def layer_key(name: str) -> tuple[int, ...]:
    """A top-level layer's place in the network (``steps.layer_depths``): the stem, the
    blocks and downsamplings in order (``featuresI_J``, ``featuresI_norm``/``_conv``), the
    head's norm and dense layer."""
    if name.startswith("features0_"):
        return (0,)
    if name.startswith("features"):
        return (1, *layers.numbers(name))
    return (2,)


def from_config(cfg: ml_collections.ConfigDict, dtype: Any) -> ConvNeXt:
    """The variant ``cfg.name`` (a key of ``VARIANTS``) with ``cfg.dropout``,
    ``cfg.drop_path`` (torchvision's 0.1 by default) and ``cfg.remat``."""
    if cfg.name not in VARIANTS:
        raise ValueError(f"config.model.name={cfg.name!r}: choose one of {sorted(VARIANTS)}")
    return ConvNeXt(**VARIANTS[cfg.name], dtype=dtype, dropout=cfg.get("dropout", 0.0),
                    drop_path=cfg.get("drop_path", 0.1), remat=cfg.get("remat", False))
