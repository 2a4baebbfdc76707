"""Multi-label losses on logits: binary cross-entropy, focal, class weights.

Every loss returns one value per sample (the mean over classes), so masked
evaluation batches and data-parallel means stay exact.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def positive_weights(labels: np.ndarray, max_weight: float = 100.0) -> np.ndarray:
    """Per-class weights for positives, negatives/positives of a training split.

    Balances each class's positive and negative terms (the seed names class
    imbalance as its main limitation); clipped so that a class with a
    handful of positives cannot dominate the loss.
    """
    labels = np.asarray(labels, np.float64)
    pos = labels.sum(0)
    weights = (len(labels) - pos) / np.maximum(pos, 1.0)
    return np.clip(weights, 1.0, max_weight).astype(np.float32)


def bce(logits: jax.Array, labels: jax.Array, pos_weight: jax.Array | None = None) -> jax.Array:
    """Binary cross-entropy per sample, optionally weighting positive terms."""
    log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    pos = labels * log_p if pos_weight is None else pos_weight * labels * log_p
    return -(pos + (1.0 - labels) * log_not_p).mean(-1)


def make_loss(name: str, gamma: float = 2.0, pos_weight: np.ndarray | None = None) -> LossFn:
    """The configured loss: ``"bce"`` or ``"focal"`` (with ``gamma``)."""
    weight = None if pos_weight is None else jnp.asarray(pos_weight)
    if name == "bce":
        return lambda logits, labels: bce(logits, labels, weight)
    if name == "focal":
        if weight is not None:
            raise ValueError("config.pos_weight applies to loss='bce' only")
        return lambda logits, labels: optax.sigmoid_focal_loss(
            logits, labels, gamma=gamma).mean(-1)
    raise ValueError(f"config.loss={name!r}: choose 'bce' or 'focal'")
