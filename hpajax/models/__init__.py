"""The models hpajax trains, by name: ``models.create(config.model)``.

Every model maps float images ``[B, H, W, C]`` to float32 logits
``[B, 28]`` and takes ``train`` (batch statistics and their update, or the
running ones; dropout and stochastic depth, see ``layers.drawing``). A model
with BatchNorm keeps its statistics in ``batch_stats``; one without has no
such collection. The names are ``config.MODELS``; ``config.BACKBONES`` says
which module of this package builds each backbone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hpajax import config as config_lib
from hpajax.models import (convnext, densenet, efficientnet, inception, resnet, seed_cnn,
                           seresnext, vit, weights, xception)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# config.BACKBONES' module names -> the modules: each has VARIANTS (a backbone's name ->
# its architecture), from_config(cfg, dtype), IMPORT_RULES (its reference's keys) and
# layer_key (its layers' order, for layer-wise learning-rate decay).
_MODULES = {"resnet": resnet, "densenet": densenet, "inception": inception,
            "seresnext": seresnext, "xception": xception, "efficientnet": efficientnet,
            "convnext": convnext, "vit": vit}
DEFAULT = "seed_cnn"  # the model of a config.json written before config.model.name


def create(cfg: ml_collections.ConfigDict) -> nn.Module:
    """The model ``cfg.name`` built from ``cfg`` (a config's ``model`` block).

    ``cfg.dtype`` is the computation dtype, ``"float32"`` or ``"bfloat16"``;
    parameters and BatchNorm statistics stay float32 either way.
    """
    name = cfg.get("name", DEFAULT)
    if name not in config_lib.MODELS:
        raise ValueError(f"config.model.name={name!r}: choose one of {sorted(config_lib.MODELS)}")
    if cfg.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype={cfg.dtype!r}: choose one of {sorted(DTYPES)}")
    if name == DEFAULT:
        return seed_cnn.from_config(cfg, DTYPES[cfg.dtype])
    return module(name).from_config(cfg, DTYPES[cfg.dtype])


def module(name: str) -> Any:
    """The module of this package that builds the backbone ``name`` (``config.BACKBONES``)."""
    return _MODULES[config_lib.BACKBONES[name][0]]


def import_rules(name: str) -> weights.ImportRules:
    """How the backbone ``name``'s reference state-dict keys map onto its variables."""
    return module(name).IMPORT_RULES


def param_counts(params: Mapping[str, Any]) -> dict[str, int]:
    """Number of values under each top-level layer name, in layer order.

    Works on any variable collection: ``variables["params"]`` gives the
    trainable parameters, ``variables["batch_stats"]`` the BN statistics.
    """
    return {name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
            for name, tree in params.items()}
