"""Model outputs over store rows, and their ``.npz`` file (NumPy and the standard library).

``Predictions`` is the one type that predicting, evaluating and reporting
pass around. ``evaluate`` saves each split's predictions next to its report
(``report/predictions_val.npz`` and so on), so that the report can be rebuilt,
re-thresholded and replotted without JAX, on any machine with NumPy
(``python -m hpajax.report WORKDIR``).

A file holds ``ids``, ``rows``, ``labels``, ``probs`` and ``loss`` as saved,
plus what makes it safe to read back later: the class names, the split name,
the checkpoint step, the training data's fingerprint (JSON text, see
``hpajax.workdir.data_fingerprint``) and ``format_version``; and, when known,
``class_frequency``, each class's positive rate in the run's training part
(for thresholds matched to it: ``hpajax.evaluate.rate_thresholds``). Files
written without it still load (``Info.class_frequency`` None). Nothing in it
is a pickled object, so ``load`` reads it with ``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile

import numpy as np
from etils import epath

from hpajax import classes, evaluate
from hpajax.files import make_folder, write_atomic

FORMAT_VERSION = 1
_ARRAYS = ("ids", "rows", "labels", "probs", "loss", "class_names", "split", "step",
           "data_fingerprint", "format_version")


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Model outputs over a list of store rows, in that order."""

    ids: tuple[str, ...]  # sample Ids of those rows
    rows: np.ndarray  # int64 [N] store rows
    labels: np.ndarray  # uint8 [N, 28]; zeros for an unlabeled store
    probs: np.ndarray  # float32 [N, 28] sigmoid probabilities
    loss: float  # mean per-sample loss against labels (nan when not computed)

    @classmethod
    def from_arrays(cls, labels: np.ndarray, probs: np.ndarray) -> Predictions:
        """Any model's outputs, to report on: rows 0 to N-1, Ids "0" to "N-1", no loss."""
        rows = np.arange(len(probs), dtype=np.int64)
        return cls(ids=tuple(map(str, rows)), rows=rows, labels=np.asarray(labels),
                   probs=np.asarray(probs), loss=float("nan"))


@dataclasses.dataclass(frozen=True)
class Info:
    """What a predictions file says about where its predictions came from."""

    split: str  # the store's part name, e.g. "val"
    step: int  # the checkpoint step that predicted them
    data_fingerprint: dict  # the training data's, as the run recorded it
    class_names: tuple[str, ...]
    format_version: int
    # Each class's positive rate in the run's training part; None if the file has none.
    # A tuple, not an array, so that Info stays immutable and comparable with ==.
    class_frequency: tuple[float, ...] | None = None


def file_name(split: str) -> str:
    """The name of a split's predictions file in a report folder: ``predictions_val.npz``."""
    return f"predictions_{split}.npz"


def check(predictions: Predictions) -> None:
    """Raises ValueError saying what is wrong if the arrays do not fit together, the
    labels are not 0/1 or a probability is outside [0, 1] (or NaN)."""
    rows, labels, probs = (np.asarray(a) for a in (predictions.rows, predictions.labels,
                                                   predictions.probs))
    n = len(rows)
    if (rows.ndim != 1 or len(predictions.ids) != n
            or labels.shape != probs.shape or probs.shape != (n, classes.NUM_CLASSES)):
        raise ValueError(f"inconsistent shapes: {len(predictions.ids)} ids, rows "
                         f"{list(rows.shape)}, labels {list(labels.shape)}, probs "
                         f"{list(probs.shape)} (expected N ids, rows [N], labels and "
                         f"probs [N, {classes.NUM_CLASSES}])")
    if not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"rows must be integers, got {rows.dtype}")
    if ((labels != 0) & (labels != 1)).any():
        raise ValueError("labels other than 0/1")
    bad = np.argwhere(~((probs >= 0) & (probs <= 1)))  # NaN fails both comparisons
    if bad.size:
        row, col = bad[0]
        raise ValueError(f"probabilities must be in [0, 1]: {probs[row, col]} at row {row}, "
                         f"class {col} ({len(bad)} such values)")


