"""The models hpajax trains, by name: ``models.create(config.model)``.

Every model maps float images ``[B, H, W, C]`` to float32 logits
``[B, 28]``, takes ``train`` (batch statistics and their update, or the
running ones) and keeps its BatchNorm statistics in ``batch_stats``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hpajax.models import densenet, resnet, seed_cnn

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_BUILDERS = {"seed_cnn": seed_cnn.from_config,
             **dict.fromkeys(resnet.VARIANTS, resnet.from_config),
             **dict.fromkeys(densenet.VARIANTS, densenet.from_config)}
DEFAULT = "seed_cnn"  # the model of a config.json written before config.model.name


def create(cfg: ml_collections.ConfigDict) -> nn.Module:
    """The model ``cfg.name`` built from ``cfg`` (a config's ``model`` block).

    ``cfg.dtype`` is the computation dtype, ``"float32"`` or ``"bfloat16"``;
    parameters and BatchNorm statistics stay float32 either way.
    """
    name = cfg.get("name", DEFAULT)
    if name not in _BUILDERS:
        raise ValueError(f"config.model.name={name!r}: choose one of {sorted(_BUILDERS)}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype={cfg.dtype!r}: choose one of {sorted(DTYPES)}")
    return _BUILDERS[name](cfg, DTYPES[cfg.dtype])


def param_counts(params: Mapping[str, Any]) -> dict[str, int]:
    """Number of values under each top-level layer name, in layer order.

    Works on any variable collection: ``variables["params"]`` gives the
    trainable parameters, ``variables["batch_stats"]`` the BN statistics.
    """
    return {name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
            for name, tree in params.items()}
