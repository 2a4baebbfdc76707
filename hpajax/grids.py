"""PNG grids of HPA images, e.g. what the model sees after augmentation.

Drawing only, from arrays: NumPy and PIL, no JAX (``tools/augmentation_grid.py``
reads the store and runs the augmentation).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from hpajax.display import composite_rgb, stretch_to_uint8

_GRID_LINE = 64  # gray level of the 1 px line between tiles
_PAIRS_PER_ROW = 4  # (original, augmented) pairs per row of an augmentation grid


def _unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1]; float images as they are."""
    images = np.asarray(images)
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images


def _label_tiles(canvas: Image.Image, labels: Sequence[str], tile: tuple[int, int],
                 num_cols: int) -> None:
    """Writes each tile's label in its top-left corner, white on black."""
    draw = ImageDraw.Draw(canvas)
    height, width = tile
    for i, text in enumerate(labels):
        x, y = (i % num_cols) * width + 2, (i // num_cols) * height + 1
        draw.rectangle(draw.textbbox((x, y), text), fill=(0, 0, 0))
        draw.text((x, y), text, fill=(255, 255, 255))


def save_grid(path: str | os.PathLike, images: np.ndarray, num_cols: int = 8,
              labels: Sequence[str] | None = None) -> pathlib.Path:
    """Writes images [N, H, W, C] as an RGB PNG grid, ``min(num_cols, N)`` tiles wide.

    ``images`` are uint8 or float in [0, 1], with 3 (RGB) or 4 (red, green,
    blue, yellow) channels, shown as the usual HPA composite and brightened
    by one gain for the whole grid (see ``display.stretch_to_uint8``). The
    PNG is exactly tiles x image size; a 1 px gray line marks the tiles' top
    and left edges.
    ``labels``, one string per image, are written on the tiles.
    """
    images = _unit_float(images)
    num, height, width, _ = images.shape
    num_cols = min(num_cols, num)
    num_rows = -(-num // num_cols)
    rgb = stretch_to_uint8(composite_rgb(images))
    grid = np.zeros((num_rows * height, num_cols * width, 3), np.uint8)
    for i, tile in enumerate(rgb):
        row, col = divmod(i, num_cols)
        grid[row * height:(row + 1) * height, col * width:(col + 1) * width] = tile
    grid[::height] = _GRID_LINE
    grid[:, ::width] = _GRID_LINE
    canvas = Image.fromarray(grid)
    if labels is not None:
        _label_tiles(canvas, labels, (height, width), num_cols)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def save_augmentation_grid(path: str | os.PathLike, originals: np.ndarray,
                           augmented: np.ndarray,
                           labels: np.ndarray | None = None) -> pathlib.Path:
    """Writes each original image followed by its augmented version as a PNG grid.

    ``originals`` and ``augmented`` are [N, H, W, C], uint8 or float in
    [0, 1]; ``labels``, multi-hot [N, 28] or None, name each original's
    classes. Four (original, augmented) pairs per row; the original's tile
    gives its index and classes, e.g. ``#3: 0 25``. This is the picture to
    look at when choosing augmentation settings.
    """
    originals, augmented = _unit_float(originals), _unit_float(augmented)
    tiles = np.stack([originals, augmented], axis=1).reshape(-1, *originals.shape[1:])
    names = []
    for i in range(len(originals)):
        classes = "" if labels is None else " ".join(map(str, np.flatnonzero(labels[i])))
        names += [f"#{i}: {classes}", "augmented"]
    return save_grid(path, tiles, num_cols=2 * _PAIRS_PER_ROW, labels=names)
