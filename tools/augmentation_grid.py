"""Writes a PNG of a store's first samples, each followed by its augmented version.

  .venv/bin/python tools/augmentation_grid.py --store=STORE --output=grid.png
  .venv/bin/python tools/augmentation_grid.py --store=STORE --output=grid.png \
      --config=experiments/configs/default.py --config.augment.rotate=False

The picture to look at when choosing augmentation settings: the samples go
through ``hpajax.augment.augment`` under ``jax.jit``, as in training, with
the ``augment`` block of --config (default: ``hpajax.config.base_config()``'s).
"""

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from hpajax import augment, grids, logs
from hpajax.config import base_config
from hpajax.data import open_store

_STORE = flags.DEFINE_string("store", None, "hpajax store to show the first samples of.",
                             required=True)
_OUTPUT = flags.DEFINE_string("output", None, "PNG file to write.", required=True)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "Samples to show (at most the store's).",
                                    lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the augmentation's random draws.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file whose augment block is used (default: the base "
    "config's); fields can be overridden, e.g. --config.augment.rotate=False.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logs.quiet_library_logs()
    cfg = (_CONFIG.value or base_config()).augment
    try:
        store = open_store(_STORE.value)
    except ValueError as e:  # StoreError
        sys.exit(f"tools/augmentation_grid.py: error: {e}")
    count = min(_NUM_SAMPLES.value, len(store))
    originals = store.images[:count].read().result()
    augmented = jax.jit(lambda key, images: augment.augment(key, images, cfg))(
        jax.random.key(_SEED.value), originals)
    labels = None if store.labels is None else store.labels[:count]
    path = grids.save_augmentation_grid(_OUTPUT.value, originals, jax.device_get(augmented),
                                        labels)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
