"""Command-line entry point: ``python -m hpajax.main COMMAND --flags``.

Commands:
  demo      synthetic set -> store -> split -> train -> report (the default job)
  train     train (or resume) --config=experiments/configs/NAME.py --workdir=DIR
  cv        k-fold cross-validation: a run per fold of config.data.split, then the
            out-of-fold report --config=... --workdir=DIR [--fold=k: that fold only]
  ensemble  runs or cross-validations of the same images averaged, with its report
            --members=W1,W2:0.5,... --workdir=DIR
  evaluate  tuned thresholds, metric tables and figures in DIR/report/ --workdir=DIR
  predict   probabilities and a Kaggle submission --workdir=DIR --input=STORE_OR_PNG_DIR
            [--engine=jax|stablehlo|onnx]
  export    the model(s) of a run, cross-validation or ensemble as StableHLO and ONNX files
            that run without hpajax, with manifest.json and MODEL_CARD.md --workdir=DIR

Multi-host: run the same command in every process with --coordinator_address,
--num_processes and --process_id (or none of them under SLURM or on a Cloud
TPU pod slice, which are detected); see hpajax/distributed.py.
"""

import contextlib
import os
import re
import sys

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from hpajax import commands, cv, demo, distributed, ensemble, exported, logs, preemption
from hpajax import report, train
from hpajax import export as export_lib
from hpajax import xla_defaults
from hpajax import config as config_lib
from hpajax.checkpointing import CheckpointError
from hpajax.data.convert import ConversionError


class _ConfigFile(ConfigFileFlagParser):
    """Loads ``--config=FILE`` for its ``--config.FIELD`` overrides.

    With ``--config.model.name=NAME`` on the command line, the model block is
    NAME's (``config.model_block_for``), so that overrides of NAME's own fields
    (``--config.model.init_from`` with ``resnet18`` on the seed CNN's config)
    find them; an override of a field that the config lacks is refused in one
    line naming it, not with ml_collections' traceback.
    """

    def parse(self, path: str) -> ml_collections.ConfigDict:
        config = super().parse(path)
        if not isinstance(config, ml_collections.ConfigDict):
            return config  # a file that failed to load: ml_collections reports it on use
        overrides = _overrides(FLAGS.read_flags_from_files(sys.argv, force_gnu=False))
        name = overrides.get("model.name")
        if name in config_lib.MODELS:
            with config.unlocked():  # relocked whole: the new block takes no unknown fields
                config.model = config_lib.model_block_for(config.model, name)
        for field in overrides:
            if why := config_lib.missing_field(config, field):
                raise flags.IllegalFlagValueError(f"--config.{field} (config file {path}): {why}")
        return config


def _overrides(argv: list[str]) -> dict[str, str | None]:
    """The config fields ``argv`` overrides (``--config.FIELD[=VALUE]``), each with its last
    value (the next argument when written apart, None at the end)."""
    found = {}
    for i, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        field = re.fullmatch(r"-{1,2}(?:no)?config\.(.+)", flag)
        if field:
            found[field[1]] = value if equals else next(iter(argv[i + 1:i + 2]), None)
    return found


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, a bad flag said in one line."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}")


config_flags.DEFINE_config_file("config", None, "Training config file (get_config()); "
                                "override fields with --config.field=value.")
flags.FLAGS["config"].parser = _ConfigFile("config")  # ml_collections' loader, and the above
flags.DEFINE_string("workdir", "runs/demo", "Folder for everything the command writes: local "
                    "or gs:// (s3:// is refused: Orbax cannot write checkpoints there).")
flags.DEFINE_integer("num_samples", 2000, "demo: synthetic samples to generate.")
flags.DEFINE_integer("image_size", 96, "demo: image side in pixels.")
flags.DEFINE_integer("seed", 0, "demo: seed for data generation and splitting.")
flags.DEFINE_integer("workers", os.cpu_count() or 1, "demo: worker processes for data work.")
flags.DEFINE_integer("train_steps", None, "demo: training steps (default: the demo config's).")
flags.DEFINE_integer("step", None, "evaluate, predict, export: checkpoint step (default: "
                     "the best).")
flags.DEFINE_integer("fold", None, "cv: train this fold only (0 to K-1), e.g. one per job of "
                     "an array job; without it, every fold not yet trained, then the report.",
                     lower_bound=0)
flags.DEFINE_enum("checkpoint", "last", list(cv.CHECKPOINTS), "cv: each fold's checkpoint that "
                  "predicts its held-out fold; 'best' is chosen on those rows, which makes the "
                  "out-of-fold scores optimistic.")
flags.DEFINE_bool("seed_thresholds", True, "evaluate: also report thresholds tuned on the "
                  "training split, as the seed paper did (predicts the training split).")
flags.DEFINE_string("members", None, "ensemble: comma-separated WORKDIR[:WEIGHT], runs or "
                    "cross-validation folders of the same images (weights normalized; "
                    "default equal).")
flags.DEFINE_integer("tta", None, "evaluate, predict, cv: test-time augmentation, the model's "
                     "probabilities over 1, 2, 4 or 8 flips/rotations (default: the run's "
                     "config.tta).")
flags.DEFINE_enum("tta_reduce", None, ["mean", "max"], "evaluate, predict, cv: how the views "
                  "(and, with config.augment.crop, the grid of crops) are reduced (default: "
                  "the run's config.tta_reduce).")
