"""The trainer on a tiny synthetic store: learning, resume, BN recalibration, launch."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import PYTHON, REPO, RESAMPLING_OFF, records, synthetic_store, tiny_config

from hpajax import inference, train
from hpajax import steps as steps_lib
from hpajax.data import pipeline
from hpajax.data.run_data import open_run_data
from sklearn.metrics import roc_auc_score

SIZE = 32  # the tiny seed CNN's two VALID blocks of kernel 3 need 16 px


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> pathlib.Path:
    """128 synthetic samples at 32 px, converted and split 70/10/20."""
    return synthetic_store(tmp_path_factory.mktemp("data"), 128, SIZE)


tiny = tiny_config


def test_loss_goes_down_and_logs_are_written(store, tmp_path):
    config = tiny(store, **{"total_steps": 40, "log_every": 10, "eval_every": 40,
                            "checkpoint_every": 40, **RESAMPLING_OFF})
    metrics = train.train_and_evaluate(config, str(tmp_path))
    losses = [r["loss"] for r in records(tmp_path, "train")]
    assert len(losses) == 4 and losses == sorted(losses, reverse=True)
    assert losses[-1] < 0.9 * losses[0]
    assert set(metrics) >= {"loss", "macro_f1", "weighted_f1"}
    assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 40
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    [ckpt] = records(tmp_path, "checkpoint")
    assert ckpt["step"] == 40 and len(ckpt["params_sha256"]) == 64


def test_resume_continues_exactly(store, tmp_path):
    """3 steps, stop, rerun to 6 == 6 uninterrupted: same weights, same logs."""
    full = tiny(store)
    train.train_and_evaluate(full, str(tmp_path / "full"))
    train.train_and_evaluate(tiny(store, total_steps=3), str(tmp_path / "split"))
    assert {p.name for p in (tmp_path / "split" / "checkpoints").iterdir()} == {"3"}
    train.train_and_evaluate(full, str(tmp_path / "split"))
    shas = [[r["params_sha256"] for r in records(tmp_path / d, "checkpoint")]
            for d in ("full", "split")]
    assert shas[0] == shas[1] and len(shas[0]) == 2
    assert records(tmp_path / "full", "val") == records(tmp_path / "split", "val")
    first = [records(tmp_path / d, "train")[0] for d in ("full", "split")]
    assert first[0]["step"] == first[1]["step"] == 2 and first[0]["loss"] == first[1]["loss"]


_OPENED: list[str] | None = None  # files opened while a test watches, else None


def _record_opens(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, pathlib.Path)):
        _OPENED.append(os.path.abspath(args[0]))


sys.addaudithook(_record_opens)  # hooks cannot be removed: it is inert unless _OPENED is set


def test_a_run_opens_its_store_and_reads_its_split_once(store, tmp_path):
    """Two evaluations and a checkpoint reread nothing: the data object is built once."""
    global _OPENED
    _OPENED = []
    try:
        train.train_and_evaluate(tiny(store), str(tmp_path))  # evaluates at steps 3 and 6
        opened = _OPENED
    finally:
        _OPENED = None
    for name in ("metadata.json", "ids.txt", "labels.npy", "splits/default.json"):
        assert opened.count(str(store / name)) == 1, name


def _val_auc(steps, state, store, rows) -> float:
    """Mean ROC-AUC over the classes present in some rows (inference mode)."""
    probs, labels = [], []
    for batch in pipeline.eval_dataset(store, rows, batch_size=16):
        out = steps.eval(state, steps_lib.to_device(steps, batch))
        probs.append(np.asarray(out["probs"])[batch["mask"]])
        labels.append(batch["label"][batch["mask"]])
    y, p = np.concatenate(labels), np.concatenate(probs)
    present = [c for c in range(y.shape[1]) if 0 < y[:, c].sum() < len(y)]
    return float(np.mean([roc_auc_score(y[:, c], p[:, c]) for c in present]))


def test_bn_recalibration_gives_exact_statistics_and_fixes_a_short_run(store):
    config = tiny(store, **{"bn_recalibration_batches": 8, **RESAMPLING_OFF})
    data = open_run_data(config.data)
    steps = train.build_steps(config, data)
    state = steps_lib.init_state(steps)
    batches = iter(inference.train_batches(config, data, seed=config.seed))
    sums = steps_lib.zero_sums(steps)
    for _ in range(150):
        state, sums = steps.train(state, steps_lib.to_device(steps, next(batches)), sums)
    recal = inference.recalibrate_batch_stats(steps, state, data)
    # First BN layer: its statistics are those of conv1's output over the union
    # of the recalibration batches.
    images = np.concatenate([b["image"] for b, _ in zip(
        inference.train_batches(config, data, seed=config.seed + 1), range(8))])
    conv = jax.lax.conv_general_dilated(
        images.astype(np.float32) / 255, state.params["block1_conv1"]["kernel"], (1, 1),
        "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    bn = recal.batch_stats["block1_bn1"]
    np.testing.assert_allclose(bn["mean"], conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn["var"], conv.var((0, 1, 2)), rtol=1e-3, atol=1e-6)
    assert jax.tree.all(jax.tree.map(np.array_equal, recal.params, state.params))
    # After 150 steps the momentum-0.99 running variances are still far from
    # the data's (dark inputs, initial value 1): inference with them hides
    # what the model learned, the recalibrated statistics show it.
    ratio = np.median(state.batch_stats["block1_bn1"]["var"] / conv.var((0, 1, 2)))
    rows = data.sources[0].rows
    before = _val_auc(steps, state, data.store, rows)
    after = _val_auc(steps, recal, data.store, rows)
    print(f"running/true variance {ratio:.1f}; mean AUC on the training split: "
          f"running stats {before:.3f}, recalibrated {after:.3f}")
    assert ratio > 2
    assert after > before


def test_cli_train_applies_overrides_and_resumes(store, tmp_path):
    cmd = [PYTHON, "-m", "hpajax.main", "train", "--config=experiments/configs/tiny.py",
           f"--config.data.store={store}", "--config.total_steps=2", "--config.eval_every=2",
           "--config.optimizer.plateau_patience=7", f"--workdir={tmp_path}"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["total_steps"] == 2 and saved["optimizer"]["plateau_patience"] == 7
    assert f"logs: {tmp_path / 'metrics.jsonl'}" in r.stdout and "step 2/2" in r.stdout
    r = subprocess.run(cmd[:-4] + ["--config.total_steps=4", "--config.eval_every=2",
                                   "--config.optimizer.plateau_patience=7", f"--workdir={tmp_path}"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "at step 2" in r.stdout
    assert [c["step"] for c in records(tmp_path, "checkpoint")] == [2, 3, 4]


def test_builds_share_their_programs_unless_a_program_input_differs(store):
    """A process jits a run's steps once: a build that differs only in what no step
    computes with (steps, logging, seed, store) gets the same jitted functions, with
    its own config; any input of a program gets new ones."""
    data = open_run_data(tiny(store).data)
    first = train.build_steps(tiny(store), data)
    again = train.build_steps(tiny(store, total_steps=9, log_every=1, seed=3), data)
    programs = lambda steps: (steps.train, steps.eval, steps.moments, steps.init)  # noqa: E731
    assert all(a is b for a, b in zip(programs(again), programs(first)))
    assert again.config.seed == 3 and again.config.total_steps == 9
    # The seed is the shared initializer's argument, not a constant in it.
    kernels = [steps_lib.init_state(s).params["block1_conv1"]["kernel"] for s in (first, again)]
    assert not np.array_equal(*kernels)
    for override in ({"model.filters": (8, 8)}, {"loss": "focal"}, {"focal_gamma": 1.0},
                     {"optimizer.learning_rate": 2e-3}, {"augment.rotate": False},
                     {"ema_decay": 0.9}, {"tta": 2}, {"data.input_size": 28},
                     {"data.channels": (0, 1, 2)}):
        other = train.build_steps(tiny(store, **override), data)
        assert not any(a is b for a, b in zip(programs(other), programs(first))), override


@pytest.mark.parametrize("field", ["total_steps", "log_every", "eval_every", "checkpoint_every"])
def test_a_step_count_below_one_is_refused_before_anything_is_written(store, tmp_path, field):
    with pytest.raises(ValueError, match=f"config.{field}=0: must be 1 or more"):
        train.train_and_evaluate(tiny_config(store, **{field: 0}), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
