"""The data path (no JAX): labels, store, conversion, split, run data, Grain pipeline."""

from hpajax.data.store import Store, StoreError, open_store

__all__ = ["Store", "StoreError", "open_store"]
