"""The ``export`` command: a run, cross-validation or ensemble as one function outside hpajax.

The exported function takes uint8 images [B, S, S, C] (all of the store's
channels at its image size, B free) and returns float32 probabilities
[B, 28], rows in input order. Inside is what ``predict`` does between the
store and the probabilities: ``steps.infer`` (channel selection, resize,
normalization, the model in inference mode with its served weights, the
run's test-time views and their reduction, sigmoid) with the weights baked
in, and for a cross-validation or an ensemble the weighted mean of its
models. ``infer`` runs in its portable form (views unrolled, resize as
matrices: the same values), so that ONNX needs no loops or switches.

``WORKDIR/export/`` then holds ``model.jax_export`` (``jax.export``:
StableHLO for CPU and CUDA, symbolic batch), ``model.onnx``
(``onnx_graph``), ``manifest.json`` (input, classes, thresholds, models,
metrics, versions, sha256 of each file) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from etils import epath

from hpajax import classes, ensemble, exported, inference, model_card, report
from hpajax import steps as steps_lib
from hpajax.commands import stored_size
from hpajax.files import make_folder, sha256, write_atomic, write_json

FORMATS = tuple(exported.FILES)  # every format, the default
PLATFORMS = ("cpu", "cuda")  # what model.jax_export is lowered for
INPUT, OUTPUT = "images", "probabilities"  # the exported function's argument and result
STABLEHLO_WINDOW = ("StableHLO's compatibility window: a file loads in jax releases from about "
                    "six months older to about six months newer than the one that wrote it")


@dataclasses.dataclass(frozen=True)
class Member:
    """One model of the exported function: its weight and its restored checkpoint."""

    weight: float
    run_dir: epath.Path
    run: inference.Restored

    def probabilities(self, variables: dict, images: jax.Array) -> jax.Array:
        """``steps.infer`` of this model on all of the store's channels, baked ``variables``."""
        config = self.run.config
        channels = tuple(config.data.channels)
        if channels != tuple(range(images.shape[-1])):
            images = jnp.concatenate([jax.lax.slice_in_dim(images, c, c + 1, axis=3)
                                      for c in channels], axis=3)
        _, probs = steps_lib.infer(
            variables, images, model=self.run.steps.model, portable=True,
            **steps_lib.infer_options(config, self.run.steps.image_shape))
        return probs.astype(jnp.float32)

    @property
    def variables(self) -> dict:
        state = self.run.state
        return jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def export_command(workdir: str | os.PathLike, *, step: int | None = None,
                   formats: Sequence[str] = FORMATS,
                   output_dir: str | os.PathLike | None = None) -> epath.Path:
    """Writes the exported files of ``workdir``'s model(s) into ``output_dir`` (default
    ``WORKDIR/export``), which must be empty or new; nothing is written on an error."""
    workdir = epath.Path(workdir)
    out = epath.Path(output_dir) if output_dir else workdir / exported.EXPORT_DIR
    formats = _checked_formats(formats)
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"--output_dir={out}: not empty; export into a new or empty folder")
    members = [Member(weight, run_dir, inference.restore(run_dir, run_step))
               for weight, run_dir, run_step in ensemble.models(workdir, step)]
    size = _image_size(members)
    files = serialize(members, size, formats)
    manifest = _manifest(workdir, members, size)
    files[exported.MODEL_CARD] = model_card.text(workdir, manifest).encode()
    manifest["files"] = {name: sha256(data) for name, data in files.items()}
    make_folder(out)
    for name, data in files.items():
        write_atomic(out / name, data)
    write_json(out / exported.MANIFEST, manifest)  # last: a folder with it is complete
    print(f"exported {len(members)} model(s) of {workdir} to {out}/: "
          + ", ".join([*files, exported.MANIFEST]))
    return out


