"""The seed paper's report figures as PNGs; matplotlib is optional.

- ``roc_figure``: per-class ROC curves as small multiples (the seed's Fig. 9);
- ``training_curves_figure``: loss and validation F1 against step (Fig. 5);
- ``f1_bars_figure``: per-class F1 at threshold 0.5 and at tuned thresholds;
- ``prediction_montage``: sample images beside their 28 predicted
  probabilities (Figs. 10-11).

The numbers of an evaluation never need matplotlib, so it is an extra
(``pip install 'hpajax[plots]'``): this module imports without it, and each
figure function raises ``ImportError(INSTALL_HINT)`` when it is missing. It
draws with the object-oriented ``Figure`` API on an Agg canvas, so no display
is needed and no pyplot state is left behind. Nothing here imports JAX.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from hpajax.classes import CLASS_NAMES
from hpajax.files import make_folder, write_atomic
from hpajax.display import composite_rgb, stretch_to_uint8

INSTALL_HINT = "figures need matplotlib: pip install 'hpajax[plots]'"
MAX_MONTAGE_ROWS = 8  # more samples would make each row too small to read

RocCurve = tuple[np.ndarray, np.ndarray, float]  # (fpr, tpr, auc)

_DPI = 100
_ROC_COLUMNS = 7  # 28 classes as 4 rows x 7 columns
_NAME_WIDTH = 24  # longer class names are cut to fit a small panel's title
_TRUE_HIT, _TRUE_MISSED, _FALSE_HIT, _OTHER = "#2ca02c", "#ff7f0e", "#d62728", "#b0b0b0"


def _matplotlib() -> tuple[Any, Any]:
    """(Figure, FigureCanvasAgg), imported only when a figure is drawn."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return Figure, FigureCanvasAgg


def plotting_available() -> bool:
    """Whether matplotlib can be imported, i.e. whether the figure functions work."""
    try:
        _matplotlib()
    except ImportError:
        return False
    return True


def _new_figure(width: float, height: float, layout: str | None = "constrained") -> Any:
    """A figure on an Agg canvas (no display needed), with constrained layout unless
    ``layout`` is None (then ``_grid`` places its axes)."""
    figure_cls, canvas_cls = _matplotlib()
    figure = figure_cls(figsize=(width, height), layout=layout)
    canvas_cls(figure)
    return figure


def _grid(figure: Any, rows: int, cols: int, margins: tuple[float, float, float, float],
          gaps: tuple[float, float], **subplots: Any) -> np.ndarray:
    """``rows`` x ``cols`` axes at fixed margins (left, right, bottom, top) and gaps
    (between columns, between rows), all in inches.

    For the figures with many panels: constrained layout measures every tick
    label of every panel and takes most of their drawing time.
    """
    width, height = figure.get_size_inches()
    left, right, bottom, top = margins
    cell_w = (width - left - right - (cols - 1) * gaps[0]) / cols
    cell_h = (height - bottom - top - (rows - 1) * gaps[1]) / rows
    return figure.subplots(rows, cols, squeeze=False, gridspec_kw=dict(
        left=left / width, right=1 - right / width, bottom=bottom / height,
        top=1 - top / height, wspace=gaps[0] / cell_w, hspace=gaps[1] / cell_h), **subplots)


def _save(figure: Any, path: str | os.PathLike) -> epath.Path:
    """Writes ``figure`` as a PNG (creating parent folders), frees it, returns the path."""
    path = epath.Path(path)
    make_folder(path.parent)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    write_atomic(path, buffer.getvalue())
    figure.clear()
    return path


def _checked(name: str, value: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    """``value`` as an array, or ValueError naming it if its shape differs (None: any size)."""
    array = np.asarray(value)
    if array.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(array.shape, shape)):
        expected = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {expected}, got {list(array.shape)}")
    return array


def _short(name: str, width: int = _NAME_WIDTH) -> str:
    """``name`` cut to ``width`` characters with an ellipsis, for small panel titles."""
    return name if len(name) <= width else name[:width - 1].rstrip() + "\u2026"


def _checked_curve(index: int, curve: Sequence[Any]) -> RocCurve:
    """One class's (fpr, tpr, auc), or ValueError saying which class is malformed."""
    if len(curve) != 3:
        raise ValueError(f"curves[{index}] must be (fpr, tpr, auc) or None")
    fpr = _checked(f"curves[{index}] fpr", curve[0], (None,))
    tpr = _checked(f"curves[{index}] tpr", curve[1], (len(fpr),))
    return fpr, tpr, float(curve[2])


