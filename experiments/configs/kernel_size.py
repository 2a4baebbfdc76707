"""The seed's kernel-size sweep: its setup at 512 px with 3x3, 5x5 or 7x7 convolutions.

``--config=experiments/configs/kernel_size.py:5``.
"""

from hpajax.config import paper_config


def get_config(kernel="3"):
    config = paper_config()
    config.data.input_size = 512
    config.model.kernel_size = int(kernel)
    return config
