"""The checkpointer's preservation policy: the last K steps plus the best one."""

import jax.numpy as jnp
import numpy as np

from hpajax import checkpointing


def test_checkpoints_keep_the_last_k_and_the_best(tmp_path):
    ckpt = checkpointing.Checkpointer(tmp_path, keep=1, best_metric="macro_f1", best_mode="max")
    state = {"w": jnp.zeros(3)}
    for step, f1 in [(1, 0.9), (2, 0.1), (3, 0.2)]:
        ckpt.save(step, {"w": state["w"] + step}, {"loss": state["w"].sum()}, {"next_index": step},
                  {"macro_f1": f1})
    ckpt.close()
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [1, 3]
    again = checkpointing.Checkpointer(tmp_path, keep=1, best_metric="macro_f1", best_mode="max")
    assert again.best_step() == 1 and again.latest_step() == 3
    np.testing.assert_array_equal(again.restore(1, state)[0]["w"], np.ones(3))
    again.close()


def test_evaluated_steps_are_those_saved_with_metrics(tmp_path):
    ckpt = checkpointing.Checkpointer(tmp_path, keep=3, best_metric="macro_f1", best_mode="max")
    state = {"w": jnp.zeros(3)}
    ckpt.save(1, state, {"loss": state["w"].sum()}, {"next_index": 1}, {"macro_f1": 0.5})
    ckpt.save(2, state, {"loss": state["w"].sum()}, {"next_index": 2})
    ckpt.close()
    again = checkpointing.Checkpointer(tmp_path, keep=3, best_metric="macro_f1", best_mode="max")
    assert again.evaluated(1) and not again.evaluated(2)
    again.close()