def roc_figure(path: str | os.PathLike, curves: Sequence[RocCurve | None],
               class_names: Sequence[str]) -> epath.Path:
    """Per-class ROC curves as small multiples, 7 per row, AUC in each title (seed Fig. 9).

    ``curves[c]`` is ``(fpr, tpr, auc)`` for class ``c``, or None where its
    ROC is undefined because the data hold only positives or only negatives
    of it; such a panel says so instead of showing a curve. Small multiples
    with shared axes, rather than 28 curves on one plot, keep every class
    readable.
    """
    if len(curves) != len(class_names) or not curves:
        raise ValueError(f"need one curve per class: {len(curves)} curves, "
                         f"{len(class_names)} class names")
    checked = [None if c is None else _checked_curve(i, c) for i, c in enumerate(curves)]
    num_cols = min(_ROC_COLUMNS, len(checked))
    num_rows = -(-len(checked) // num_cols)
    figure = _new_figure(2.0 * num_cols, 2.0 * num_rows + 0.5, layout=None)
    axes = _grid(figure, num_rows, num_cols, margins=(0.65, 0.1, 0.6, 0.45), gaps=(0.1, 0.45),
                 sharex=True, sharey=True).ravel()
    axes[0].set(xticks=[0, 0.5, 1], yticks=[0, 0.5, 1])  # shared by every panel
    for ax, name, curve in zip(axes, class_names, checked):
        ax.plot([0, 1], [0, 1], color=_OTHER, linestyle="--", linewidth=0.8)
        if curve is None:
            ax.set_title(_short(name), fontsize=8)
            ax.text(0.5, 0.5, "undefined:\nno positives\nor no negatives", ha="center",
                    va="center", fontsize=7, color="0.4", transform=ax.transAxes)
        else:
            ax.plot(curve[0], curve[1], linewidth=1.2)
            ax.set_title(f"{_short(name)}\nAUC {curve[2]:.3f}", fontsize=8)
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), aspect="equal")  # AUC 1 stays visible
        ax.tick_params(labelsize=7)
    for ax in axes[len(checked):]:
        ax.set_axis_off()
    figure.supxlabel("false positive rate", fontsize=9)
    figure.supylabel("true positive rate", fontsize=9)
    return _save(figure, path)


