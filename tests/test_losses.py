"""Losses: BCE against optax, positive weights, focal loss, Lovász hinge, sums, bad specs."""

import itertools
import re

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


def test_focal_matches_the_formula():
    """Focal loss equals (1 - p_t)^gamma * BCE written out in NumPy, element by element
    (|logit| up to 50) and as per-sample class means; it is below BCE."""
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


_lovasz = jax.jit(losses.lovasz_hinge)  # compiled once per shape: op-by-op dispatch is slow


def _jaccard_loss(y, mistakes):
    """Delta_J of Berman et al. from Python sets: 1 - |y & y_hat| / |y | y_hat|, where the
    prediction y_hat keeps the positives that are not mistakes and adds the negative ones."""
    truth = {i for i, v in enumerate(y) if v}
    pred = {i for i in range(len(y)) if bool(y[i]) != (i in mistakes)}
    union = truth | pred
    return 1.0 - len(truth & pred) / len(union) if union else 0.0


def _lovasz_by_hand(errors, y):
    """One class's Lovász hinge from the definition of the Lovász extension, in float64:
    sum over positions k of the errors sorted descending of relu(e_k) times the Jaccard
    loss of the k largest errors taken as mistakes minus that of the k - 1 largest."""
    order = np.argsort(-np.asarray(errors, np.float64), kind="stable")
    prefix = [_jaccard_loss(y, set(order[:k].tolist())) for k in range(len(y) + 1)]
    return sum(max(float(errors[i]), 0.0) * (prefix[k + 1] - prefix[k])
               for k, i in enumerate(order))


def _logits_for_errors(errors, y):
    """Logits whose hinge errors 1 - logit * (2y - 1) are ``errors``."""
    return (2.0 * np.asarray(y, np.float64) - 1.0) * (1.0 - np.asarray(errors, np.float64))


def test_lovasz_on_binary_errors_is_the_jaccard_loss():
    """With errors 0 or 1 (logit = sign * (1 - m)) the Lovász hinge is Delta_J of the
    mistake set m, computed with Python sets; over several classes, the mean."""
    rng = np.random.default_rng(1)
    cases = [(rng.random(6) < 0.4, rng.random(6) < 0.5) for _ in range(40)]
    y = rng.random(6) < 0.5
    cases += [(y, np.zeros(6, bool)), (y, np.ones(6, bool)), (np.zeros(6, bool), np.ones(6, bool))]
    for y, m in cases:
        want = _jaccard_loss(y, set(np.flatnonzero(m).tolist()))
        logits = jnp.asarray(_logits_for_errors(m, y)[:, None], jnp.float32)
        got = _lovasz(logits, jnp.asarray(y[:, None], jnp.float32))
        assert float(got) == pytest.approx(want, abs=1e-6), (y, m)
    assert _jaccard_loss(y, set()) == 0.0 and _jaccard_loss(y, set(range(6))) == 1.0
    ys, ms = np.stack([c[0] for c in cases[:5]], 1), np.stack([c[1] for c in cases[:5]], 1)
    want = np.mean([_jaccard_loss(ys[:, c], set(np.flatnonzero(ms[:, c]).tolist()))
                    for c in range(5)])
    got = _lovasz(jnp.asarray(_logits_for_errors(ms, ys), jnp.float32),
                              jnp.asarray(ys, jnp.float32))
    assert float(got) == pytest.approx(want, abs=1e-6)


def test_lovasz_is_the_lovasz_extension_and_linear_between_same_order_errors():
    """On real-valued errors of either sign the hinge equals the Lovász extension written
    out; along a segment between two positive error vectors in the same sort order it
    is linear: the midpoint's value is the mean of the ends'."""
    rng = np.random.default_rng(2)
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]], bool)
    hinge = lambda errors: float(_lovasz(  # noqa: E731
        jnp.asarray(_logits_for_errors(errors, y), jnp.float32), jnp.asarray(y, jnp.float32)))
    by_hand = lambda errors: np.mean([_lovasz_by_hand(errors[:, c], y[:, c])  # noqa: E731
                                      for c in range(3)])
    for _ in range(5):
        errors = rng.uniform(-1.0, 2.0, (6, 3))
        assert hinge(errors) == pytest.approx(by_hand(errors), rel=1e-5)
    order = np.stack([rng.permutation(6) for _ in range(3)], 1)
    ends = [np.take_along_axis(np.sort(rng.uniform(0.1, 2.0, (6, 3)), 0), order, 0)
            for _ in range(2)]
    mid = (ends[0] + ends[1]) / 2
    assert hinge(mid) == pytest.approx((hinge(ends[0]) + hinge(ends[1])) / 2, rel=1e-5)
    assert hinge(mid) == pytest.approx(by_hand(mid), rel=1e-5)
    assert hinge(ends[0]) != pytest.approx(hinge(ends[1]), rel=1e-3)  # a real segment


def test_lovasz_of_a_class_without_positives_or_without_negatives():
    """No positives: relu of the largest error 1 + logit (the most confident negative).
    Only positives: every Jaccard step is 1/B, so the mean of relu(1 - logit)."""
    zeros, ones = jnp.zeros((5, 1)), jnp.ones((5, 1))
    for x in (np.array([-3.0, 0.2, -0.5, 1.5, -1.0]), np.array([-3.0, -1.2, -2.0, -4.0, -1.5])):
        logits = jnp.asarray(x[:, None], jnp.float32)
        want = max(np.max(1.0 + x), 0.0)
        assert float(_lovasz(logits, zeros)) == pytest.approx(want, rel=1e-6)
        want = np.mean(np.maximum(1.0 - x, 0.0))
        assert float(_lovasz(logits, ones)) == pytest.approx(want, rel=1e-6)


