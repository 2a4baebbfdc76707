"""timm's ViT-S/16 and ViT-B/16 (``vit_small_patch16_224``, ``vit_base_patch16_224``) in
Flax linen, NHWC in, tokens inside.

The architecture is timm's ``VisionTransformer`` with its defaults: a 16×16
stride-16 convolution with bias cuts the image into patches (no padding, in
torch and here alike; both sides must be multiples of 16, else ValueError)
and embeds each in ``D`` channels (384 / 768); the class token goes first,
then the ``gh × gw`` patch tokens row by row (as torch's ``flatten(2)``), and
the position embeddings (``1 + gh·gw`` of them, the run's grid) are added.
Twelve pre-norm blocks follow, each ``x + attn(norm1(x))`` then
``x + mlp(norm2(x))``: multi-head self-attention (6 / 12 heads of 64) from one
fused ``qkv`` projection ``D -> 3D`` with bias, split as timm's
``reshape(B, N, 3, heads, head_dim)``, softmax(q·kᵀ / sqrt(head_dim))·v (torch's
``scaled_dot_product_attention``, here ``jax.nn.dot_product_attention`` with a
float32 softmax), heads concatenated and projected by ``proj``; the MLP is
``fc1`` (4D), exact (erf) GELU, ``fc2``. LayerNorms have epsilon 1e-6.
Stochastic depth (``drop_path``, the last block's rate) ramps linearly from
0 at the first block, as timm's ``drop_path_rate``; each residual branch draws
its own mask. Then the pooling (``pool``): ``"token"`` reads the class token
through the final ``norm`` (timm's default; LayerNorm works per token, so
norm-then-take is take-then-norm); ``"avg"`` averages the patch tokens and
applies ``norm`` after the mean, where timm's ``global_pool="avg"`` has a
separate ``fc_norm``: a token-trained file's ``norm`` serves as that
``fc_norm``, so its keys load unchanged. Dropout and the ``head`` give the
logits. The model has no BatchNorm, so no ``batch_stats`` collection.

Init follows timm's ``init_weights_vit_timm`` where cheap: linear kernels
``trunc_normal_(std=.02)`` (timm truncates at ±2 absolute, 100 std: a plain
normal here), zero biases, position embeddings normal(0.02), class token
normal(1e-6), LayerNorms 1 and 0; the patch convolution keeps torch's Conv2d
default, U(±1/sqrt(fan_in)) for kernel and bias.

Names follow timm's state-dict keys with ``blocks.i`` as ``blocks_i``:
``cls_token``, ``pos_embed``, ``patch_embed`` / ``proj``, ``blocks_i`` /
``norm1``, ``attn`` / ``qkv``, ``proj``, ``norm2``, ``mlp`` / ``fc1``, ``fc2``,
then ``norm`` and ``head`` (``layer_key`` orders them for layer-wise
learning-rate decay, as timm: depth 0 the embeddings, block i at i + 1,
``norm`` and ``head`` last).
A conv ``weight`` [O, I, 16, 16] is ``kernel`` [16, 16, I, O], a linear
``weight`` [out, in] ``kernel`` [in, out] (``qkv``'s columns stay q, k, v, then
head, then channel), a LayerNorm's ``weight`` ``scale``. A file's
``pos_embed`` of another square grid is resized to the run's by ``IMPORT_RULES``'
fit exactly as timm's ``resample_abs_pos_embed`` (torch's antialiased bicubic,
the class token kept): see ``resample_pos_embed``. Only to a square run grid:
the fit sees the variable's token count, not its rows and columns.

The model is functional like the others: ``variables = model.init(key, x,
train=False)`` holds ``params`` only; a training step calls
``model.apply(variables, x, train=True, rngs={"dropout": key})`` (the rng only
with ``dropout`` or ``drop_path`` > 0).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hpajax.models.layers import drawing, drop_path, numbers
from hpajax.models.weights import ImportRules

PATCH = 16
POOLS = ("token", "avg")
LAYER_NORM_EPSILON = 1e-6
MLP_RATIO = 4
VARIANTS: dict[str, dict[str, int]] = {
    "vit_small_patch16": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16": dict(embed_dim=768, depth=12, num_heads=12),
}
# timm's linear layers and head: trunc_normal_(std=.02), cut at ±2 (100 std), zero bias.
_LINEAR_INIT = nn.initializers.normal(0.02)


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.5`` (torch's antialiased bicubic;
    its plain bicubic uses -0.75)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def antialiased_bicubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of torch's ``interpolate(mode="bicubic", antialias=True,
    align_corners=False)`` along one axis.

    As aten's ``_upsample_bicubic2d_aa``: output ``i`` is centred on input
    coordinate ``(i + 0.5) · n_in / n_out``; when shrinking, the kernel is
    stretched by the factor (its support 2 becomes 2 · n_in / n_out), which is
    the antialiasing; taps outside the input are dropped and each row's weights
    normalized to sum 1 (no edge clamping, unlike the plain bicubic).
    """
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    centers = scale * (np.arange(n_out) + 0.5)
    taps = _cubic((np.arange(n_in)[None, :] + 0.5 - centers[:, None]) / stretch)
    return taps / taps.sum(axis=1, keepdims=True)


