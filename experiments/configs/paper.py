"""The seed paper's setup: 512 px, kernel 3, batch 32, RGB (3 channels)."""

from hpajax.config import paper_config


def get_config():
    return paper_config()
