"""A few-second CPU run for tests and quick checks: narrow model, a few steps.

Needs a store of at least 76 px images (the smallest the four VALID blocks
take with kernel 3): --config.data.store=STORE.
"""

from hpajax.config import base_config


def get_config():
    config = base_config()
    config.batch_size = 8
    config.eval_batch_size = 16
    config.total_steps = 6
    config.log_every = 2
    config.eval_every = 3
    config.checkpoint_every = 3
    config.bn_recalibration_batches = 2
    config.model.filters = (8, 16, 32, 64)
    config.model.head = (32, 16)
    return config
