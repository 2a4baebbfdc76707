"""Saves a multi-label stratified split with a labelled store.

  .venv/bin/python tools/split.py --store=STORE                # train/val/test 0.7/0.1/0.2
  .venv/bin/python tools/split.py --store=STORE --folds=5      # split kfold5: fold0..fold4

The seed paper split 80/20 train/test; our validation set comes out of the
training share. See ``hpajax.data.split`` for the method.
"""

import sys

from absl import app, flags

from hpajax.data import split

_STORE = flags.DEFINE_string("store", None, "Labelled hpajax store directory.", required=True)
_FRACTIONS = flags.DEFINE_list("fractions", "0.7,0.1,0.2", "Share of each part; sum 1.")
_PARTS = flags.DEFINE_list("parts", "train,val,test", "Part names, one per fraction.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the split.")
_NAME = flags.DEFINE_string("name", "default", "Split name (file splits/NAME.json).")
_FOLDS = flags.DEFINE_integer("folds", None, "Make K stratified folds instead, saved as "
                              "split kfoldK with parts fold0..fold{K-1} (ignores "
                              "--fractions, --parts and --name).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        fractions = [float(x) for x in _FRACTIONS.value]
    except ValueError as e:
        sys.exit(f"tools/split.py: error: --fractions must be comma-separated numbers: {e}")
    try:
        _, summary = split.split_store(_STORE.value, fractions, _PARTS.value,
                                       _SEED.value, _NAME.value, _FOLDS.value)
    except ValueError as e:  # StoreError is a ValueError too
        sys.exit(f"tools/split.py: error: {e}")
    print(summary)


if __name__ == "__main__":
    app.run(main)
