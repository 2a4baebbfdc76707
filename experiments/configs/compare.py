"""One model from scratch on a small synthetic set: a run of ``compare_backbones.py``.

  .venv/bin/python -m hpajax.main train --config=experiments/configs/compare.py:resnet18 \
      --workdir=runs/compare/resnet18 --config.data.store=STORE

The argument is ``config.model.name``: ``seed_cnn`` or one of
``hpajax.config.BACKBONES``. Every model gets the same data, optimizer, loss
and augmentation (``hpajax.config.base_config()``), so that only the network
differs; the runs stop by wall-clock, not by ``total_steps``.
"""

import ml_collections

from hpajax.config import base_config, model_config


def get_config(name: str = "seed_cnn") -> ml_collections.ConfigDict:
    config = base_config()
    config.model = model_config(name)  # the one field that differs between the runs
    if name != "seed_cnn":
        config.optimizer.decay = "kernels"  # the backbones' BatchNorm and biases undecayed
    config.batch_size = 16  # the demo's CPU batch
    config.total_steps = 100_000  # never reached: compare_backbones.py stops each run by time
    config.log_every = 25
    config.eval_every = config.checkpoint_every = 100  # the equal-steps point is a multiple
    config.keep_checkpoints = 1_000  # every evaluated step stays restorable
    config.bn_recalibration_batches = 10
    return config
