"""Ours: the seed's CNN and optimizer on all four channels (512 px store)."""

from hpajax.config import base_config


def get_config():
    config = base_config()
    config.data.store = "runs/hpa512/store"
    return config