def save(path: str | os.PathLike, predictions: Predictions, *, split: str, step: int,
         data_fingerprint: dict, class_frequency: np.ndarray | None = None,
         extra: dict[str, np.ndarray] | None = None) -> epath.Path:
    """Writes ``predictions`` and where they came from to ``path`` (atomically); returns it.

    ``class_frequency``: float [28], each class's positive rate in the run's
    training part, or None when unknown (then not written). ``extra``: more
    arrays by name (a cross-validation's folds), read back with ``extra_arrays``.
    ValueError, and nothing written, if the predictions or the rates would not
    load back.
    """
    check(predictions)
    optional = ({} if class_frequency is None else
                {"class_frequency": evaluate.check_frequency(class_frequency,
                                                             classes.NUM_CLASSES)})
    clash = set(extra or {}) & {*_ARRAYS, "class_frequency"}
    if clash:
        raise ValueError(f"extra arrays may not be named {', '.join(sorted(clash))}")
    optional.update(extra or {})
    path = epath.Path(path)
    make_folder(path.parent)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, ids=np.asarray(list(predictions.ids), dtype=np.str_),
        rows=np.asarray(predictions.rows, np.int64),
        labels=np.asarray(predictions.labels, np.uint8),
        probs=np.asarray(predictions.probs, np.float32), loss=np.float64(predictions.loss),
        class_names=np.asarray(classes.CLASS_NAMES, dtype=np.str_), split=np.str_(split),
        step=np.int64(step), data_fingerprint=np.str_(json.dumps(data_fingerprint)),
        format_version=np.int64(FORMAT_VERSION), **optional)
    write_atomic(path, buffer.getvalue())
    return path


def load(path: str | os.PathLike) -> tuple[Predictions, Info]:
    """The predictions and the info of a file ``save`` wrote.

    Raises FileNotFoundError if it is absent and ValueError naming it if it is
    not such a file, has another format version or other class names, or
    holds inconsistent arrays, probabilities or class frequencies outside [0, 1].
    """
    try:
        arrays = _read(path)
        frequency = arrays.get("class_frequency")
        info = Info(split=str(arrays["split"]), step=int(arrays["step"]),
                    data_fingerprint=json.loads(str(arrays["data_fingerprint"])),
                    class_names=tuple(arrays["class_names"].tolist()),
                    format_version=int(arrays["format_version"]),
                    class_frequency=None if frequency is None else tuple(
                        evaluate.check_frequency(frequency, classes.NUM_CLASSES).tolist()))
        if info.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version {info.format_version}; this hpajax reads "
                             f"version {FORMAT_VERSION}")
        if info.class_names != classes.CLASS_NAMES:
            raise ValueError(f"its {len(info.class_names)} class names differ from the "
                             f"{classes.NUM_CLASSES} of hpajax.classes.CLASS_NAMES")
        predictions = Predictions(
            ids=tuple(arrays["ids"].tolist()), rows=arrays["rows"], labels=arrays["labels"],
            probs=arrays["probs"], loss=float(arrays["loss"]))
        check(predictions)
    except ValueError as e:
        raise ValueError(f"{path}: not a usable predictions file: {e}") from None
    return predictions, info


def extra_arrays(path: str | os.PathLike, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``names`` that ``save`` wrote as ``extra`` (ValueError naming a missing one)."""
    arrays = _read(path)
    missing = [name for name in names if name not in arrays]
    if missing:
        raise ValueError(f"{path}: not a usable predictions file: missing {', '.join(missing)}")
    return {name: arrays[name] for name in names}


def _read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file; ValueError if it is not one or lacks one we need."""
    try:
        loaded = np.load(io.BytesIO(epath.Path(path).read_bytes()), allow_pickle=False)
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"cannot read it as .npz ({e})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError("a single array, not an .npz archive")
    with loaded:
        arrays = {name: loaded[name] for name in loaded.files}
    missing = [name for name in _ARRAYS if name not in arrays]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return arrays
