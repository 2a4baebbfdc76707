"""Learning-rate schedules (config.optimizer.schedule): their values, the logged rate, and
an exact resume inside the warm-up and inside the decay."""

import math
import pathlib

import numpy as np
import pytest
from conftest import records, synthetic_store, tiny_config

from hpajax import config as config_lib, train
from hpajax import steps as steps_lib

LR = 1e-3


def optimizer(**fields):
    cfg = config_lib.base_config().optimizer
    cfg.update(fields)
    return cfg


def test_cosine_warms_up_linearly_then_follows_the_cosine_to_its_floor():
    lr = steps_lib.learning_rate(optimizer(schedule="cosine", lr_warmup_steps=4,
                                           lr_floor=0.1), total_steps=20)
    for count in range(21):
        if count < 4:
            want = LR * count / 4
        else:
            progress = (count - 4) / (20 - 4)
            want = LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert float(lr(count)) == pytest.approx(want, rel=1e-5), count


def test_cosine_alone_spans_the_run_and_step_multiplies_at_its_boundaries():
    lr = steps_lib.learning_rate(optimizer(schedule="cosine"), total_steps=10)
    assert float(lr(0)) == pytest.approx(LR) and float(lr(10)) == pytest.approx(0, abs=1e-12)
    lr = steps_lib.learning_rate(optimizer(schedule="step", lr_boundaries=(3, 6),
                                           lr_factors=(0.5, 0.1)), total_steps=10)
    # update count c is step c + 1's: step 3 runs at LR, step 4 (after step 3) at LR / 2
    assert [float(lr(c)) for c in (0, 2, 3, 5, 6)] == pytest.approx(
        [LR, LR, LR * 0.5, LR * 0.5, LR * 0.05])


def test_onecycle_rises_to_the_learning_rate_and_falls_far_below_it():
    lr = steps_lib.learning_rate(optimizer(schedule="onecycle"), total_steps=100)
    values = np.array([float(lr(c)) for c in range(101)])
    assert values.argmax() == 30 and values.max() == pytest.approx(LR)
    assert values[0] == pytest.approx(LR / 25) and values[-1] < LR / 1e4


def test_plateau_is_a_constant_rate_and_bad_fields_are_named():
    assert steps_lib.learning_rate(optimizer(), total_steps=10) == LR
    for fields, message in (({"schedule": "linear"}, "config.optimizer.schedule='linear'"),
                            ({"schedule": "cosine", "lr_warmup_steps": 10},
                             "lr_warmup_steps=10: must be 0 or more and below the 10 steps"),
                            ({"schedule": "step", "lr_boundaries": (3,)},
                             "one factor per boundary")):
        with pytest.raises(ValueError, match=message):
            steps_lib.learning_rate(optimizer(**fields), total_steps=10)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> pathlib.Path:
    return synthetic_store(tmp_path_factory.mktemp("data"), 40, 32)


def test_a_cosine_run_stopped_in_its_warm_up_and_its_decay_resumes_exactly(store, tmp_path):
    """12 steps, warm-up 4, the span fixed: stopped at 3 (warming up) and 9 (decaying), then
    finished == uninterrupted. The plateau rule, which patience 1 would fire, stays off; the
    logged lr is the schedule's at each logged step."""
    fields = {"total_steps": 12, "log_every": 1, "optimizer.schedule": "cosine",
              "optimizer.lr_warmup_steps": 4, "optimizer.lr_decay_steps": 12,
              "optimizer.plateau_patience": 1}
    train.train_and_evaluate(tiny_config(store, **fields), str(tmp_path / "full"))
    for stop in (3, 9, 12):
        train.train_and_evaluate(tiny_config(store, **{**fields, "total_steps": stop}),
                                 str(tmp_path / "split"))
    shas = [[r["params_sha256"] for r in records(tmp_path / d, "checkpoint")]
            for d in ("full", "split")]
    assert shas[0] == shas[1] and len(shas[0]) == 4
    schedule = steps_lib.learning_rate(tiny_config(store, **fields).optimizer, 12)
    logged = {r["step"]: r["lr"] for r in records(tmp_path / "split", "train")}
    assert sorted(logged) == list(range(1, 13))
    for step, lr in logged.items():
        assert lr == pytest.approx(float(schedule(step - 1)), rel=1e-6), step
