"""Losses: BCE against optax, positive weights, focal loss, bad names."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hpajax import losses


def _data():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(6, 28)), jnp.float32)
    labels = jnp.asarray(rng.random((6, 28)) < 0.2, jnp.float32)
    return logits, labels


def test_bce_matches_optax_and_positive_weights_scale_only_positives():
    logits, labels = _data()
    want = optax.sigmoid_binary_cross_entropy(logits, labels).mean(-1)
    np.testing.assert_allclose(losses.make_loss("bce")(logits, labels), want, rtol=1e-6)
    weight = np.full(28, 3.0, np.float32)
    weighted = losses.make_loss("bce", pos_weight=weight)(logits, labels)
    pos = -(labels * jax.nn.log_sigmoid(logits)).mean(-1)
    np.testing.assert_allclose(weighted, want + 2.0 * pos, rtol=1e-5)


def test_positive_weights_are_negative_over_positive_counts_clipped():
    labels = np.zeros((100, 28), np.uint8)
    labels[:10, 0] = 1  # 10 positives: weight 90 / 10 = 9
    labels[:50, 1] = 1  # 50 positives: weight 1
    labels[:, 2] = 1    # all positive: clipped up to 1
    w = losses.positive_weights(labels)
    assert w[0] == pytest.approx(9.0) and w[1] == pytest.approx(1.0) and w[2] == 1.0
    assert w[3] == 100.0  # no positives: clipped at max_weight


def test_focal_matches_optax_and_bad_names_are_refused():
    logits, labels = _data()
    want = optax.sigmoid_focal_loss(logits, labels, gamma=1.5).mean(-1)
    np.testing.assert_allclose(losses.make_loss("focal", gamma=1.5)(logits, labels), want,
                               rtol=1e-6)
    assert (losses.make_loss("focal", gamma=2.0)(logits, labels)
            < losses.make_loss("bce")(logits, labels)).all()
    with pytest.raises(ValueError, match="config.loss='mse'"):
        losses.make_loss("mse")
    with pytest.raises(ValueError, match="pos_weight"):
        losses.make_loss("focal", pos_weight=np.ones(28, np.float32))
