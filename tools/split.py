"""Saves a multi-label stratified split with a labelled store.

  .venv/bin/python tools/split.py --store=STORE                # train/val/test 0.7/0.1/0.2
  .venv/bin/python tools/split.py --store=STORE --folds=5      # split kfold5: fold0..fold4
  .venv/bin/python tools/split.py --store=STORE --folds=5 --test_fraction=0.2  # + part test
  .venv/bin/python tools/split.py --store=HPAV18 --group_by=gene   # no gene in two parts
  .venv/bin/python tools/split.py --store=HPAV18 --groups_csv=HPAv18RGBY_wodpl_withCellLine.csv \
      --group_by=CellLine                                       # any grouping of the Ids

The seed paper split 80/20 train/test; our validation set comes out of the
training share. See ``hpajax.data.split`` for the method.

Grouping takes two flags, not three: ``--group_by`` says what to group by,
read from the HPAv18 Ids (gene or antibody) or, given ``--groups_csv``, from
that file's column of that name.
"""

import sys

from absl import app, flags

from hpajax.data import split

_STORE = flags.DEFINE_string("store", None, "Labelled hpajax store: a folder, s3:// or gs://.",
                             required=True)
_FRACTIONS = flags.DEFINE_list("fractions", "0.7,0.1,0.2", "Share of each part; sum 1.")
_PARTS = flags.DEFINE_list("parts", "train,val,test", "Part names, one per fraction.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the split.")
_NAME = flags.DEFINE_string("name", "default", "Split name (file splits/NAME.json).")
_FOLDS = flags.DEFINE_integer("folds", None, "Make K stratified folds instead, saved as "
                              "split kfoldK with parts fold0..fold{K-1} (ignores "
                              "--fractions, --parts and --name).")
_TEST_FRACTION = flags.DEFINE_float("test_fraction", 0.0, "With --folds: first a stratified "
                                    "part 'test' of this share, the folds from the rest; "
                                    "0: folds only.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a saved split of the same name "
                               "made with other options (refused otherwise).")
_GROUP_BY = flags.DEFINE_string("group_by", "none", "Keep each group in one part: 'gene' or "
                                "'antibody' of HPAv18 Ids ([GENE_]ANTIBODY_PLATE_WELL_FIELD), "
                                "or with --groups_csv a column of that file; 'none': no groups.")
_GROUPS_CSV = flags.DEFINE_string("groups_csv", None, "CSV with an Id column and the "
                                  "--group_by column, one row per store Id.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        fractions = [float(x) for x in _FRACTIONS.value]
    except ValueError as e:
        sys.exit(f"tools/split.py: error: --fractions must be comma-separated numbers: {e}")
    try:
        _, summary = split.split_store(_STORE.value, fractions, _PARTS.value,
                                       _SEED.value, _NAME.value, _FOLDS.value,
                                       _GROUP_BY.value, _GROUPS_CSV.value,
                                       _TEST_FRACTION.value, _OVERWRITE.value)
    except ValueError as e:  # StoreError is a ValueError too
        sys.exit(f"tools/split.py: error: {e}")
    print(summary)


if __name__ == "__main__":
    app.run(main)
