"""Write a synthetic HPA-like data set in the Kaggle 2019 layout.

    python tools/make_synthetic.py --out_dir=/tmp/hpa_synth --num_samples=1000
    python tools/make_synthetic.py --out_dir=/tmp/hpa_synth --num_samples=200 --test
    python tools/make_synthetic.py --out_dir=/tmp/hpa_synth --num_samples=1000 \\
        --labels_csv=tests/data/hpa2019/train.csv

See ``hpajax.synthetic`` for what the images and labels look like.
"""

import os
import sys

from absl import app, flags

from hpajax import synthetic

_OUT_DIR = flags.DEFINE_string(
    "out_dir", None, "Directory to write train/ (or test/) and the csv to.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Number of samples (4 PNGs each).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 512, "Image side in pixels (Kaggle: 512).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed; output is a function of it alone.")
_WORKERS = flags.DEFINE_integer("workers", None, "Worker processes (default: all cores).")
_LABELS_CSV = flags.DEFINE_string(
    "labels_csv", None,
    "Kaggle train.csv to resample label sets from (real co-occurrence); "
    "default: the built-in label model.")
_TEST = flags.DEFINE_bool("test", False, "Write test/ and sample_submission.csv instead of train/.")

flags.mark_flag_as_required("out_dir")
flags.register_validator("num_samples", lambda n: n >= 1, "--num_samples must be >= 1")
flags.register_validator("image_size", lambda n: n >= 16, "--image_size must be >= 16")
flags.register_validator("seed", lambda n: n >= 0, "--seed must be >= 0")
flags.register_validator("workers", lambda n: n is None or n >= 1, "--workers must be >= 1")
flags.register_validator("labels_csv", lambda p: p is None or os.path.isfile(p),
                         "--labels_csv must name an existing file")


def main(argv: list[str]) -> None:
    """Generate the data set and say where it went."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        csv_path = synthetic.generate(
            _OUT_DIR.value, _NUM_SAMPLES.value, image_size=_IMAGE_SIZE.value, seed=_SEED.value,
            workers=_WORKERS.value, labels_csv=_LABELS_CSV.value, test=_TEST.value)
    except ValueError as e:  # e.g. a malformed --labels_csv
        sys.exit(f"make_synthetic: error: {e}")
    split = "test" if _TEST.value else "train"
    print(f"Wrote {_NUM_SAMPLES.value} {split} samples ({_IMAGE_SIZE.value} px) to "
          f"{csv_path.parent / split}/ and {csv_path}")


if __name__ == "__main__":
    app.run(main)
