"""The seed's input-size sweep: its setup at 128, 256 or 512 px input, kernel 3.

  .venv/bin/python -m hpajax.main train --config=experiments/configs/input_size.py:256 \
      --workdir=runs/size256 [--config.data.store=STORE]

Images are read from the 512 px store and resized on device, so one store
serves every size; ``experiments/sweep.py`` runs all three. The rest is
``hpajax.config.paper_config()``, plain data: the seed's CNN and optimizer
on RGB, batch 32, 50 epochs with one evaluation and checkpoint per epoch.
"""

import ml_collections

from hpajax.config import paper_config


def get_config(size: str = "512") -> ml_collections.ConfigDict:
    config = paper_config()
    config.data.input_size = int(size)  # the model's input side, in px
    return config