def _series(records: Sequence[Mapping[str, Any]], split: str,
            key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` in the records of ``split`` that have it, by step."""
    points = sorted((float(r["step"]), float(r[key])) for r in records
                    if r.get("split") == split and key in r and "step" in r)
    return [s for s, _ in points], [v for _, v in points]


def _plot_series(ax: Any, records: Sequence[Mapping[str, Any]],
                 lines: Sequence[tuple[str, str, str]], ylabel: str, empty_note: str) -> None:
    """Draws (split, key, label) series on ``ax``; an empty panel shows ``empty_note``."""
    drawn = 0
    for split, key, label in lines:
        steps, values = _series(records, split, key)
        if steps:
            ax.plot(steps, values, marker="o" if split == "val" else None, markersize=3,
                    linewidth=1.0 if split == "train" else 1.5, label=label)
            drawn += 1
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, empty_note, ha="center", va="center",
                color="0.4", transform=ax.transAxes)
    ax.set(xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)


def training_curves_figure(path: str | os.PathLike,
                           records: Sequence[Mapping[str, Any]]) -> epath.Path:
    """Loss (train, val) and validation F1 (macro, weighted) against step (seed Fig. 5).

    ``records`` are the dicts of a run's ``metrics.jsonl``; only the
    ``train`` and ``val`` splits are drawn (checkpoint records and the like
    are ignored). A run with no validation yet gets an F1 panel that says so,
    so the figure can be drawn at any point of training.
    """
    if not any(r.get("split") in ("train", "val") and "step" in r for r in records):
        raise ValueError("records have no 'train' or 'val' split with a step to plot")
    figure = _new_figure(11.0, 4.0)
    loss_ax, f1_ax = figure.subplots(1, 2, sharex=True)
    _plot_series(loss_ax, records, [("train", "loss", "train"), ("val", "loss", "val")],
                 "loss", "no loss recorded yet")
    _plot_series(f1_ax, records, [("val", "macro_f1", "val macro F1"),
                                  ("val", "weighted_f1", "val weighted F1")],
                 "F1", "no validation records yet")
    f1_ax.set_ylim(0, 1)
    return _save(figure, path)


def f1_bars_figure(path: str | os.PathLike, class_names: Sequence[str], f1_default: np.ndarray,
                   f1_tuned: np.ndarray, support: np.ndarray) -> epath.Path:
    """Per-class F1 at threshold 0.5 beside F1 at tuned thresholds, as horizontal bars.

    Each class is labelled with its support (``Nucleoplasm (n=1234)``), since
    rare classes are where threshold tuning matters most; the legend gives
    both macro F1 values.
    """
    num = len(class_names)
    default = _checked("f1_default", f1_default, (num,))
    tuned = _checked("f1_tuned", f1_tuned, (num,))
    support = _checked("support", support, (num,))
    figure = _new_figure(8.0, 0.3 * num + 1.2)
    ax = figure.subplots()
    rows = np.arange(num)
    ax.barh(rows - 0.2, default, height=0.4, color=_OTHER,
            label=f"threshold 0.5 (macro {default.mean():.3f})")
    ax.barh(rows + 0.2, tuned, height=0.4, color=_TRUE_HIT,
            label=f"tuned thresholds (macro {tuned.mean():.3f})")
    ax.set_yticks(rows, [f"{n} (n={int(s)})" for n, s in zip(class_names, support)], fontsize=8)
    ax.set(xlim=(0, 1), ylim=(num - 0.5, -0.5), xlabel="F1")
    ax.grid(axis="x", alpha=0.3)
    figure.legend(fontsize=8, loc="outside upper center", ncols=2)
    return _save(figure, path)


def _bar_colors(probs: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> list[str]:
    """Bar color per class: true & predicted, true & missed, false positive, or other."""
    predicted = probs > thresholds
    table = {(True, True): _TRUE_HIT, (True, False): _TRUE_MISSED,
             (False, True): _FALSE_HIT, (False, False): _OTHER}
    return [table[bool(t), bool(p)] for t, p in zip(labels, predicted)]


def _montage_arrays(images: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                    thresholds: np.ndarray, ids: Sequence[str]) -> tuple[np.ndarray, ...]:
    """The montage inputs as checked arrays, or ValueError naming the wrong one."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise ValueError(f"images must have shape [K, S, S, 3 or 4], got {list(images.shape)}")
    num = len(images)
    if not 1 <= num <= MAX_MONTAGE_ROWS:
        raise ValueError(f"need 1 to {MAX_MONTAGE_ROWS} samples, got {num}")
    if len(ids) != num:
        raise ValueError(f"ids must have {num} entries, got {len(ids)}")
    classes = len(CLASS_NAMES)
    return (images, _checked("probs", probs, (num, classes)),
            _checked("labels", labels, (num, classes)),
            _checked("thresholds", thresholds, (classes,)))


def prediction_montage(path: str | os.PathLike, images: np.ndarray, probs: np.ndarray,
                       labels: np.ndarray, thresholds: np.ndarray, ids: Sequence[str],
                       title: str) -> epath.Path:
    """One row per sample: its HPA composite beside its 28 probabilities (seed Figs. 10-11).

    ``images`` are [K, S, S, C], uint8 or float in [0, 1], with C = 4 (red,
    green, blue, yellow) or 3; ``probs`` and 0/1 ``labels`` are [K, 28],
    ``thresholds`` [28]; 1 <= K <= 8. Bars are green for true and predicted
    classes (prob > threshold), orange for true but missed, red for false
    positives, gray otherwise; a black tick marks each class's threshold.
    Each image is brightened on its own, so that dark fields stay visible.
    """
    images, probs, labels, thresholds = _montage_arrays(images, probs, labels, thresholds, ids)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    num, classes = len(images), len(CLASS_NAMES)
    figure = _new_figure(13.0, 2.3 * num + 1.6, layout=None)
    axes = _grid(figure, num, 2, margins=(0.1, 0.15, 1.6, 0.8), gaps=(0.5, 0.35),
                 width_ratios=[1, 4])
    xs = np.arange(classes)
    for i, (image_ax, bar_ax) in enumerate(axes):
        image_ax.imshow(stretch_to_uint8(composite_rgb(images[i])))
        image_ax.set_axis_off()
        bar_ax.bar(xs, probs[i], color=_bar_colors(probs[i], labels[i], thresholds))
        bar_ax.hlines(thresholds, xs - 0.4, xs + 0.4, color="black", linewidth=1.2)
        true = ", ".join(_short(CLASS_NAMES[c]) for c in np.flatnonzero(labels[i])) or "none"
        bar_ax.set_title(f"{ids[i]}: true {true}", fontsize=8, loc="left")
        bar_ax.set(xlim=(-0.6, classes - 0.4), ylim=(0, 1))
        bar_ax.set_xticks(xs, [_short(n) for n in CLASS_NAMES] if i == num - 1 else [],
                          rotation=90, fontsize=7)
        bar_ax.tick_params(axis="y", labelsize=7)
    _montage_legend(figure)
    figure.suptitle(title)
    return _save(figure, path)


def _montage_legend(figure: Any) -> None:
    """The bar-color key of ``prediction_montage``, once, below the class names."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Patch(color=_TRUE_HIT, label="true, predicted"),
               Patch(color=_TRUE_MISSED, label="true, missed"),
               Patch(color=_FALSE_HIT, label="false positive"),
               Patch(color=_OTHER, label="other"),
               Line2D([], [], color="black", label="threshold")]
    figure.legend(handles=handles, loc="lower center", ncols=5, fontsize=8)