def serialize(members: Sequence[Member], size: int, formats: Sequence[str] = FORMATS
              ) -> dict[str, bytes]:
    """The files of ``formats`` (file name -> bytes) of the weighted mean of ``members``'
    probabilities on uint8 [B, size, size, 4] images."""
    example = jax.ShapeDtypeStruct(
        jax.export.symbolic_shape(f"B, {size}, {size}, {classes.NUM_CHANNELS}"), jnp.uint8)
    weights = [m.variables for m in members]
    shares = _shares(members)

    def mean_probabilities(weights: list[dict], images: jax.Array) -> jax.Array:
        return sum(share * m.probabilities(v, images)
                   for share, m, v in zip(shares, members, weights))

    files = {}
    if "stablehlo" in formats:
        fn = jax.jit(lambda images: mean_probabilities(weights, images))
        files[exported.FILES["stablehlo"]] = bytes(
            jax.export.export(fn, platforms=PLATFORMS)(example).serialize())
    if "onnx" in formats:
        from hpajax import onnx_graph  # noqa: PLC0415  (optional: pip install 'hpajax[export]')

        files[exported.FILES["onnx"]] = onnx_graph.to_onnx(
            mean_probabilities, weights, example, input_name=INPUT,
            output_name=OUTPUT).SerializeToString()
    return files


def _shares(members: Sequence[Member]) -> list[float]:
    """The members' weights, normalized."""
    total = sum(m.weight for m in members)
    return [m.weight / total for m in members]


def _checked_formats(formats: Sequence[str]) -> tuple[str, ...]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--formats={','.join(formats)}: choose one or more of "
                         f"{','.join(FORMATS)}")
    return tuple(dict.fromkeys(formats))


def _image_size(members: list[Member]) -> int:
    """The store image size every member reads: the exported input's one size."""
    sizes = {stored_size(m.run.config): m.run_dir for m in members}
    if len(sizes) > 1:
        raise ValueError("the models read stores of different image sizes ("
                         + ", ".join(f"{s} px: {d}" for s, d in sizes.items())
                         + "); an exported function has one input size")
    return next(iter(sizes))


def _manifest(workdir: epath.Path, members: list[Member], size: int) -> dict:
    """manifest.json without its files' sha256."""
    report_dir = workdir / report.REPORT_DIR
    thresholds = report_dir / "thresholds.json"
    metrics = json.loads((report_dir / "metrics.json").read_text()) if (
        report_dir / "metrics.json").is_file() else {}
    return {
        "format": "hpajax export 1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "workdir": str(workdir),
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["B", size, size,
                                                            classes.NUM_CHANNELS],
                  "layout": "NHWC", "channels": list(classes.CHANNELS), "image_size": size,
                  "values": "the store's pixels: 0-255, each image resized to image_size "
                            "by hpajax's convert"},
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["B", classes.NUM_CLASSES],
                   "classes": list(classes.CLASS_NAMES),
                   "meaning": "each class's probability, rows in input order"},
        "thresholds": json.loads(thresholds.read_text()) if thresholds.is_file() else None,
        "test_metrics": metrics.get("test"),
        "report_step": metrics.get("step"),  # the checkpoint the thresholds were tuned for
        "models": [_model_record(m, share) for m, share in zip(members, _shares(members))],
        "stablehlo": {"platforms": list(PLATFORMS), "jax": jax.__version__,
                      "compatibility": STABLEHLO_WINDOW},
        "versions": _versions(),
    }


def _model_record(member: Member, weight: float) -> dict:
    config = member.run.config
    return {"workdir": str(member.run_dir), "weight": weight, "step": member.run.step,
            "model": config.model.name, "dtype": config.model.dtype,
            "input_size": member.run.steps.image_shape[0],
            "channels": [classes.CHANNELS[c] for c in config.data.channels],
            "tta": config.tta, "tta_reduce": config.tta_reduce,
            "ema": bool(steps_lib.ema_decay(config)),
            "data": json.loads((member.run_dir / "data.json").read_text()),
            "config": config.to_dict()}


def _versions() -> dict:
    names = ("hpajax", "jax", "jaxlib", "flax", "numpy", "onnx", "onnxruntime")
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found
