"""The data path: labels, store, conversion, split and Grain pipeline (no JAX)."""

from hpajax.data.store import Store, StoreError, open_store

__all__ = ["Store", "StoreError", "open_store"]
