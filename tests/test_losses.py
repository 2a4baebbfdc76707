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


def _focal_by_hand(x, y, gamma):
    """Lin et al.'s focal loss in float64 NumPy: (1 - p_t)^gamma * BCE (hpajax uses no alpha)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    p_t = y * p + (1.0 - y) * (1.0 - p)
    bce = np.maximum(x, 0.0) - x * y + np.log1p(np.exp(-np.abs(x)))  # -log(p_t), stably
    return (1.0 - p_t) ** gamma * bce


def test_focal_matches_the_formula_and_bad_names_are_refused():
    """Focal loss equals (1 - p_t)^gamma * BCE written out in NumPy, element by element
    (|logit| up to 50) and as per-sample class means; it is below BCE; bad names fail."""
    x = np.array([-50, -20, -4, -1, -0.1, 0, 0.1, 1, 4, 20, 50, 0], np.float32)
    x, y = np.concatenate([x, x]), np.repeat(np.float32([0, 1]), len(x))
    for gamma in (0.0, 1.5, 2.0):
        for rows in np.split(np.arange(len(x)), 4):
            # Each sample repeats one (logit, label) over its 28 classes: its mean is that
            # element's loss. The shape of _data() spares JAX a compilation per shape.
            tile = lambda v: jnp.asarray(np.repeat(v[rows, None], 28, 1))  # noqa: E731
            got = losses.make_loss("focal", gamma=gamma)(tile(x), tile(y))
            np.testing.assert_allclose(got, _focal_by_hand(x[rows], y[rows], gamma), rtol=2e-6,
                                       atol=1e-7, err_msg=f"gamma={gamma}, logits {x[rows]}")
    assert _focal_by_hand(50.0, 0.0, 2.0) == pytest.approx(50.0)  # confidently wrong: weight 1
    logits, labels = _data()
    np.testing.assert_allclose(losses.make_loss("focal", gamma=1.5)(logits, labels),
                               _focal_by_hand(logits, labels, 1.5).mean(-1), rtol=1e-5)
    assert (losses.make_loss("focal", gamma=2.0)(logits, labels)
            < losses.make_loss("bce")(logits, labels)).all()
    with pytest.raises(ValueError, match="config.loss='mse'"):
        losses.make_loss("mse")
    with pytest.raises(ValueError, match="pos_weight"):
        losses.make_loss("focal", pos_weight=np.ones(28, np.float32))
