"""Ensembles: runs or cross-validations of the same images, their probabilities averaged.

``python -m hpajax.main ensemble --members=W1,W2:0.5 --workdir=E`` takes
training runs (their best checkpoint, as ``evaluate`` does) or cross-validation
folders (``cv``'s out-of-fold and test predictions). Members may differ in
model, input size, channels, loss or TTA, but must have been evaluated on the
same images: the Ids of every part of their splits must agree (members read
from a 512 px and a 1024 px store of the same images combine). Their
predictions are saved in ``E/members/`` and averaged by Id with the weights
(normalized; equal by default), and thresholds are tuned on the average of
what they were tuned on alone: the out-of-fold predictions when every member
is a cross-validation over the same folds, the validation part when every
member is a single run of one split. ``report.rebuild_ensemble`` writes the
report from those files, without JAX.

``models`` lists the checkpoints behind any workdir, with their weights, for
``predict``: a run's one, a cross-validation's K folds, an ensemble's members'.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from etils import epath

from hpajax import averaging, inference, predictions, report
from hpajax import workdir as workdir_lib
from hpajax.data.run_data import open_run_data
from hpajax.files import is_remote, make_folder, sha256, write_json
from hpajax.predictions import Predictions


@dataclasses.dataclass(frozen=True)
class Member:
    """One ``--members`` entry: a run or a cross-validation folder, and its weight."""

    workdir: epath.Path
    weight: float
    kind: str  # "run" or "cv"


@dataclasses.dataclass(frozen=True)
class Scored:
    """A member's predictions of the images its thresholds are tuned on ("val": its
    validation part, or out of fold) and of its test part, and its split's parts."""

    val: Predictions
    test: Predictions | None
    names: tuple[str, str | None]  # the two sets' names in metrics.json
    parts: dict[str, frozenset[str]]  # the Ids of every part of its split
    store: str
    steps: list[int]
    class_frequency: np.ndarray


def parse_members(spec: str) -> list[Member]:
    """``--members``: comma-separated ``WORKDIR[:WEIGHT]``; ValueError naming a bad entry."""
    members = []
    for entry in [e.strip() for e in spec.split(",") if e.strip()]:
        path, _, weight = entry.rpartition(":")
        try:
            path, weight = (path, float(weight)) if path else (entry, 1.0)
        except ValueError:  # a URL's "gs://" colon, no weight
            path, weight = entry, 1.0
        if not (np.isfinite(weight) and weight > 0):
            raise ValueError(f"--members entry {entry!r}: weight must be positive")
        path = epath.Path(path if is_remote(path) else os.path.abspath(path))
        members.append(Member(path, weight, _kind(path, entry)))
    if not members:
        raise ValueError("--members: give one or more WORKDIR[:WEIGHT], comma-separated")
    seen = [str(m.workdir) for m in members]
    if len(set(seen)) != len(seen):
        raise ValueError(f"--members names a workdir twice: {spec}")
    return members


def _kind(path: epath.Path, entry: str) -> str:
    if (path / report.CV_FILE).is_file():
        return "cv"
    if (path / workdir_lib.CONFIG).is_file():
        return "run"
    raise ValueError(f"--members entry {entry!r}: {path} is neither a training run (no "
                     f"{workdir_lib.CONFIG}) nor a combined cross-validation (no "
                     f"{report.CV_FILE}: run `cv` without --fold first)")


def ensemble_command(members_spec: str, workdir: str | os.PathLike, *,
                     draw_figures: bool = True,
                     min_val_positives: int = report.MIN_VAL_POSITIVES) -> dict:
    """Saves the members' predictions and the ensemble's report in ``workdir``; returns
    metrics.json."""
    members = parse_members(members_spec)
    kinds = {m.kind for m in members}
    if len(kinds) > 1:
        raise ValueError("--members mixes cross-validations and single runs: thresholds come "
                         "from the out-of-fold predictions of cross-validations or from the "
                         "validation part of single runs, not from both")
    workdir_lib.location(workdir)  # a refused location fails before any prediction
    scored = [_scored(m) for m in members]
    for m, s in zip(members[1:], scored[1:]):
        _check_same_images(members[0], scored[0], m, s)
    out = workdir_lib.prepare(workdir)  # written only once the members are known to fit
    for i, s in enumerate(scored):
        _save_member(out / report.MEMBERS_DIR / str(i), s)
    weights = averaging.normalized([m.weight for m in members])
    write_json(out / report.ENSEMBLE_FILE, {
        "kind": kinds.pop(), "names": list(scored[0].names),
        "data": {"store": scored[0].store},
        "members": [{"workdir": str(m.workdir), "weight": float(w), "steps": s.steps,
                     "parts_sha256": {k: _ids_sha256(v) for k, v in s.parts.items()}}
                    for m, w, s in zip(members, weights, scored)]})
    return report.rebuild_ensemble(out, draw_figures=draw_figures,
                                   min_val_positives=min_val_positives)


