"""The seed paper's CNN (Aggarwal et al., IEEE Access 2023) in Flax linen.

Four blocks, each two ``Conv k×k (VALID, no bias) -> BatchNorm -> ReLU``
followed by a 2×2 max-pool (stride 2, floor), with 32/64/128/256 filters.
Every block's pooled output is globally averaged; the four vectors are
concatenated (32+64+128+256 = 480) and go through
``Dense 512 -> BN -> ReLU -> Dense 256 -> BN -> ReLU -> Dense 28``. The model
returns logits; the sigmoid belongs to the loss.

The seed's convolutions and hidden dense layers have a bias, which the
following BatchNorm cancels, so here they have none (its Table 3 counts it).
BatchNorm follows Keras, the seed's framework: momentum 0.99, epsilon 1e-3.
Each BatchNorm and the ReLU after it are one layer, ``layers.BatchNormReLU``,
with ``nn.BatchNorm``'s variables and values but a hand-written gradient.

The model is functional: ``variables = model.init(key, x, train=False)``
holds ``params`` and ``batch_stats``; a training step calls
``model.apply(variables, x, train=True, mutable=["batch_stats"])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from hpajax.models.layers import BatchNormReLU, max_pool_2x2


def min_input_size(kernel_size: int, num_blocks: int = 4) -> int:
    """Smallest input side that leaves at least one pixel after the last pool.

    A block maps side ``s`` to ``(s - 2 (k - 1)) // 2``. Working backwards
    from 1 pixel, a block needs ``2 s + 2 (k - 1)`` in; e.g. 76 px for k = 3,
    136 for k = 5, 196 for k = 7 with four blocks.
    """
    side = 1
    for _ in range(num_blocks):
        side = 2 * side + 2 * (kernel_size - 1)
    return side


class SeedCNN(nn.Module):
    """The seed CNN; see the module docstring.

    Attributes:
      num_classes: logits per image.
      filters: filters of each block's two convolutions (one entry per block).
      kernel_size: convolution window side.
      head: widths of the hidden dense layers.
      dtype: computation dtype. With ``jnp.bfloat16`` the parameters and the
        BatchNorm statistics stay float32 and the logits come back float32.
      bn_momentum: running-statistics momentum (Keras' 0.99).
      bn_epsilon: variance epsilon (Keras' 1e-3; Flax's default is 1e-5).
    """

    num_classes: int = 28
    filters: Sequence[int] = (32, 64, 128, 256)
    kernel_size: int = 3
    head: Sequence[int] = (512, 256)
    dtype: Any = jnp.float32
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3

    def _batch_norm_relu(self, name: str, train: bool) -> BatchNormReLU:
        return BatchNormReLU(use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=self.dtype, name=name)

    def _check_size(self, x: jax.Array) -> None:
        """Raises at trace time if ``x`` is too small for the VALID convolutions."""
        needed = min_input_size(self.kernel_size, len(self.filters))
        height, width = x.shape[1:3]
        if min(height, width) < needed:
            raise ValueError(
                f"input {height}x{width} px is too small for SeedCNN with kernel_size="
                f"{self.kernel_size} and {len(self.filters)} blocks: the VALID convolutions "
                f"and pools need at least {needed}x{needed} px")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Maps float images ``[B, H, W, C]`` in [0, 1] to float32 logits ``[B, classes]``."""
        self._check_size(x)
        x = x.astype(self.dtype)
        pooled = []
        for block, features in enumerate(self.filters, start=1):
            for conv in (1, 2):
                x = nn.Conv(features, (self.kernel_size, self.kernel_size), padding="VALID",
                            use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                            name=f"block{block}_conv{conv}")(x)
                x = self._batch_norm_relu(f"block{block}_bn{conv}", train)(x)
            x = max_pool_2x2(x)
            pooled.append(x.mean(axis=(1, 2), dtype=jnp.float32).astype(self.dtype))
        x = jnp.concatenate(pooled, axis=-1)
        for layer, width in enumerate(self.head, start=1):
            x = nn.Dense(width, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                         name=f"dense{layer}")(x)
            x = self._batch_norm_relu(f"bn_dense{layer}", train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     name="logits")(x)
        return x.astype(jnp.float32)


def from_config(cfg: ml_collections.ConfigDict, dtype: Any) -> SeedCNN:
    """The seed CNN with ``cfg.kernel_size``, ``cfg.filters`` and ``cfg.head``."""
    return SeedCNN(kernel_size=cfg.kernel_size, filters=tuple(cfg.filters),
                   head=tuple(cfg.head), dtype=dtype)
