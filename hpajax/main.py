"""Command-line entry point: ``python -m hpajax.main COMMAND --flags``.

Commands:
  demo    synthetic set -> store -> split -> train -> test-split macro-F1 (the default job)
  train   train (or resume) --config=experiments/configs/NAME.py --workdir=DIR
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from hpajax import demo, train, xla_defaults

config_flags.DEFINE_config_file("config", None, "Training config file (get_config()); "
                                "override fields with --config.field=value.")
flags.DEFINE_string("workdir", "runs/demo", "Directory for everything the command writes.")
flags.DEFINE_integer("num_samples", 2000, "demo: synthetic samples to generate.")
flags.DEFINE_integer("image_size", 128, "demo: image side in pixels.")
flags.DEFINE_integer("seed", 0, "demo: seed for data generation and splitting.")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "demo: worker processes for data work.")
flags.DEFINE_integer("train_steps", None, "demo: training steps (default: the demo config's).")
FLAGS = flags.FLAGS

COMMANDS = ("demo", "train")


def main(argv: list[str]) -> None:
    command = argv[1] if len(argv) > 1 else "demo"
    if command not in COMMANDS or len(argv) > 2:
        raise app.UsageError(f"usage: python -m hpajax.main [{'|'.join(COMMANDS)}] --flags; "
                             f"got {' '.join(argv[1:])!r}")
    xla_defaults.apply_cpu_defaults()  # before the first JAX computation reads XLA_FLAGS
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO

    if command == "demo":
        demo.run(FLAGS.workdir, FLAGS.num_samples, FLAGS.image_size, FLAGS.seed, FLAGS.workers,
                 FLAGS.train_steps)
    elif FLAGS.config is None:
        raise app.UsageError("train needs --config=experiments/configs/NAME.py")
    else:
        try:
            train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        except ValueError as e:  # bad config, store or split: say what, no traceback
            sys.exit(f"train: error: {e}")


if __name__ == "__main__":
    app.run(main)