def _scored(member: Member) -> Scored:
    """A member's predictions: a run's best checkpoint predicts now; a cross-validation's
    were saved by ``cv``."""
    if member.kind == "cv":
        oof, info = predictions.load(member.workdir / report.OOF_FILE)
        fold_of = predictions.extra_arrays(member.workdir / report.OOF_FILE, ("fold",))["fold"]
        test = None
        if (member.workdir / report.CV_TEST_FILE).is_file():
            test, _ = predictions.load(member.workdir / report.CV_TEST_FILE)
        parts = {f"fold{k}": frozenset(np.asarray(oof.ids)[fold_of == k].tolist())
                 for k in range(int(fold_of.max()) + 1)}
        if test is not None:
            parts["test"] = frozenset(test.ids)
        record = json.loads((member.workdir / report.CV_FILE).read_text())
        return Scored(oof, test, ("oof", None if test is None else "test"), parts,
                      record["data"]["store"], record["cv"]["steps"],
                      np.asarray(info.class_frequency))
    config = workdir_lib.load_config(member.workdir)
    data = open_run_data(config.data)
    run = inference.restore(member.workdir, data=data)
    print(f"member {member.workdir}: predicting {data.eval_part} and {data.test_part} with "
          f"step {run.step}")
    val = inference.predict(run.steps, run.state, data.store, data.rows(data.eval_part))
    test = (None if data.test_part is None else
            inference.predict(run.steps, run.state, data.store, data.rows(data.test_part)))
    roles = {data.train_part, data.eval_part} | ({data.test_part} - {None})
    parts = {role: frozenset(data.store.ids[r] for r in data.rows(role)) for role in roles}
    return Scored(val, test, (data.eval_part, data.test_part), parts, data.location,
                  [run.step], data.train_part_frequency())


def _check_same_images(first: Member, a: Scored, other: Member, b: Scored) -> None:
    """ValueError naming both members unless their splits' parts hold the same Ids."""
    if set(a.parts) != set(b.parts):
        raise ValueError(f"members {first.workdir} and {other.workdir} were not evaluated on "
                         f"the same images: their splits have parts {sorted(a.parts)} and "
                         f"{sorted(b.parts)}")
    for name in sorted(a.parts):
        if a.parts[name] != b.parts[name]:
            raise ValueError(
                f"members {first.workdir} and {other.workdir} were not evaluated on the same "
                f"images: their {name} parts differ ({len(a.parts[name])} and "
                f"{len(b.parts[name])} Ids, {len(a.parts[name] & b.parts[name])} shared)")


def _save_member(folder: epath.Path, scored: Scored) -> None:
    make_folder(folder)
    source = {"store": scored.store, "steps": scored.steps}
    for role, split, name in (("val", scored.val, scored.names[0]),
                              ("test", scored.test, scored.names[1])):
        path = folder / predictions.file_name(role)
        if split is None:
            path.unlink(missing_ok=True)
            continue
        predictions.save(path, split, split=name, step=scored.steps[-1],
                         data_fingerprint=source, class_frequency=scored.class_frequency)


def _ids_sha256(ids: frozenset[str]) -> str:
    return sha256("\n".join(sorted(ids)).encode())


def models(workdir: str | os.PathLike, step: int | None = None
           ) -> list[tuple[float, epath.Path, int | None]]:
    """The checkpoints that predict for ``workdir``, each (weight, run folder, step; None:
    the best): a run's, a cross-validation's folds (equal weights, the steps its report
    used), an ensemble's members' (their weights times their own)."""
    workdir = epath.Path(workdir)
    if (workdir / report.ENSEMBLE_FILE).is_file() or (workdir / report.CV_FILE).is_file():
        if step is not None:
            raise ValueError(f"--step={step}: {workdir} is an ensemble or a cross-validation; "
                             "each of its models predicts with the checkpoint it was scored with")
    if (workdir / report.ENSEMBLE_FILE).is_file():
        record = json.loads((workdir / report.ENSEMBLE_FILE).read_text())
        return [(m["weight"] * w, path, s)
                for m in record["members"] for w, path, s in _member_models(m)]
    if (workdir / report.CV_FILE).is_file():
        steps = json.loads((workdir / report.CV_FILE).read_text())["cv"]["steps"]
        return [(1.0 / len(steps), workdir / f"fold{k}", s) for k, s in enumerate(steps)]
    return [(1.0, workdir, step)]


def _member_models(member: dict) -> list[tuple[float, epath.Path, int | None]]:
    """A member's checkpoints, at the steps the ensemble scored."""
    found = models(member["workdir"])
    return [(w, path, s) for (w, path, _), s in zip(found, member["steps"])]