flags.DEFINE_integer("min_val_positives", report.MIN_VAL_POSITIVES, "evaluate, cv, ensemble: "
                     "classes with fewer validation (or out-of-fold) positives keep their "
                     "rate-matched threshold in the guarded set.", lower_bound=0)
flags.DEFINE_enum("thresholds", report.USE, list(report.PREDICTION_THRESHOLDS),
                  "predict: guarded (tuned on validation, rare classes rate-matched), "
                  "tuned_on_val, rate (each class predicted at its training frequency on the "
                  "predicted set) or 0.5.")
flags.DEFINE_string("input", None, "predict: a converted store (local, s3://, gs://) or a local "
                    "folder of Kaggle PNG quads.")
flags.DEFINE_string("output_dir", None, "predict: output folder (default: "
                    "WORKDIR/predictions); export: a new or empty folder (default: "
                    "WORKDIR/export).")
flags.DEFINE_enum("engine", "jax", list(exported.ENGINES), "predict: jax (the checkpoints), or "
                  "the file `export` wrote into WORKDIR/export (stablehlo, onnx), with the "
                  "thresholds of its manifest.")
flags.DEFINE_list("formats", list(export_lib.FORMATS), "export: the files to write, of "
                  + ", ".join(export_lib.FORMATS) + ".")
flags.DEFINE_string("ids_csv", None, "predict: CSV with an Id column (e.g. sample_submission.csv) "
                    "giving the images and their order; default: every quad in --input.")
flags.DEFINE_bool("at_least_one", False, "predict: give an image with no class above threshold "
                  "its most probable class in submission.csv.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0's "
                    "coordinator, the same for every process.")
flags.DEFINE_integer("num_processes", None, "Multi-host: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's number, 0 to "
                     "num_processes - 1.")
FLAGS = flags.FLAGS

COMMANDS = ("demo", "train", "cv", "ensemble", "evaluate", "predict", "export")


def main(argv: list[str]) -> None:
    command = argv[1] if len(argv) > 1 else "demo"
    if command not in COMMANDS or len(argv) > 2:
        raise app.UsageError(f"usage: python -m hpajax.main [{'|'.join(COMMANDS)}] --flags; "
                             f"got {' '.join(argv[1:])!r}")
    logs.quiet_library_logs()  # before JAX starts its backends and logs those it has not
    xla_defaults.apply_cpu_defaults()  # before the first JAX computation reads XLA_FLAGS
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if command in ("train", "cv", "demo"):
        preemption.catch_sigterm()  # from here on, SIGTERM means: save and stop

    # In a multi-process run only process 0 prints (progress lines); errors still show.
    quiet = jax.distributed.is_initialized() and jax.process_index() != 0
    try:
        with open(os.devnull, "w") as devnull, \
                contextlib.redirect_stdout(devnull if quiet else sys.stdout):
            run(command)
    except (ValueError, OSError, ConversionError, CheckpointError,
            FloatingPointError) as e:  # bad input or a failed run: say what, no traceback
        sys.exit(f"{command}: error: {e}")
    except preemption.Preempted as e:  # a clean stop: the next launch resumes
        print(e, flush=True)


def run(command: str) -> None:
    """Runs one command with the parsed flags."""
    if command == "demo":
        demo.run(FLAGS.workdir, FLAGS.num_samples, FLAGS.image_size, FLAGS.seed, FLAGS.workers,
                 FLAGS.train_steps)
    elif command == "train":
        if FLAGS.config is None:
            raise app.UsageError("train needs --config=experiments/configs/NAME.py")
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    elif command == "cv":
        if FLAGS.config is None:
            raise app.UsageError("cv needs --config=experiments/configs/NAME.py")
        cv.cv_command(FLAGS.config, FLAGS.workdir, FLAGS.fold, checkpoint=FLAGS.checkpoint,
                      tta=FLAGS.tta, tta_reduce=FLAGS.tta_reduce,
                      min_val_positives=FLAGS.min_val_positives)
    elif command == "ensemble":
        if FLAGS.members is None:
            raise app.UsageError("ensemble needs --members=WORKDIR[:WEIGHT],...")
        ensemble.ensemble_command(FLAGS.members, FLAGS.workdir,
                                  min_val_positives=FLAGS.min_val_positives)
    elif command == "evaluate":
        commands.evaluate_command(FLAGS.workdir, FLAGS.step, FLAGS.seed_thresholds,
                                  tta=FLAGS.tta, tta_reduce=FLAGS.tta_reduce,
                                  min_val_positives=FLAGS.min_val_positives)
    elif command == "export":
        export_lib.export_command(FLAGS.workdir, step=FLAGS.step, formats=FLAGS.formats,
                                  output_dir=FLAGS.output_dir)
    else:
        if FLAGS.input is None:
            raise app.UsageError("predict needs --input=STORE_OR_PNG_DIR")
        commands.predict_command(FLAGS.workdir, FLAGS.input,
                                 FLAGS.output_dir or os.path.join(FLAGS.workdir, "predictions"),
                                 step=FLAGS.step, ids_csv=FLAGS.ids_csv,
                                 at_least_one=FLAGS.at_least_one, workers=FLAGS.workers,
                                 thresholds=FLAGS.thresholds, tta=FLAGS.tta,
                                 tta_reduce=FLAGS.tta_reduce, engine=FLAGS.engine)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
