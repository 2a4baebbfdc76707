"""An exported model at work: its manifest, its files checked, and the engine that runs them.

``export`` writes ``model.jax_export`` (``jax.export``'s serialized StableHLO)
and ``model.onnx`` beside ``manifest.json``, which records each file's
sha256. ``load`` refuses a file that differs from what was exported, and
returns a NumPy function from uint8 images [B, S, S, C] to float32
probabilities [B, 28], which needs only ``jax`` or ``onnxruntime``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np
from etils import epath

from hpajax.files import sha256

EXPORT_DIR = "export"  # a workdir's export folder
MANIFEST = "manifest.json"
MODEL_CARD = "MODEL_CARD.md"
FILES = {"stablehlo": "model.jax_export", "onnx": "model.onnx"}  # format -> file
ENGINES = ("jax", *FILES)  # predict --engine: the checkpoint itself, or an exported file


def read_manifest(folder: str | os.PathLike) -> dict:
    """``folder``'s manifest.json; FileNotFoundError naming the export command if none."""
    path = epath.Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no exported model; run `python -m hpajax.main export "
                                f"--workdir=...` first")
    return json.loads(path.read_text())


def load(folder: str | os.PathLike, engine: str) -> tuple[dict, Callable[[np.ndarray],
                                                                            np.ndarray]]:
    """The manifest and the function of ``folder``'s file for ``engine`` ("stablehlo" or
    "onnx"), after checking the file against the manifest's sha256."""
    manifest = read_manifest(folder)
    name = FILES[engine]
    path = epath.Path(folder) / name
    if name not in manifest["files"]:
        raise FileNotFoundError(f"{path}: not exported (the manifest lists "
                                f"{', '.join(manifest['files'])}); export with "
                                f"--formats={engine}")
    data = path.read_bytes()
    if (got := sha256(data)) != (want := manifest["files"][name]):
        raise ValueError(f"{path}: sha256 {got[:12]}... is not the manifest's {want[:12]}...: "
                         "the file changed after export; export again")
    return manifest, (_stablehlo(data) if engine == "stablehlo" else _onnx(data))


def _stablehlo(data: bytes) -> Callable[[np.ndarray], np.ndarray]:
    import jax  # noqa: PLC0415  (only this engine needs it)

    exported = jax.export.deserialize(bytearray(data))
    return lambda images: np.asarray(exported.call(images))


def _onnx(data: bytes) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import onnxruntime  # noqa: PLC0415  (optional: pip install 'hpajax[export]')
    except ImportError:
        raise ValueError("--engine=onnx needs onnxruntime: pip install 'hpajax[export]'") from None
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    return lambda images: session.run(None, {model_input.name: images})[0]
