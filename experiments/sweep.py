"""The seed paper's experiments: the input-size and kernel-size sweeps, one table.

Trains and evaluates each configuration of ``configs/input_size.py``
(128/256/512 px, kernel 3) and ``configs/kernel_size.py`` (kernel 3/5/7 at
512 px) on one store, then writes ``WORKDIR/comparison.md`` and
``comparison.csv``: per-class precision/recall/F1 of every configuration on
the test split at validation-tuned thresholds (the seed's Tables 5-6), the
micro/macro/weighted/samples averages, and a summary row per configuration.
512 px with kernel 3 is one run shared by both sweeps. Finished runs are
reused, and an interrupted one resumes from its checkpoints.

On the real data (a 512 px store made by tools/convert.py):

  python experiments/sweep.py --store=runs/hpa512/store --workdir=runs/sweep

On this 2-core CPU, end to end on a synthetic set at reduced size and steps
(``--quick``: 400 synthetic samples at 200 px, input sizes 80/128/200 and
kernels 3/5/7 at 200 px, 40 steps of batch 8 each; a few minutes):

  python experiments/sweep.py --quick --workdir=runs/sweep_quick
"""

from __future__ import annotations

import csv
import io
import os
import pathlib
import runpy

import ml_collections
from absl import app, flags

from hpajax import commands, config as config_lib, demo, logs, train, xla_defaults
from hpajax.files import write_atomic

_STORE = flags.DEFINE_string("store", None, "Converted store (default with --quick: a synthetic "
                             "one made in WORKDIR/data).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/sweep", "One run folder per configuration.")
_SWEEPS = flags.DEFINE_list("sweeps", ["input_size", "kernel_size"], "Which sweeps to run.")
_QUICK = flags.DEFINE_bool("quick", False, "Reduced sizes and steps, for a CPU.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 400, "--quick: synthetic samples.")
_STEPS = flags.DEFINE_integer("total_steps", None, "Override every run's total_steps.")
_FIGURES = flags.DEFINE_bool("figures", True, "Draw each run's report figures (the "
                             "comparison needs only the numbers).")
_NARROW = flags.DEFINE_bool("narrow_model", False, "The tiny config's narrow model (two "
                            "blocks of 8 and 16 filters) instead of the seed's: checks the "
                            "runner in seconds.")

CONFIGS = pathlib.Path(__file__).resolve().parent / "configs"
FULL = {"input_size": (128, 256, 512), "kernel_size": (3, 5, 7), "side": 512}
QUICK = {"input_size": (80, 128, 200), "kernel_size": (3, 5, 7), "side": 200}


def runs(sweeps: list[str], quick: bool) -> dict[str, ml_collections.ConfigDict]:
    """Run name -> config from configs/{input_size,kernel_size}.py; 512 px/k3 once."""
    unknown = set(sweeps) - {"input_size", "kernel_size"}
    if unknown:
        raise app.UsageError(f"--sweeps: unknown {sorted(unknown)}; "
                             "choose from input_size, kernel_size")
    sizes = QUICK if quick else FULL
    named = {}
    if "input_size" in sweeps:
        for size in sizes["input_size"]:
            named[f"size{size}_k3"] = load_config("input_size", size)
    if "kernel_size" in sweeps:
        for kernel in sizes["kernel_size"]:
            config = load_config("kernel_size", kernel)
            config.data.input_size = sizes["side"]
            named[f"size{sizes['side']}_k{kernel}"] = config
    return named


def load_config(name: str, arg: int | None = None) -> ml_collections.ConfigDict:
    """``get_config([arg])`` of ``configs/NAME.py``, as ``--config=...py[:ARG]`` loads it."""
    get_config = runpy.run_path(str(CONFIGS / f"{name}.py"))["get_config"]
    return get_config() if arg is None else get_config(str(arg))


def adjust(config: ml_collections.ConfigDict, store: str, quick: bool, steps: int | None,
           narrow: bool) -> ml_collections.ConfigDict:
    """Points a config at the store; --quick: CPU-sized batch, steps and evaluations."""
    config.data.store = store
    if narrow:
        config.model.update(config_lib.TINY_SEED_CNN)
    if quick:
        config.batch_size, config.eval_batch_size = 8, 32
        config.total_steps, config.log_every = 40, 10
        config.eval_every = config.checkpoint_every = 20
        config.bn_recalibration_batches = 5
    if steps:
        config.total_steps = config.eval_every = config.checkpoint_every = steps
    return config


def per_class_rows(report_dir: pathlib.Path) -> list[dict]:
    """The rows of a report's per_class.csv (classes, then the averages)."""
    with open(report_dir / "per_class.csv", newline="") as f:
        return list(csv.DictReader(f))


def comparison(results: dict[str, dict]) -> tuple[str, str]:
    """The Markdown and CSV comparison of the runs' test-split reports."""
    names = list(results)
    rows = [r["name"] or r["class"] for r in results[names[0]]["rows"]]
    md = ["| configuration | input px | kernel | macro-F1 @0.5 | macro-F1 tuned "
          "| weighted-F1 tuned | macro AUC |", "|---|---|---|---|---|---|---|"]
    for name in names:
        test = results[name]["metrics"]["test"]
        md.append(f"| {name} | {results[name]['size']} | {results[name]['kernel']} "
                  f"| {test['threshold_0.5']['macro_f1']:.3f} "
                  f"| {test['tuned_on_val']['macro_f1']:.3f} "
                  f"| {test['tuned_on_val']['weighted_f1']:.3f} "
                  f"| {_fmt(test['tuned_on_val']['macro_auc'])} |")
    md += ["", "| class | " + " | ".join(f"{n} P | R | F1" for n in names) + " |",
           "|---|" + "---|---|---|" * len(names)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class"] + [f"{n} {m}" for n in names for m in ("precision", "recall",
                                                                     "f1")])
    for i, label in enumerate(rows):
        values = [results[n]["rows"][i][m] for n in names for m in ("precision", "recall", "f1")]
        md.append(f"| {label} | " + " | ".join(_fmt(float(v)) for v in values) + " |")
        writer.writerow([label, *values])
    return "\n".join(md) + "\n", buf.getvalue()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str]) -> None:
    del argv
    xla_defaults.apply_cpu_defaults()
    logs.quiet_library_logs()
    workdir = pathlib.Path(_WORKDIR.value)
    store = _STORE.value
    if store is None:
        if not _QUICK.value:
            raise app.UsageError("--store is required without --quick")
        store = str(demo.prepare_store(workdir / "data", _NUM_SAMPLES.value, QUICK["side"],
                                       seed=0, workers=os.cpu_count() or 1))
    results = {}
    for name, config in runs(_SWEEPS.value, _QUICK.value).items():
        config = adjust(config, store, _QUICK.value, _STEPS.value, _NARROW.value)
        run_dir = workdir / name
        print(f"== {name}: input {config.data.input_size} px, kernel "
              f"{config.model.kernel_size}, in {run_dir}", flush=True)
        train.train_and_evaluate(config, str(run_dir))
        metrics = commands.evaluate_command(run_dir, seed_thresholds=False,
                                            draw_figures=_FIGURES.value)
        results[name] = {"size": config.data.input_size, "kernel": config.model.kernel_size,
                         "metrics": metrics, "rows": per_class_rows(run_dir / "report")}
    md, table = comparison(results)
    write_atomic(workdir / "comparison.md", md)
    write_atomic(workdir / "comparison.csv", table)
    print(md)
    print(f"comparison: {workdir / 'comparison.md'} and {workdir / 'comparison.csv'}")


if __name__ == "__main__":
    app.run(main)
