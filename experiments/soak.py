"""Soak test of exact resume: train, kill at random moments, resume, compare.

Trains the tiny config once uninterrupted, then the same run again while
killing it with SIGKILL or SIGTERM (chosen at random) after random delays,
restarting it with the same command each time, until it has been killed
``--kills`` times or ``--max_seconds`` have passed; then lets it finish.
Prints one JSON line: kills survived by kind, resumes, and whether the final
``params_sha256`` and the whole ``metrics.jsonl`` (less wall-clock speeds and
the preemption checkpoints' records) equal the uninterrupted run's.

  python experiments/soak.py --workdir=runs/soak [--kills=10 --max_seconds=600 --seed=0]
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

from absl import app, flags

from hpajax import demo

REPO = pathlib.Path(__file__).resolve().parents[1]

_WORKDIR = flags.DEFINE_string("workdir", "runs/soak", "Where the store and both runs go.")
_KILLS = flags.DEFINE_integer("kills", 10, "Kills to survive.")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 600.0, "Stop killing after this long.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments and kinds.")
_STEPS = flags.DEFINE_integer("total_steps", 500, "Training steps of the tiny config.")


def train_command(store: pathlib.Path, workdir: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "hpajax.main", "train", "--config=experiments/configs/tiny.py",
            f"--config.data.store={store}", f"--workdir={workdir}",
            f"--config.total_steps={_STEPS.value}", "--config.log_every=5",
            "--config.eval_every=15", "--config.checkpoint_every=5"]


def run(cmd: list[str]) -> float:
    """Runs to completion; returns the wall time."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def records(workdir: pathlib.Path) -> list[dict]:
    """metrics.jsonl less the wall-clock speeds."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
            for line in lines]


def soak(cmd: list[str], duration: float, rng: random.Random) -> dict[str, int]:
    """Kills the run at random moments until the budget is spent; then lets it finish."""
    counts = {"sigkill": 0, "sigterm": 0, "sigterm_while_importing": 0, "finished_early": 0}
    deadline = time.perf_counter() + _MAX_SECONDS.value
    while (sum(counts.values()) - counts["finished_early"] < _KILLS.value
           and time.perf_counter() < deadline):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.08, 0.3) * duration)
            counts["finished_early"] += 1
            break
        except subprocess.TimeoutExpired:
            kind = rng.choice(["sigkill", "sigterm"])
            proc.send_signal(signal.SIGKILL if kind == "sigkill" else signal.SIGTERM)
            rc = proc.wait(timeout=300)
            if kind == "sigterm" and rc == -signal.SIGTERM:
                kind = "sigterm_while_importing"  # before main() could catch it: nothing lost
            elif kind == "sigterm" and rc != 0:
                raise RuntimeError(f"SIGTERM should exit 0, got {rc}")
            counts[kind] += 1
    run(cmd)
    return counts


def main(argv: list[str]) -> None:
    del argv
    workdir = pathlib.Path(_WORKDIR.value).resolve()
    with contextlib.redirect_stdout(sys.stderr):  # stdout: the JSON line only
        store = demo.prepare_store(workdir / "data", 96, 80, seed=0, workers=1)
    reference, soaked = workdir / "reference", workdir / "soaked"
    for old in (reference, soaked):
        shutil.rmtree(old, ignore_errors=True)
    duration = run(train_command(store, reference))
    start = time.perf_counter()
    counts = soak(train_command(store, soaked), duration, random.Random(_SEED.value))
    ref, got = records(reference), records(soaked)
    shas = [[r["params_sha256"] for r in rows if r["split"] == "checkpoint"]
            for rows in (ref, got)]
    print(json.dumps({
        "bench": "soak", "kills": sum(counts.values()) - counts["finished_early"], **counts,
        "resumes": sum(counts.values()) - counts["finished_early"],
        "seconds": round(time.perf_counter() - start, 1), "run_seconds": round(duration, 1),
        "final_sha_equal": shas[0][-1] == shas[1][-1],
        "metrics_equal": [r for r in got if r in ref or r["split"] != "checkpoint"] == ref}))


if __name__ == "__main__":
    app.run(main)
