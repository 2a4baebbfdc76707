"""Fault tolerance: SIGKILL and SIGTERM at any moment, NaN steps, damaged checkpoints,
changed configs and stores, unwritable workdirs."""

import json
import pathlib
import random
import shutil
import signal
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PYTHON, REPO, run_records, synthetic_store, tiny_config

from hpajax import checkpointing, inference, logs, train
from hpajax import steps as steps_lib
from hpajax.data.run_data import open_run_data

SIZE = 32  # the tiny seed CNN's two VALID blocks of kernel 3 need 16 px
STEPS = {"total_steps": 18, "log_every": 2, "eval_every": 6, "checkpoint_every": 3}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> pathlib.Path:
    return synthetic_store(tmp_path_factory.mktemp("data"), 64, SIZE)


@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory) -> pathlib.Path:
    """The reference: STEPS trained in one go."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train.train_and_evaluate(tiny_config(store, **STEPS), str(workdir))
    return workdir


def command(store, workdir, **overrides) -> list[str]:
    flat = {**STEPS, **overrides}
    return [PYTHON, "-m", "hpajax.main", "train", "--config=experiments/configs/tiny.py",
            f"--config.data.store={store}", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in flat.items())]


def run_until(cmd, pattern: str, sig: int) -> tuple[int, str]:
    """Starts ``cmd``, sends ``sig`` right after a stdout line containing ``pattern``."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if pattern in line:
            proc.send_signal(sig)
            break
    out += proc.stdout.read()
    return proc.wait(timeout=300), "".join(out)


def test_sigkill_at_random_moments_then_resume_is_exact(store, uninterrupted, tmp_path):
    """Three kills at random steps: mid-training (a checkpoint already complete), during
    a resume, and right after an evaluation while its checkpoint is written."""
    rng = random.Random()  # the chosen points are printed, to replay a failure
    patterns = [f"step {rng.choice([8, 10])}/18", "resumed from",
                f"step {rng.choice([12, 18])} val"]
    print("kill points:", patterns)
    kills = 0
    for pattern in patterns:
        rc, out = run_until(command(store, tmp_path), pattern, signal.SIGKILL)
        kills += rc == -signal.SIGKILL
    assert kills == 3, "every run was killed before it could finish"
    train.train_and_evaluate(tiny_config(store, **STEPS), str(tmp_path))  # as the command does
    assert run_records(tmp_path) == run_records(uninterrupted)  # same shas, losses, metrics, once each


def test_sigterm_saves_exits_zero_and_resumes_exactly(store, uninterrupted, tmp_path,
                                                      capsys):
    rc, out = run_until(command(store, tmp_path), "step 4/18", signal.SIGTERM)
    assert rc == 0, out
    [stopped] = [line for line in out.splitlines() if line.startswith("stopped by SIGTERM")]
    step = int(stopped.split("after step ")[1].split(",")[0])
    assert 4 <= step < 18 and (tmp_path / "checkpoints" / str(step)).is_dir()
    train.train_and_evaluate(tiny_config(store, **STEPS), str(tmp_path))
    assert f"at step {step}" in capsys.readouterr().out
    extra = {"step": step, "split": "checkpoint"}  # the preemption checkpoint's record
    assert [r for r in run_records(tmp_path)
            if {k: r[k] for k in extra} != extra] == run_records(uninterrupted)


def test_nan_stops_naming_the_step_and_ids_and_keeps_the_last_good_checkpoint(store, tmp_path):
    train.train_and_evaluate(tiny_config(store, total_steps=3), str(tmp_path))
    good = [r["params_sha256"] for r in run_records(tmp_path) if r["split"] == "checkpoint"]
    exploding = tiny_config(store, **{"optimizer.learning_rate": 1e30, "total_steps": 9})
    with pytest.raises(FloatingPointError, match=r"step \d+: NaN or Inf .* sample Ids: \w+"):
        train.train_and_evaluate(exploding, str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3"]
    config = tiny_config(store)
    steps = train.build_steps(config, open_run_data(config.data))
    state, _ = checkpointing.Checkpointer(tmp_path / "checkpoints", 3, "macro_f1",
                                          "max").restore(3, steps_lib.init_state(steps))
    assert checkpointing.params_sha256(state.params, state.batch_stats) == good[-1]


def test_skipping_cannot_hide_diverged_weights(store, tmp_path, capsys):
    exploding = tiny_config(store, **{"optimizer.learning_rate": 1e30, "skip_nonfinite": True})
    with pytest.raises(FloatingPointError, match="step 3: the model's outputs on the "
                                                 "validation split are NaN or Inf"):
        train.train_and_evaluate(exploding, str(tmp_path))
    assert "warning: step 2: NaN or Inf in the loss or gradients" in capsys.readouterr().out
    [logged] = [r for r in run_records(tmp_path) if r["split"] == "train"]
    assert logged["step"] == 2 and logged["nonfinite_steps"] == 1


def test_a_nonfinite_step_is_skipped_and_counted(store):
    config = tiny_config(store)
    data = open_run_data(config.data)
    steps = train.build_steps(config, data)
    state = steps_lib.init_state(steps)
    kernel = state.params["block1_conv1"]["kernel"]
    params = {**state.params, "block1_conv1": {"kernel": kernel.at[0, 0, 0, 0].set(jnp.nan)}}
    state = jax.device_put(state.replace(params=params), steps.replicated)
    before = jax.device_get(state)
    batch = next(iter(inference.train_batches(config, data, seed=0)))
    after, sums = steps.train(state, steps_lib.to_device(steps, batch), steps_lib.zero_sums(steps))
    after, sums = jax.device_get((after, sums))
    assert int(sums["nonfinite"]) == 1 and int(sums["first_nonfinite"]) == 1
    assert int(sums["steps"]) == 0 and float(sums["loss"]) == 0.0
    assert int(after.step) == 1  # the data order moves on
    same = jax.tree.map(lambda a, b: np.array_equal(a, b, equal_nan=True),
                        (after.params, after.opt_state), (before.params, before.opt_state))
    assert all(jax.tree.leaves(same))


def _damage_truncate(step_dir: pathlib.Path) -> None:
    files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    with open(files[-1], "r+b") as f:
        f.truncate(files[-1].stat().st_size // 2)


def _damage_delete_state(step_dir: pathlib.Path) -> None:
    shutil.rmtree(step_dir / "state")


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_delete_state])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(store, uninterrupted, tmp_path,
                                                                damage, capsys):
    train.train_and_evaluate(tiny_config(store, **{**STEPS, "total_steps": 6}), str(tmp_path))
    damage(tmp_path / "checkpoints" / "6")
    train.train_and_evaluate(tiny_config(store, **STEPS), str(tmp_path))
    out = capsys.readouterr().out
    assert "warning: checkpoint 6 in" in out and "is unusable" in out and "at step 3" in out
    assert len(list((tmp_path / "damaged").iterdir())) == 1
    assert run_records(tmp_path) == run_records(uninterrupted)


