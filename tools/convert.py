#!/usr/bin/env python3
"""Converts raw HPA image quads (Kaggle PNGs or HPA v18 JPEGs) into an hpajax store.

  python tools/convert.py --format=kaggle --input_dir=DATA/train \
      --labels_csv=DATA/train.csv --output_dir=STORE [--image_size=512]

Killed or interrupted, the same command resumes; rerun when finished, it does
nothing. See hpajax/data/convert.py.
"""

import os
import shlex
import sys

from absl import app, flags

from hpajax.data import convert, store
from hpajax.files import local_path, location

flags.DEFINE_enum("format", "kaggle", ["kaggle", "hpav18"], "Layout of the input files.")
flags.DEFINE_string("input_dir", None, "Folder holding the {Id}_{channel} image files.")
flags.DEFINE_string("labels_csv", None, "Id,Target label file; without it, Ids come from "
                    "the file names and the store has no labels.")
flags.DEFINE_string("output_dir", None, "Store folder to create (or resume): a local path, "
                    "s3://BUCKET/PREFIX or gs://BUCKET/PREFIX.")
flags.DEFINE_integer("image_size", 512, "Side of the stored images (area-filter resize).")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Decoding processes.")
flags.DEFINE_bool("skip_bad", False, "Convert the good samples and write the bad-sample "
                  "report into the store instead of stopping.")
flags.DEFINE_enum("codec", store.DEFAULT_CODEC, sorted(store.CODECS), "Chunk compression.")
flags.DEFINE_integer("shard_samples", None, "Samples per shard file (default: ~64 MiB).")
flags.mark_flags_as_required(["input_dir", "output_dir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        opts = convert.Options(
            format=FLAGS.format,
            input_dir=local_path(FLAGS.input_dir, "--input_dir"),
            output_dir=location(FLAGS.output_dir, "--output_dir"),
            labels_csv=local_path(FLAGS.labels_csv, "--labels_csv") if FLAGS.labels_csv
            else None,
            image_size=FLAGS.image_size,
            workers=FLAGS.workers,
            skip_bad=FLAGS.skip_bad,
            codec=FLAGS.codec,
            shard_samples=FLAGS.shard_samples,
            command=shlex.join(sys.argv),
        )
        result = convert.convert(opts)
    except (convert.ConversionError, ValueError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    verb = "already converted" if result.already_done else "wrote"
    skipped = f", {result.num_bad} bad sample(s) skipped" if result.num_bad else ""
    print(f"{verb} {result.num_samples} samples to {result.path}{skipped}")
    return 0


if __name__ == "__main__":
    app.run(main)