def _grid_side(tokens: int) -> int:
    """The side of a square grid of ``tokens`` patch tokens, or 0 if there is none."""
    side = math.isqrt(tokens)
    return side if side * side == tokens and side > 0 else 0


def resample_pos_embed(posemb: np.ndarray, side: int) -> np.ndarray:
    """Position embeddings [1, 1 + n·n, D] resized to [1, 1 + side·side, D] as timm's
    ``resample_abs_pos_embed`` (bicubic, antialiased, class token kept), in NumPy:
    the separable 1-D weights applied to rows, then columns, in float64."""
    n = _grid_side(posemb.shape[1] - 1)
    if not n:
        raise ValueError(f"pos_embed of shape {list(posemb.shape)}: not a class token and a "
                         "square grid of patch tokens")
    weights = antialiased_bicubic_weights(n, side)
    grid = posemb[0, 1:].reshape(n, n, -1).astype(np.float64)
    resized = np.einsum("ij,jkd,lk->ild", weights, grid, weights).reshape(1, side * side, -1)
    return np.concatenate([posemb[:, :1], resized.astype(posemb.dtype)], axis=1)


def fit_pos_embed(key: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A file's ``pos_embed`` of another grid resized to the run's square grid (the
    token count gives only the side of a square one); any other tensor unchanged."""
    if key != "pos_embed" or value.ndim != 3 or len(shape) != 3:
        return value
    side = _grid_side(shape[1] - 1)
    if not side:
        raise ValueError(f"pos_embed: the run's {shape[1] - 1} patch tokens are no square "
                         "grid; resizing a file's position embeddings needs square inputs")
    return resample_pos_embed(value, side)


# timm's keys: blocks.i is blocks_i; pos_embed of another grid is resized.
IMPORT_RULES = ImportRules(renames=((r"^blocks\.(\d+)\b", r"blocks_\1"),), fit=fit_pos_embed)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """timm's stochastic-depth rule: rates from 0 (first block) to ``rate`` (last), linear."""
    return [float(r) for r in np.linspace(0.0, rate, depth)]


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    """A linear layer with timm's ViT init and float32 parameters."""
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=_LINEAR_INIT,
                    name=name)


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    """timm's LayerNorm (epsilon 1e-6), float32 parameters and statistics."""
    return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=dtype, param_dtype=jnp.float32,
                        name=name)


