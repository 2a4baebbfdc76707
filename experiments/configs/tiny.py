"""A few-second CPU run for tests and quick checks: narrow model, a few steps.

  .venv/bin/python -m hpajax.main train --config=experiments/configs/tiny.py[:MODEL] \
      --workdir=runs/tiny --config.data.store=STORE

MODEL is ``config.model.name`` (default the seed CNN's first two blocks at a
quarter of its width, quick to compile; a backbone at its defaults). The seed
CNN here needs a store of at least 16 px images (the smallest that two VALID
blocks of kernel 3 take), a backbone 32 px. The rest is
``hpajax.config.base_config()``, plain data: all four channels, kernel 3, the
seed's optimizer, BCE and augmentation.
"""

import ml_collections

from hpajax.config import TINY_SEED_CNN, base_config, model_config


def get_config(model: str = "seed_cnn") -> ml_collections.ConfigDict:
    config = base_config()
    config.model = model_config(model)
    config.batch_size = 8  # small batches: fast steps on a CPU
    config.eval_batch_size = 16
    config.total_steps = 6
    config.log_every = 2
    config.eval_every = 3  # two evaluations and checkpoints in 6 steps
    config.checkpoint_every = 3
    config.bn_recalibration_batches = 2
    if model == "seed_cnn":
        config.model.update(TINY_SEED_CNN)  # two blocks at a quarter of the seed's width
    return config
