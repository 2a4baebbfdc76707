"""MODEL_CARD.md of an export: what the model is for, what it saw, how it scored, its limits.

Written from the export's manifest and the workdir's report (per_class.csv: the
test split's per-class metrics at the thresholds ``predict`` uses); NumPy-free
text, no JAX.
"""

from __future__ import annotations

import csv
import io

from etils import epath

from hpajax import report

RARE = 5  # test positives below which a class's figures are called unreliable


def text(workdir: epath.Path, manifest: dict) -> str:
    """The model card of ``manifest``'s export of ``workdir``."""
    per_class = _per_class(workdir / report.REPORT_DIR / "per_class.csv")
    return "\n".join([
        f"# Model card: {workdir.name}",
        "",
        "## What it is",
        _models(manifest),
        "",
        "## Intended use",
        "Multi-label classification of where a protein sits in a human cell, among the "
        f"{len(manifest['output']['classes'])} compartments of the Human Protein Atlas "
        "(Kaggle HPA 2019 classes), from four-channel confocal images (red: microtubules, "
        "green: the protein, blue: nucleus, yellow: endoplasmic reticulum) prepared like "
        "its training images. For research and triage, not for diagnosis.",
        "",
        "## Input and output",
        f"- input `{manifest['input']['name']}`: uint8 {_shape(manifest['input'])} "
        f"({manifest['input']['layout']}; channels "
        f"{', '.join(manifest['input']['channels'])}), {manifest['input']['values']}",
        f"- output `{manifest['output']['name']}`: float32 {_shape(manifest['output'])}, "
        f"{manifest['output']['meaning']}",
        f"- decision: {_decision(manifest)}",
        "",
        "## Training data",
        *_data(manifest),
        "",
        "## Evaluation",
        *_evaluation(manifest, per_class),
        "",
        "## Known limits",
        *_limits(manifest, per_class),
        "",
    ])


def _shape(tensor: dict) -> str:
    return f"[{', '.join(map(str, tensor['shape']))}]"


def _models(manifest: dict) -> str:
    models = manifest["models"]
    lines = [f"- {m['model']} ({m['dtype']}) at {m['input_size']} px on "
             f"{', '.join(m['channels'])}, step {m['step']} of {m['workdir']}, weight "
             f"{m['weight']:.3g}; test-time views: {m['tta']} ({m['tta_reduce']})"
             + ("; weights: their moving average" if m["ema"] else "") for m in models]
    head = ("One model:" if len(models) == 1 else
            f"The weighted mean of {len(models)} models' probabilities:")
    return "\n".join([head, *lines])


def _decision(manifest: dict) -> str:
    thresholds = manifest["thresholds"]
    if thresholds is None:
        return "no report when exported: threshold 0.5 for every class"
    return (f"a class is predicted iff its probability exceeds its threshold; the "
            f"\"{thresholds['use']}\" set in manifest.json's thresholds, tuned on "
            "held-out data")


def _data(manifest: dict) -> list[str]:
    lines = []
    for m in manifest["models"]:
        data = m["data"]
        lines.append(f"- {m['workdir']}: store {data['store']} ({data['samples']} samples, "
                     f"Ids sha256 {data['ids_sha256'][:12]}..., training part sha256 "
                     f"{data.get('train_split_sha256', '?')[:12]}...), split "
                     f"{m['config']['data']['split']!r}"
                     + (f", fold {m['config']['data']['fold']}"
                        if m["config"]["data"].get("fold", -1) >= 0 else ""))
    return lines


def _evaluation(manifest: dict, per_class: list[dict]) -> list[str]:
    test = manifest["test_metrics"]
    if test is None or not per_class:
        return ["Not evaluated on a held-out test split before export "
                "(`python -m hpajax.main evaluate` writes the report this card reads)."]
    use = manifest["thresholds"]["use"]
    head = test[use]
    lines = [f"Test split, {test['samples']} images, thresholds \"{use}\": macro-F1 "
             f"{head['macro_f1']:.3f}, micro-F1 {head['micro_f1']:.3f}, weighted-F1 "
             f"{head['weighted_f1']:.3f}, macro ROC-AUC {head['macro_auc']:.3f} (no-skill "
             f"macro-F1 {test['no_skill_macro_f1']:.3f}).", "",
             "| class | name | precision | recall | F1 | support |",
             "|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['class']} | {r['name']} | {float(r['precision']):.3f} | "
              f"{float(r['recall']):.3f} | {float(r['f1']):.3f} | {r['support']} |"
              for r in per_class]
    return lines


def _limits(manifest: dict, per_class: list[dict]) -> list[str]:
    rare = [r["name"] for r in per_class if int(r["support"]) < RARE]
    lines = ["- Trained only on the stores above: images from other microscopes, "
             "stainings or resolutions may score worse than the evaluation says."]
    if rare:
        lines.append(f"- Classes with fewer than {RARE} test positives have unreliable "
                     f"figures: {', '.join(rare)}.")
    lines.append("- A store made by hpajax's synthetic generator (the demo's) holds no real "
                 "cells: a model trained only on one has learned rendered patterns and must "
                 "not be used on real images.")
    return lines


def _per_class(path: epath.Path) -> list[dict]:
    """per_class.csv's rows (classes only), or none without a report."""
    if not path.is_file():
        return []
    rows = csv.DictReader(io.StringIO(path.read_text()))
    return [r for r in rows if r.get("class", "").isdigit()]
