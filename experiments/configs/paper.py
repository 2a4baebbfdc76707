"""The seed paper's setup: 512 px, kernel 3, batch 32, RGB (3 channels).

  .venv/bin/python -m hpajax.main train --config=experiments/configs/paper.py \
      --workdir=runs/paper [--config.data.store=STORE]

``hpajax.config.paper_config()``, plain data: ``base_config()`` (the seed's
CNN and Table 4 optimizer, BCE, the seed's augmentation) on the red, green
and blue channels of the 512 px store, batch 32 with kernel 3, and 50 epochs
with one evaluation and checkpoint per epoch (777 steps of batch 32 cover
the 80 % training share of the 31,072 Kaggle samples).
"""

import ml_collections

from hpajax.config import paper_config


def get_config() -> ml_collections.ConfigDict:
    return paper_config()
