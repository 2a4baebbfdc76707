"""The seed's kernel-size sweep: its setup at 512 px with 3x3, 5x5 or 7x7 convolutions.

  .venv/bin/python -m hpajax.main train --config=experiments/configs/kernel_size.py:5 \
      --workdir=runs/kernel5 [--config.data.store=STORE]

``experiments/sweep.py`` runs all three. The rest is
``hpajax.config.paper_config()``, plain data: the seed's CNN and optimizer
on RGB of the 512 px store, batch 32, 50 epochs with one evaluation and
checkpoint per epoch.
"""

import ml_collections

from hpajax.config import paper_config


def get_config(kernel: str = "3") -> ml_collections.ConfigDict:
    config = paper_config()
    config.data.input_size = 512  # the seed's input size, whatever the store's
    config.model.kernel_size = int(kernel)  # every convolution is kernel x kernel
    return config
