"""The moving average of the weights (``config.ema_decay``) averages their BatchNorm statistics
too, so that a run without recalibration (``bn_recalibration_batches=0``) evaluates, saves and
serves statistics of its training, not the initial mean 0 and variance 1."""

import jax
import numpy as np
from conftest import synthetic_store, tiny_config

from hpajax import inference, train
from hpajax import steps as steps_lib

SIZE = 32  # the tiny seed CNN's two VALID blocks of kernel 3 need 16 px


def averaged_config(store, **overrides):
    return tiny_config(store, ema_decay=0.9, bn_recalibration_batches=0,
                       **overrides)


def largest_change(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


def test_the_average_of_the_statistics_follows_the_formula(tmp_path):
    config = averaged_config(tmp_path)
    steps = steps_lib.build(config, steps_lib.make_mesh(config.batch_size), (SIZE, SIZE, 4))
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (8, SIZE, SIZE, 4), np.uint8),
             "label": rng.integers(0, 2, (8, 28), np.uint8)}
    state = steps_lib.init_state(steps)
    initial = expected = jax.device_get(state.batch_stats)
    for t in range(3):
        state, _ = steps.train(state, steps_lib.to_device(steps, batch),
                               steps_lib.zero_sums(steps))
        decay = min(0.9, (1 + t) / (10 + t))
        expected = jax.tree.map(lambda e, s: decay * e + (1 - decay) * s, expected,
                                jax.device_get(state.batch_stats))
    served = jax.device_get(steps_lib.served(state).batch_stats)
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6),
                 served, expected)
    assert largest_change(served, initial) > 1e-2


def test_a_run_without_recalibration_serves_the_averaged_statistics(tmp_path):
    """Both the best step (saved at an evaluation) and one saved between evaluations."""
    store = synthetic_store(tmp_path, 24, SIZE, seed=4)
    config = averaged_config(store, total_steps=3, eval_every=3, checkpoint_every=2)
    train.train_and_evaluate(config, str(tmp_path / "run"))
    for step in (None, 2):
        restored = inference.restore(tmp_path / "run", step)
        fresh = steps_lib.init_state(restored.steps)
        served = jax.device_get(restored.state.batch_stats)
        assert largest_change(served, jax.device_get(fresh.batch_stats)) > 1e-2, step