def test_a_torn_last_metrics_line_is_dropped_and_the_resume_proceeds(store, tmp_path, capsys):
    """A kill or a full disk in the middle of an append leaves half a record."""
    train.train_and_evaluate(tiny_config(store, **{**STEPS, "total_steps": 3}), str(tmp_path))
    before = run_records(tmp_path)
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 4, "split": "train", "lo')
    train.train_and_evaluate(tiny_config(store, **{**STEPS, "total_steps": 6}), str(tmp_path))
    torn = len(before) + 1
    assert f"warning: {path}:{torn}: incomplete last line dropped" in capsys.readouterr().out
    after = run_records(tmp_path)
    assert after[:len(before)] == before
    assert [(r["step"], r["split"]) for r in after[len(before):]] == [
        (4, "train"), (6, "train"), (6, "val"), (6, "checkpoint")]


def test_a_corrupt_middle_metrics_line_is_an_error_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    text = '{"step": 1, "split": "train"}\n{"step": 2, "spl\n{"step": 3, "split": "val"}\n'
    path.write_text(text)
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: corrupt metrics record"):
        logs.MetricsLog(tmp_path, 1)
    assert path.read_text() == text  # left for the user to fix


def test_no_usable_checkpoint_is_a_clear_error(store, tmp_path):
    train.train_and_evaluate(tiny_config(store, total_steps=3), str(tmp_path))
    _damage_delete_state(tmp_path / "checkpoints" / "3")
    with pytest.raises(checkpointing.CheckpointError, match="no usable checkpoint in .*step 3"):
        train.train_and_evaluate(tiny_config(store), str(tmp_path))


def test_a_config_of_another_shape_is_refused_naming_the_field(store, tmp_path):
    train.train_and_evaluate(tiny_config(store, total_steps=3), str(tmp_path))
    wider = tiny_config(store, **{"model.filters": (8, 32)})
    with pytest.raises(ValueError, match=r"config.model.filters=\[8, 32\] does not "
                                         r"match the checkpoints .* \[8, 16\]"):
        train.train_and_evaluate(wider, str(tmp_path))
    longer = tiny_config(store, total_steps=6)  # other fields may change
    train.train_and_evaluate(longer, str(tmp_path))


def test_a_changed_store_is_refused(store, tmp_path):
    train.train_and_evaluate(tiny_config(store, total_steps=3), str(tmp_path / "run"))
    other = synthetic_store(tmp_path / "other", 60, SIZE)
    with pytest.raises(ValueError, match=r"training data changed .*\(64 samples then, 60 now"):
        train.train_and_evaluate(tiny_config(other, total_steps=6), str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["total_steps"] == 3


def test_an_unwritable_workdir_fails_at_start(store, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    r = subprocess.run(command(store, tmp_path / "file"), cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1
    assert f"train: error: --workdir={tmp_path / 'file'}: cannot write there" in r.stderr


def test_a_full_disk_at_save_time_is_a_clear_error_and_keeps_the_complete_steps(store,
                                                                                 tmp_path):
    """Files may not grow past 16 KiB (RLIMIT_FSIZE, as a full disk): logs fit, checkpoints not."""
    train.train_and_evaluate(tiny_config(store, total_steps=3), str(tmp_path))
    limit = 16 * 1024  # logs stay under 2 KiB; a checkpoint's metadata alone is over 20 KiB
    code = ("import resource, runpy, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            f"sys.argv = {command(store, tmp_path, total_steps=6)!r}[2:]\n"
            "runpy.run_module('hpajax.main', run_name='__main__')\n")
    r = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"train: error: writing a checkpoint to {tmp_path / 'checkpoints'} failed" in r.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["3"]
    train.train_and_evaluate(tiny_config(store, total_steps=6), str(tmp_path))  # resumes at 3
