"""Lists the images of one store that are near-copies of another store's images.

  .venv/bin/python tools/dedupe.py --store=HPAV18 --against=KAGGLE \
      --against_parts=val,test --output=dups.csv     # copies of held-out images: leaks
  .venv/bin/python tools/dedupe.py --store=HPAV18 --against=KAGGLE --output=dups.csv

Writes ``Id,duplicate_of,score`` for every ``--store`` image whose best match
scores at least ``--threshold``; give the file as ``config.data.exclude`` to
train on ``--store`` without them. Prints the histogram of best scores around
the threshold: a clean gap below it means the threshold separates copies from
distinct fields. See ``hpajax.data.dedupe`` for the signature and its numbers.
"""

import sys

from absl import app, flags

from hpajax.data import dedupe

_STORE = flags.DEFINE_string("store", None, "Store whose copies are listed (e.g. HPAv18).",
                             required=True)
_AGAINST = flags.DEFINE_string("against", None, "Store of the originals (e.g. Kaggle).",
                               required=True)
_AGAINST_PARTS = flags.DEFINE_list("against_parts", [], "Match only against these parts of "
                                   "--against's --split (e.g. val,test); default every row.")
_SPLIT = flags.DEFINE_string("split", "default", "Split of --against that --against_parts "
                             "names parts of.")
_OUTPUT = flags.DEFINE_string("output", None, "CSV to write (Id,duplicate_of,score).",
                              required=True)
_THRESHOLD = flags.DEFINE_float("threshold", dedupe.THRESHOLD, "Lowest score of a duplicate "
                                "(the mean correlation of the thumbnails).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        _, summary = dedupe.dedupe_stores(_STORE.value, _AGAINST.value, _OUTPUT.value,
                                          _AGAINST_PARTS.value, _SPLIT.value, _THRESHOLD.value)
    except (ValueError, OSError) as e:  # StoreError is a ValueError too
        sys.exit(f"tools/dedupe.py: error: {e}")
    print(summary)


if __name__ == "__main__":
    app.run(main)
