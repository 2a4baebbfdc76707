"""The seed's input-size sweep: its setup at 128, 256 or 512 px input, kernel 3.

Images are read from the 512 px store and resized on device, so one store
serves every size: ``--config=experiments/configs/input_size.py:256``.
"""

from hpajax.config import paper_config


def get_config(size="512"):
    config = paper_config()
    config.data.input_size = int(size)
    return config