def test_lovasz_mask_leaves_padding_out_of_the_value_and_the_gradient():
    """Padding samples with any logits and labels, anywhere in the batch, change neither
    the value nor the real samples' gradient, and get no gradient themselves."""
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(8, 3)) * 2, jnp.float32)
    labels = jnp.asarray(rng.random((8, 3)) < 0.5, jnp.float32)
    mask = np.array([True, False, True, True, False, True, False, True])
    real = lambda x: _lovasz(x, labels[mask])  # noqa: E731
    padded = lambda x: _lovasz(x, labels, jnp.asarray(mask))  # noqa: E731
    assert float(padded(logits)) == pytest.approx(float(real(logits[mask])), rel=1e-6)
    assert float(_lovasz(logits, labels)) != pytest.approx(float(real(logits[mask])))
    grad = jax.grad(padded)(logits)
    np.testing.assert_allclose(grad[mask], jax.grad(real)(logits[mask]), rtol=1e-6)
    assert (grad[~mask] == 0).all()


def test_lovasz_gradient_is_the_slope_of_the_extension():
    """jax.grad is finite, non-zero, and equals central differences of the hand-written
    Lovász extension (piecewise linear: exact away from a kink) in float64."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 3))
    y = rng.random((6, 3)) < 0.4

    def by_hand(x):
        errors = 1.0 - x * (2.0 * y - 1.0)
        return np.mean([_lovasz_by_hand(errors[:, c], y[:, c]) for c in range(3)])

    grad = np.asarray(jax.grad(_lovasz)(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
    assert np.isfinite(grad).all() and (grad != 0).any()
    step, want = 1e-6, np.zeros_like(x)
    for i, c in itertools.product(range(6), range(3)):
        e = np.zeros_like(x)
        e[i, c] = step
        want[i, c] = (by_hand(x + e) - by_hand(x - e)) / (2 * step)
    np.testing.assert_allclose(grad, want, atol=1e-5)


def test_weighted_sum_of_losses_equals_the_sum_of_its_parts():
    """"focal+0.5*lovasz" (whitespace allowed) is focal by hand plus half the Lovász hinge per
    sample; "lovasz" gives every sample the batch value, masked or not; weights of 1 are
    plain terms; pos_weight reaches the bce term of a sum."""
    logits, labels = _data()
    lovasz = float(_lovasz(logits, labels))
    focal = _focal_by_hand(logits, labels, 1.5).mean(-1)
    for spec in ("focal+0.5*lovasz", " focal + 0.5 * lovasz ", "0.5*lovasz+focal"):
        np.testing.assert_allclose(losses.make_loss(spec, gamma=1.5)(logits, labels),
                                   focal + 0.5 * lovasz, rtol=1e-5, err_msg=spec)
    # The batch value broadcast to every sample: one float32 reduction computed twice, in
    # two compiled programs, may round apart by an ulp or two (1.2e-7 relative each).
    np.testing.assert_allclose(losses.make_loss("lovasz")(logits, labels), np.full(6, lovasz),
                               rtol=5e-7)
    mask = np.array([True, True, False, True, False, True])
    want = float(_lovasz(logits[mask], labels[mask]))
    np.testing.assert_allclose(losses.make_loss("lovasz")(logits, labels, jnp.asarray(mask)),
                               np.full(6, want), rtol=5e-7)
    plain = losses.make_loss("bce")(logits, labels)
    assert (losses.make_loss("1*bce")(logits, labels) == plain).all()
    weight = np.full(28, 3.0, np.float32)
    np.testing.assert_allclose(
        losses.make_loss("bce+2*lovasz", pos_weight=weight)(logits, labels),
        losses.make_loss("bce", pos_weight=weight)(logits, labels) + 2.0 * lovasz, rtol=1e-6)


@pytest.mark.parametrize("spec, reason", [
    ("mse", "unknown loss 'mse'"), ("focal+dice", "unknown loss 'dice'"),
    ("0.5*", "unknown loss ''"), ("", "empty term"), ("bce+", "empty term"),
    ("+lovasz", "empty term"), ("bce+ +lovasz", "empty term"),
    ("x*bce", "weight 'x' is not a number"), ("*bce", "weight '' is not a number"),
    ("0.5*0.5*bce", "weight '0.5*0.5' is not a number"),
    ("-1*bce", "weight '-1' must be positive"), ("0*lovasz", "weight '0' must be positive"),
    ("nan*bce", "weight 'nan' must be positive"),
    ("inf*bce", "weight 'inf' must be positive and finite"),
    ("bce+bce", "'bce' appears twice"), ("lovasz+focal+2*lovasz", "'lovasz' appears twice"),
])
def test_bad_loss_specs_are_refused(spec, reason):
    with pytest.raises(ValueError, match=re.escape(f"config.loss={spec!r}: {reason}")):
        losses.make_loss(spec)


def test_pos_weight_needs_a_bce_term():
    for spec in ("focal", "focal+lovasz", "lovasz"):
        with pytest.raises(ValueError, match=f"pos_weight.*config.loss={re.escape(repr(spec))}"):
            losses.make_loss(spec, pos_weight=np.ones(28, np.float32))
