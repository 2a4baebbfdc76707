"""Command-line entry point: ``python -m hpajax.main COMMAND --flags``.

Commands:
  demo   synthetic set -> converted store -> split -> summary (the default job).
"""

import os

from absl import app, flags

from hpajax import demo

flags.DEFINE_string("workdir", "runs/demo", "Directory for everything the command writes.")
flags.DEFINE_integer("num_samples", 2000, "demo: synthetic samples to generate.")
flags.DEFINE_integer("image_size", 128, "demo: image side in pixels.")
flags.DEFINE_integer("seed", 0, "Seed for data generation and splitting.")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes for data work.")
FLAGS = flags.FLAGS

COMMANDS = ("demo",)


def main(argv: list[str]) -> None:
    command = argv[1] if len(argv) > 1 else "demo"
    if command not in COMMANDS or len(argv) > 2:
        raise app.UsageError(f"usage: python -m hpajax.main [{'|'.join(COMMANDS)}] --flags; "
                             f"got {' '.join(argv[1:])!r}")
    print(demo.run(FLAGS.workdir, FLAGS.num_samples, FLAGS.image_size, FLAGS.seed,
                   FLAGS.workers))


if __name__ == "__main__":
    app.run(main)
