"""The seed paper's setup: 512 px, kernel 3, batch 32, RGB (3 channels)."""

from hpajax.config import base_config


def get_config():
    config = base_config()
    config.data.store = "runs/hpa512/store"
    config.data.channels = (0, 1, 2)
    config.batch_size = 32
    config.model.kernel_size = 3
    # One evaluation per epoch of the 80 % training share of 31,072 samples.
    config.eval_every = config.checkpoint_every = 777
    config.total_steps = 50 * 777
    return config
