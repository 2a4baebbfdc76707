"""The run folder's records that make a resume safe: config, data fingerprint, writability.

A run's checkpoints only make sense with the model shape and the data they
were trained on. On a resume the saved ``config.json`` is compared field by
field on what shapes the state (``model.*``, ``data.channels``,
``data.input_size``, ``ema_decay``), and ``data.json`` records the training
stores' sample counts, Ids and rows, the mixing weights and oversampling, so
that changed data is refused instead of silently misaligning the data order.
Other fields (steps, learning rate, logging) may change between launches. In
a multi-process run every process checks and only process 0 writes
(``write``).
"""

from __future__ import annotations

import json
import os
import uuid

import ml_collections
from etils import epath

from hpajax import config as config_lib
from hpajax import files
from hpajax.files import write_atomic, write_json

CONFIG = "config.json"
DATA = "data.json"
SHAPE_FIELDS = ("model", "data.channels", "data.input_size", "ema_decay")
# The data fingerprint's entries that must not change on a resume (RunData.fingerprint).
FINGERPRINT_KEYS = ("samples", "ids_sha256", "train_split_sha256", "sources", "oversample")
# Fields added to the config since the first saved config.json, with the value
# a config without them meant: older workdirs load, resume and evaluate as before.
ADDED_FIELDS = {"model.name": "seed_cnn", "optimizer.decay": "all",
                "optimizer.head_warmup_steps": 0, "optimizer.head_warmup_scale": 0.0,
                "data.sources": [], "data.exclude": "", "data.oversample": 0.0,
                "data.image_size": 0, "data.fold": -1,
                "augment.crop": False, "ema_decay": 0.0, "tta": 1, "tta_reduce": "mean",
                "optimizer.schedule": "plateau", "optimizer.lr_warmup_steps": 0,
                "optimizer.lr_decay_steps": 0, "optimizer.lr_floor": 0.0,
                "optimizer.lr_boundaries": [], "optimizer.lr_factors": [],
                "optimizer.onecycle_pct_start": 0.3, "optimizer.layer_decay": 0.0}


def location(workdir: str | os.PathLike) -> epath.Path:
    """A run folder: local or ``gs://``. ``s3://`` is refused: Orbax cannot write
    checkpoints there (google/orbax#359)."""
    if files.scheme(workdir) == "s3":
        raise ValueError(
            f"--workdir={workdir}: Orbax cannot write checkpoints to s3:// (google/orbax#359; "
            "they would land in a local folder 's3:'). Use a local or network-mounted "
            "--workdir, or gs://; the store may stay on s3://")
    return files.location(workdir, "--workdir", schemes=("gs",))


def prepare(workdir: str | os.PathLike) -> epath.Path:
    """Creates the workdir and checks that files can be written there."""
    path = location(workdir)
    probe = path / f".write_test.{uuid.uuid4().hex}"  # one per process
    try:
        files.make_folder(path)
        probe.write_bytes(b"")
        probe.unlink()
    except files.storage_errors() as e:
        why = getattr(e, "strerror", None) or e
        raise ValueError(f"--workdir={path}: cannot write there ({why})") from None
    return path


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config a run saved in its workdir."""
    path = location(workdir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG} in {workdir}: not a training workdir")
    return ml_collections.ConfigDict(_with_added_fields(json.loads(path.read_text())))


def _with_added_fields(saved: dict) -> dict:
    """A saved config with the fields added since, at the value their absence meant."""
    for dotted, value in ADDED_FIELDS.items():
        *parents, name = dotted.split(".")
        tree = saved
        for key in parents:
            tree = tree.setdefault(key, {})
        tree.setdefault(name, value)
    return saved


def save_config(config: ml_collections.ConfigDict, workdir: epath.Path,
                resuming: bool, write: bool = True) -> None:
    """Saves the config; on a resume first refuses a change of the state's shape."""
    path = workdir / CONFIG
    text = config.to_json_best_effort(indent=1, sort_keys=True) + "\n"
    if resuming and path.is_file():
        _check_same_shape(_with_added_fields(json.loads(path.read_text())), json.loads(text),
                          workdir)
    if not write:
        return
    if path.exists() and path.read_text() != text:
        print(f"note: the config differs from the one saved in {path}; saving the new one")
    write_atomic(path, text)


def _field(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _flatten(tree, prefix: str) -> dict[str, object]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}.{key}").items()}


def _model_fields(block: dict) -> dict:
    """A saved model block's fields that its model uses, absent ones at their defaults.

    A backbone named on a seed-CNN config once kept the seed's fields, which it
    ignores; its own fields now come with the name (``config.model_block_for``).
    """
    try:
        defaults = config_lib.model_config(block.get("name", config_lib.MODELS[0]))
    except ValueError:
        return block  # an unknown model: compared as written, models.create names it
    return {name: block.get(name, default) for name, default in defaults.items()}


def _check_same_shape(saved: dict, new: dict, workdir: epath.Path) -> None:
    for field in SHAPE_FIELDS:
        old_values, new_values = _field(saved, field), _field(new, field)
        if field == "model":
            old_values, new_values = _model_fields(old_values), _model_fields(new_values)
        old_values, new_values = _flatten(old_values, field), _flatten(new_values, field)
        names = sorted(set(old_values) | set(new_values))
        for name in sorted(names, key=lambda n: n != "model.name"):  # the model first
            if old_values.get(name) != new_values.get(name):
                raise ValueError(
                    f"config.{name}={new_values.get(name)!r} does not match the checkpoints "
                    f"in {workdir}, trained with {old_values.get(name)!r}; keep the saved "
                    f"value or start a new --workdir")


def check_data(workdir: epath.Path, fingerprint: dict, resuming: bool,
               write: bool = True) -> None:
    """Records the fingerprint; on a resume refuses a store that changed since."""
    path = workdir / DATA
    if resuming and path.is_file():
        saved = json.loads(path.read_text())
        changed = [key for key in FINGERPRINT_KEYS if saved.get(key) != fingerprint.get(key)]
        if changed:
            what = {"samples": f"{saved.get('samples')} samples then, "
                               f"{fingerprint['samples']} now",
                    "ids_sha256": "the sample Ids differ",
                    "train_split_sha256": "the training split differs",
                    "sources": "config.data.sources, their rows or weights differ",
                    "oversample": f"config.data.oversample was {saved.get('oversample')}, "
                                  f"is {fingerprint.get('oversample')}"}
            raise ValueError(
                f"the training data changed since the checkpoints in {workdir} were written "
                f"({'; '.join(what[k] for k in changed)}; store {fingerprint['store']}): "
                f"resuming would misalign the data order. Restore the store or start a new "
                f"--workdir")
    if write:
        write_json(path, fingerprint)