class PatchEmbed(nn.Module):
    """timm's ``PatchEmbed``: a 16×16 stride-16 convolution with bias, ``proj``.

    Attributes:
      embed_dim: output channels.
      dtype: computation dtype.
    """

    embed_dim: int = 384
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H/16, W/16, embed_dim]."""
        bound = 1 / math.sqrt(PATCH * PATCH * x.shape[-1])  # torch's Conv2d default init

        def bias_init(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        return nn.Conv(self.embed_dim, (PATCH, PATCH), strides=(PATCH, PATCH), padding="VALID",
                       dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                       bias_init=bias_init, name="proj")(x)


class Attention(nn.Module):
    """timm's ``Attention``: fused ``qkv``, scaled dot-product attention, ``proj``.

    Attributes:
      num_heads: attention heads; each has ``D / num_heads`` channels.
      dtype: computation dtype; the softmax runs in float32.
    """

    num_heads: int = 6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, N, D] -> [B, N, D]."""
        batch, tokens, dim = x.shape
        qkv = _dense(3 * dim, self.dtype, "qkv")(x)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        # [B, N, heads, head_dim] each; the scale is torch's SDPA's, 1 / sqrt(head_dim).
        # Static slices (lax), not indexing, which gathers under a symbolic batch (export).
        q, k, v = (jax.lax.index_in_dim(qkv, i, axis=2, keepdims=False) for i in range(3))
        y = jax.nn.dot_product_attention(q, k, v)
        return _dense(dim, self.dtype, "proj")(y.reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """timm's ``Mlp``: ``fc2(gelu(fc1(x)))``, exact GELU, hidden width 4D.

    Attributes:
      dtype: computation dtype.
    """

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, N, D] -> [B, N, D]."""
        y = _dense(MLP_RATIO * x.shape[-1], self.dtype, "fc1")(x)
        return _dense(x.shape[-1], self.dtype, "fc2")(nn.gelu(y, approximate=False))


class Block(nn.Module):
    """timm's pre-norm ``Block``, each residual branch with its own stochastic depth.

    Attributes:
      num_heads: attention heads.
      drop_path: this block's stochastic-depth rate.
      dtype: computation dtype.
    """

    num_heads: int = 6
    drop_path: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """[B, N, D] -> [B, N, D]."""
        y = Attention(self.num_heads, self.dtype, name="attn")(
            _layer_norm(self.dtype, "norm1")(x))
        x = x + drop_path(self, y, self.drop_path, train)
        y = Mlp(self.dtype, name="mlp")(_layer_norm(self.dtype, "norm2")(x))
        return x + drop_path(self, y, self.drop_path, train)


class VisionTransformer(nn.Module):
    """timm's ``VisionTransformer`` at patch 16; see the module docstring.

    Attributes:
      embed_dim: token channels D.
      depth: transformer blocks.
      num_heads: attention heads per block.
      num_classes: logits per image.
      dtype: computation dtype. With ``jnp.bfloat16`` the parameters stay
        float32 and the logits come back float32.
      dropout: dropout rate before the head.
      drop_path: stochastic depth of the last block (timm's ``drop_path_rate``):
        block i's is ``drop_path · i / (depth - 1)``.
      pool: ``"token"`` (the class token) or ``"avg"`` (the patch tokens' mean).
      remat: recompute each block's activations in the backward pass
        (``nn.remat``) instead of keeping them. Same variables and values.
    """

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    num_classes: int = 28
    dtype: Any = jnp.float32
    dropout: float = 0.0
    drop_path: float = 0.0
    pool: str = "token"
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps float images ``[B, H, W, C]`` (H and W multiples of 16) to float32 logits
        ``[B, num_classes]``."""
        if x.shape[1] % PATCH or x.shape[2] % PATCH:
            raise ValueError(f"a ViT's input sides must be multiples of its patch, {PATCH} px: "
                             f"got {x.shape[1]}x{x.shape[2]} px")
        x = PatchEmbed(self.embed_dim, self.dtype, name="patch_embed")(x.astype(self.dtype))
        batch, rows, cols, dim = x.shape
        cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, dim),
                               jnp.float32)
        pos_embed = self.param("pos_embed", nn.initializers.normal(0.02),
                               (1, 1 + rows * cols, dim), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls_token.astype(self.dtype), (batch, 1, dim)),
                             x.reshape(batch, rows * cols, dim)], axis=1)
        x = x + pos_embed.astype(self.dtype)
        block_cls = Block
        if self.remat:
            block_cls = nn.remat(Block, static_argnums=(2,))  # argument 2: train (0 is self)
        for index, rate in enumerate(drop_path_rates(self.drop_path, self.depth)):
            x = block_cls(self.num_heads, rate, self.dtype, name=f"blocks_{index}")(x, train)
        x = _layer_norm(self.dtype, "norm")(self._pooled(x))
        x = nn.Dropout(self.dropout, deterministic=not drawing(self, train))(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=_LINEAR_INIT, name="head")(x)
        return x.astype(jnp.float32)

    def _pooled(self, x: jax.Array) -> jax.Array:
        """[B, 1 + N, D] -> [B, D]: the class token, or the patch tokens' float32 mean."""
        if self.pool == "token":
            return jax.lax.index_in_dim(x, 0, axis=1, keepdims=False)
        if self.pool == "avg":
            patches = jax.lax.slice_in_dim(x, 1, x.shape[1], axis=1)
            return patches.mean(axis=1, dtype=jnp.float32).astype(self.dtype)
        raise ValueError(f"pool={self.pool!r}: choose one of {', '.join(POOLS)}")


def layer_key(name: str) -> tuple[int, ...]:
    """A top-level layer's place in the network (``steps.layer_depths``): the embeddings
    (``patch_embed``, ``cls_token``, ``pos_embed``), ``blocks_i`` in order, then the
    final ``norm`` with the ``head``, as timm's ``param_groups_layer_decay`` groups them."""
    if name.startswith("blocks_"):
        return (1, *numbers(name))
    return (2,) if name in ("norm", "head") else (0,)


def from_config(cfg: ml_collections.ConfigDict, dtype: Any) -> VisionTransformer:
    """The variant ``cfg.name`` (a key of ``VARIANTS``) with ``cfg.dropout``,
    ``cfg.drop_path``, ``cfg.pool`` and ``cfg.remat``."""
    if cfg.name not in VARIANTS:
        raise ValueError(f"config.model.name={cfg.name!r}: choose one of {sorted(VARIANTS)}")
    pool = cfg.get("pool", "token")
    if pool not in POOLS:
        raise ValueError(f"config.model.pool={pool!r}: choose one of {', '.join(POOLS)}")
    return VisionTransformer(**VARIANTS[cfg.name], dtype=dtype, dropout=cfg.get("dropout", 0.0),
                             drop_path=cfg.get("drop_path", 0.0), pool=pool,
                             remat=cfg.get("remat", False))
