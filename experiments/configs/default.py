"""Ours: the seed's CNN and optimizer on all four channels, from the 512 px store.

  .venv/bin/python -m hpajax.main train --config=experiments/configs/default.py \
      --workdir=runs/exp1 [--config.data.store=STORE]

Everything but the store is ``hpajax.config.base_config()``, plain data:
red, green, blue and yellow at the store's size; the seed's CNN (kernel 3,
32/64/128/256 filters, head 512/256) in float32; Adam at 1e-3, x0.1 after 3
evaluations without a better validation loss; BCE; the seed's augmentation;
batch 32 for 10,000 steps, evaluated and checkpointed every 500.
"""

import ml_collections

from hpajax.config import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    config.data.store = "runs/hpa512/store"  # the Kaggle set converted at 512 px
    return config
