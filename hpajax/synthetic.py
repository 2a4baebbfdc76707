"""Synthetic HPA-like data in the Kaggle 2019 layout, for tests and benchmarks.

``generate`` writes ``OUT/train.csv`` (``Id,Target``) and
``OUT/train/{Id}_{red,green,blue,yellow}.png`` (8-bit grayscale), or with
``test=True`` ``OUT/test/`` and ``OUT/sample_submission.csv``, exactly like
the real download, so every later stage can run end to end without it.

Labels follow the real statistics: by default a built-in model whose class
marginals equal ``KAGGLE_TRAIN_COUNTS / KAGGLE_TRAIN_SIZE`` and whose
co-occurrences follow the real file's (see ``_COMPANIONS``); or label sets
resampled from a real ``train.csv``.

Images look like HPA confocal fields: a dark background with a few irregular
cells; blue nuclei, red radial microtubules and yellow perinuclear ER. The
green channel carries one distinct pattern per class in the class's
compartment (``_GREEN``), overlaid for multi-label samples, so a model can
learn the classes. Rendering is vectorized NumPy plus PIL drawing.

Everything is a function of ``(seed, split, index)``: sample ``i`` gets its
own generator, so output is identical for any worker count.

Pattern sizes are written in pixels of a 512 px image and scale with the
image size. This module does not import JAX.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import multiprocessing
import os
import pathlib
import struct
import uuid
import zlib
from collections.abc import Callable, Iterable

import numpy as np
import tqdm
from PIL import Image, ImageDraw, ImageFilter

from hpajax import classes
from hpajax.data import labels as labelslib

_REF_SIZE = 512
_SPLITS = {"train": 0, "test": 1}  # RNG stream and Id namespace per split
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "hpajax/synthetic")
_CHUNK = 8  # samples per task handed to a worker process

# P(j present | c present) in the Kaggle 2019 train.csv for each class c's
# most frequent companions (up to 4 with P >= 0.05, rounded). Endosomes ->
# Lysosomes (0.62) is left out: every Lysosomes sample also has Endosomes, so
# Lysosomes enter as a primary class that brings Endosomes along.
_COMPANIONS: dict[int, dict[int, float]] = {
    0: {25: 0.28, 2: 0.13, 21: 0.10, 7: 0.08},
    1: {0: 0.48, 25: 0.21, 2: 0.12, 21: 0.06},
    2: {0: 0.48, 25: 0.22, 23: 0.06, 21: 0.06},
    3: {0: 0.37, 25: 0.17},
    4: {25: 0.18, 21: 0.07, 0: 0.05},
    5: {0: 0.32, 25: 0.22},
    6: {25: 0.15, 0: 0.09, 2: 0.08},
    7: {0: 0.39, 25: 0.15, 2: 0.07},
    8: {2: 0.21, 0: 0.09, 3: 0.08},
    9: {6: 0.24},
    10: {9: 1.00, 6: 0.39},
    11: {0: 0.24, 25: 0.13, 2: 0.07},
    12: {0: 0.29, 25: 0.23, 21: 0.19},
    13: {0: 0.33, 25: 0.23, 21: 0.21},
    14: {0: 0.20, 25: 0.15, 16: 0.10, 2: 0.07},
    15: {0: 0.57, 2: 0.48, 16: 0.43, 5: 0.38},
    16: {0: 0.54, 25: 0.28, 14: 0.19, 17: 0.15},
    17: {16: 0.37, 25: 0.36, 0: 0.36, 18: 0.23},
    18: {0: 0.31, 25: 0.29, 21: 0.07, 17: 0.05},
    19: {0: 0.41, 25: 0.19},
    20: {0: 0.34, 23: 0.10, 25: 0.05},
    21: {0: 0.36, 25: 0.24, 2: 0.06},
    22: {0: 0.41, 21: 0.16, 25: 0.14, 2: 0.06},
    23: {0: 0.27, 2: 0.08, 25: 0.07},
    24: {0: 0.24, 25: 0.16, 5: 0.09, 11: 0.06},
    25: {0: 0.44, 21: 0.11, 2: 0.10, 5: 0.07},
    26: {0: 0.35, 25: 0.16, 4: 0.05},
    27: {0: 0.64, 5: 0.36, 23: 0.18, 4: 0.09},
}


# --------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------


@functools.cache
def _label_model() -> tuple[np.ndarray, np.ndarray]:
    """Primary-class probabilities [28] and companion probabilities [28, 28].

    A sample draws one primary class ``c`` and then adds each class ``j``
    independently with probability ``companion[c, j]``, so every sample has a
    label and co-occurrences follow ``_COMPANIONS``. The companion table is
    scaled by one factor ``s``, and ``s`` and the primary probabilities are
    solved for so that the expected marginals ``primary + companion.T @
    primary`` equal the Kaggle class frequencies and the primary
    probabilities sum to one. This gives ~1.63 labels per sample with about
    the real 1/2/3/4-label shares.
    """
    target = np.asarray(classes.KAGGLE_TRAIN_COUNTS) / classes.KAGGLE_TRAIN_SIZE
    table = np.zeros((classes.NUM_CLASSES, classes.NUM_CLASSES))
    for c, row in _COMPANIONS.items():
        for j, p in row.items():
            table[c, j] = p

    def solve(scale: float) -> tuple[np.ndarray, np.ndarray]:
        companion = np.minimum(scale * table, 1.0)
        primary = np.linalg.solve(np.eye(classes.NUM_CLASSES) + companion.T, target)
        return primary, companion

    lo, hi = 0.0, 4.0  # the primary mass falls as the companion scale grows
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if solve(mid)[0].sum() > 1 else (lo, mid)
    primary, companion = solve(hi)
    assert primary.min() >= 0, "companion table inconsistent with the marginals"
    return primary / primary.sum(), companion


def _draw_model_labels(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Multi-hot labels [N, 28] from the built-in model (see ``_label_model``)."""
    primary_p, companion = _label_model()
    primary = rng.choice(classes.NUM_CLASSES, size=num_samples, p=primary_p)
    labels = rng.random((num_samples, classes.NUM_CLASSES)) < companion[primary]
    labels[np.arange(num_samples), primary] = True
    return labels.astype(np.uint8)


def read_label_sets(path: str | os.PathLike) -> np.ndarray:
    """Multi-hot labels [rows, 28] of a Kaggle-format ``train.csv``.

    Raises ``ValueError`` naming the file and line of the first bad row; a
    label model built on a partly wrong file would silently mislead.
    """
    table, problems = labelslib.read_labels_csv(path)
    if problems:
        first = problems[0]
        raise ValueError(f"{path}: {len(problems)} bad row(s); first at "
                         f"{first.where}: {first.why}")
    if table.labels is None:
        raise ValueError(f"{path}:1: no Target column; expected header 'Id,Target'")
    if not len(table.labels):
        raise ValueError(f"{path}: no label rows")
    return table.labels


def _labels(num_samples: int, seed: int, labels_csv: str | os.PathLike | None,
            split: str) -> np.ndarray:
    """Labels of a split: one seeded stream, the model or the real rows."""
    rng = np.random.default_rng([seed, _SPLITS[split], 0])
    if labels_csv is None:
        return _draw_model_labels(num_samples, rng)
    real = read_label_sets(labels_csv)
    return real[rng.integers(len(real), size=num_samples)]


def sample_labels(num_samples: int, seed: int,
                  labels_csv: str | os.PathLike | None = None) -> np.ndarray:
    """Multi-hot uint8 labels [N, 28] as ``generate`` draws them for train.

    Without ``labels_csv`` from the built-in model (Kaggle marginals, every
    sample at least one label); with it, rows of that real ``train.csv``
    drawn with replacement, so co-occurrence is exactly the real one.
    """
    _check_positive("num_samples", num_samples)
    _check_seed(seed)
    return _labels(num_samples, seed, labels_csv, "train")


# --------------------------------------------------------------------------
# Scene geometry: cells, nuclei and per-pixel fields
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Cell:
    """One cell: a wobbly disc with a wobbly nucleus inside, in pixels."""

    center: np.ndarray  # (x, y)
    radius: float
    shape: np.ndarray  # cos 2t, sin 2t, cos 3t, sin 3t outline coefficients
    nucleus: np.ndarray  # (x, y)
    nucleus_radius: float
    nucleus_shape: np.ndarray
    polarity: float  # angle of the Golgi/centrosome side of the nucleus
    nucleoli: np.ndarray  # [k, 3] x, y, radius


def _wobble(base: float, shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Outline radius along unit direction (u, v): low harmonics of the angle.

    Uses the multiple-angle polynomials in (u, v) instead of ``arctan2``.
    """
    a2, b2, a3, b3 = (float(c) for c in shape)
    return base * (1 + a2 * (u * u - v * v) + b2 * 2 * u * v
                   + a3 * u * (4 * u * u - 3) + b3 * v * (3 - 4 * v * v))


def _make_cell(rng: np.random.Generator, center: np.ndarray, radius: float) -> _Cell:
    """A cell around ``center``: off-centre nucleus, polarity, 1-4 nucleoli."""
    n_radius = radius * rng.uniform(0.38, 0.5)
    angle = rng.uniform(0, 2 * np.pi)
    nucleus = center + radius * rng.uniform(0, 0.15) * np.array([np.cos(angle), np.sin(angle)])
    k = rng.integers(1, 5)
    at = rng.uniform(0, 2 * np.pi, k)
    dist = n_radius * rng.uniform(0, 0.55, k)
    nucleoli = np.column_stack([nucleus[0] + dist * np.cos(at), nucleus[1] + dist * np.sin(at),
                                n_radius * rng.uniform(0.15, 0.25, k)])
    return _Cell(center, radius, rng.uniform(-0.12, 0.12, 4), nucleus, n_radius,
                 rng.uniform(-0.06, 0.06, 4), rng.uniform(0, 2 * np.pi), nucleoli)


def _layout(rng: np.random.Generator, size: int) -> list[_Cell]:
    """3-8 cells of varying size, mostly placed against a neighbour.

    Neighbours overlap slightly so that they share a border (cell junctions),
    like a sub-confluent culture; cells may run off the image edge.
    """
    want = int(rng.integers(3, 9))
    cells: list[_Cell] = []
    for _ in range(50 * want):
        if len(cells) == want:
            break
        radius = size * rng.uniform(0.09, 0.15)
        angle = rng.uniform(0, 2 * np.pi)
        if cells and rng.random() < 0.8:
            near = cells[rng.integers(len(cells))]
            dist = (near.radius + radius) * rng.uniform(0.8, 0.95)
            center = near.center + dist * np.array([np.cos(angle), np.sin(angle)])
        else:
            center = rng.uniform(0.1, 0.9, 2) * size
        inside = (center >= 0).all() and (center < size).all()
        if inside and all(np.hypot(*(center - c.center)) > 0.75 * (radius + c.radius)
                          for c in cells):
            cells.append(_make_cell(rng, center, radius))
    return cells


def _window(center: np.ndarray, reach: float, size: int
            ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Image slices of a box of half-width ``reach`` around ``center``, and the
    x offsets (a row) and y offsets (a column) of its pixels from the centre."""
    x0, y0 = (min(size, max(0, int(c - reach))) for c in center)
    x1, y1 = (min(size, max(lo, int(c + reach) + 2)) for c, lo in zip(center, (x0, y0)))
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(center[0]))[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(center[1]))[:, None]
    return (slice(y0, y1), slice(x0, x1)), dx, dy


class _Scene:
    """A field of cells and the per-pixel fields every channel is made from.

    ``cid`` is the owning cell (-1: none), ``rho``/``rho2`` the normalized
    radius (1 = membrane) in the nearest/second-nearest cell, ``rad`` the
    owning cell's outline radius in that direction (px), ``rn``/``nrad`` the
    same for the owning cell's nucleus, ``ndot`` the cosine between the
    direction from the nucleus and the cell's polarity. Each cell is computed
    only in its bounding box.
    """

    def __init__(self, rng: np.random.Generator, size: int):
        self.size = size
        self.scale = size / _REF_SIZE
        self.cells = _layout(rng, size)
        shape = (size, size)
        self.cid = np.full(shape, -1, np.int16)
        self.rho = np.full(shape, np.inf, np.float32)
        self.rho2 = np.full(shape, np.inf, np.float32)
        self.rad = np.ones(shape, np.float32)
        self.rn = np.full(shape, np.inf, np.float32)
        self.nrad = np.ones(shape, np.float32)
        self.ndot = np.zeros(shape, np.float32)
        for i, cell in enumerate(self.cells):
            self._add_cell(i, cell)
        for i, cell in enumerate(self.cells):
            self._add_nucleus(i, cell)

    def _add_cell(self, i: int, cell: _Cell) -> None:
        """Claim the pixels where this cell is nearer (in ``rho``) than others."""
        sl, dx, dy = _window(cell.center, 1.3 * cell.radius, self.size)
        d = np.sqrt(dx * dx + dy * dy) + np.float32(1e-3)
        rad = _wobble(cell.radius, cell.shape, dx / d, dy / d)
        rho = d / rad
        best, second = self.rho[sl], self.rho2[sl]
        nearer = rho < best
        second[...] = np.where(nearer, best, np.minimum(second, rho))
        best[nearer] = rho[nearer]
        self.rad[sl][nearer] = rad[nearer]
        self.cid[sl][nearer] = i

    def _add_nucleus(self, i: int, cell: _Cell) -> None:
        """Nuclear radius fields over the pixels this cell owns."""
        sl, dx, dy = _window(cell.center, 1.3 * cell.radius, self.size)
        dx = dx + np.float32(cell.center[0] - cell.nucleus[0])
        dy = dy + np.float32(cell.center[1] - cell.nucleus[1])
        d = np.sqrt(dx * dx + dy * dy) + np.float32(1e-3)
        u, v = dx / d, dy / d
        nrad = _wobble(cell.nucleus_radius, cell.nucleus_shape, u, v)
        own = self.cid[sl] == i
        np.copyto(self.rn[sl], d / nrad, where=own)
        np.copyto(self.nrad[sl], nrad, where=own)
        ndot = u * np.float32(math.cos(cell.polarity)) + v * np.float32(math.sin(cell.polarity))
        np.copyto(self.ndot[sl], ndot, where=own)

    def px(self, length: float) -> float:
        """A length given for a 512 px image, in pixels of this image."""
        return length * self.scale

    @functools.cached_property
    def inside(self) -> np.ndarray:
        """Soft cell mask: 1 inside any cell, ramping over ~1 px at the edge."""
        return _ramp((1 - self.rho) * self.rad)

    @functools.cached_property
    def nucleus(self) -> np.ndarray:
        """Soft nucleus mask."""
        return _ramp((1 - self.rn) * self.nrad)

    @functools.cached_property
    def cyto(self) -> np.ndarray:
        """Soft cytoplasm mask: in a cell, outside its nucleus."""
        return self.inside * (1 - self.nucleus)

    @functools.cached_property
    def nucleoli(self) -> np.ndarray:
        """Soft discs of the nucleoli, clipped to the nuclei."""
        field = np.zeros((self.size, self.size), np.float32)
        for x, y, r in np.concatenate([c.nucleoli for c in self.cells]).tolist():
            sl, dx, dy = _window((x, y), r + 2, self.size)
            disc = _ramp(np.float32(r) - np.sqrt(dx * dx + dy * dy), max(self.px(3), 1.0))
            np.maximum(field[sl], disc, out=field[sl])
        return field * self.nucleus

    @functools.cached_property
    def junction(self) -> np.ndarray:
        """Distance (px, approximate) to the border with a neighbouring cell,
        ``inf`` where no neighbour overlaps."""
        near = self.rho2 < 1
        gap = np.minimum(self.rho2, 1) - np.minimum(self.rho, 1)  # no inf - inf
        return np.where(near, gap * self.rad * 0.5, np.inf)

    def points(self, rng: np.random.Generator, i: int, n: int, rn_lo: float,
               rn_hi: float, decay: float | None = None) -> np.ndarray:
        """Up to ``n`` random (x, y) points in cell ``i`` whose nuclear radius
        ``rn`` is in [rn_lo, rn_hi); with ``decay`` crowded towards the
        nucleus as exp(-(rn - 1) / decay)."""
        cell = self.cells[i]
        xy = cell.center + cell.radius * rng.uniform(-1.3, 1.3, (4 * n, 2))
        xi, yi = xy.astype(np.int64).T
        ok = (xi >= 0) & (xi < self.size) & (yi >= 0) & (yi < self.size)
        xi, yi, xy = xi[ok], yi[ok], xy[ok]
        rn = self.rn[yi, xi]
        keep = (self.cid[yi, xi] == i) & (rn >= rn_lo) & (rn < rn_hi)
        if decay is not None:
            keep &= rng.random(len(rn)) < np.exp(-np.maximum(rn - 1, 0) / decay)
        return xy[keep][:n]

    def reach(self, i: int, origin: np.ndarray, direction: np.ndarray,
              steps: int = 32) -> np.ndarray:
        """How far (px) rays from ``origin`` [n, 2] along unit ``direction``
        [n, 2] stay inside cell ``i``."""
        t = np.linspace(0, 2.6 * self.cells[i].radius, steps)
        xy = origin[:, None, :] + t[None, :, None] * direction[:, None, :]
        xi, yi = xy.astype(np.int64).transpose(2, 0, 1)
        ok = (xi >= 0) & (xi < self.size) & (yi >= 0) & (yi < self.size)
        own = ok & (self.cid[np.where(ok, yi, 0), np.where(ok, xi, 0)] == i)
        run = np.cumprod(own, axis=1).sum(axis=1)
        return t[np.maximum(run - 1, 0)]


def _ramp(dist: np.ndarray, width: float = 1.0) -> np.ndarray:
    """0 -> 1 as a signed distance (px, positive inside) crosses 0 over
    ``width`` px: anti-aliased masks."""
    return np.clip(dist / np.float32(width) + np.float32(0.5), 0, 1)


def _noise(rng: np.random.Generator, size: int, feature_px: float) -> np.ndarray:
    """Smooth noise (about unit variance) with blobs of ``feature_px`` pixels:
    a random lattice upsampled bicubically."""
    n = max(2, round(size / max(feature_px, 1.0))) + 1
    lattice = rng.standard_normal((n, n), dtype=np.float32)
    return np.asarray(Image.fromarray(lattice).resize((size, size), Image.Resampling.BICUBIC))


def _reticulum(rng: np.random.Generator, size: int, feature_px: float) -> np.ndarray:
    """A net of thin bright ridges in [0, 1] (the zero set of smooth noise)."""
    ridge = np.clip(1 - np.abs(_noise(rng, size, feature_px)), 0, 1)
    ridge *= ridge
    return ridge * ridge


class _Canvas:
    """An 8-bit PIL drawing surface for dots, rings and lines, blurred once at
    the end into a float image in [0, 1]."""

    def __init__(self, scene: _Scene):
        self.scene = scene
        self.image = Image.new("L", (scene.size, scene.size), 0)
        self.draw = ImageDraw.Draw(self.image)

    def dots(self, xy: np.ndarray, radius: float | np.ndarray, fill: int,
             ring: bool = False) -> None:
        """Filled discs (or, with ``ring``, thin circles) at points [n, 2];
        ``radius`` in 512 px units."""
        radii = np.broadcast_to(np.maximum(self.scene.px(np.asarray(radius)), 0.5), len(xy))
        width = max(1, round(self.scene.px(1.5)))
        for (x, y), r in zip(xy.tolist(), radii.tolist()):
            box = (x - r, y - r, x + r, y + r)
            if ring:
                self.draw.ellipse(box, outline=fill, width=width)
            else:
                self.draw.ellipse(box, fill=fill)

    def lines(self, paths: Iterable[np.ndarray], fill: int,
              width: float = 1.5) -> None:
        """Polylines (each [k, 2] points), ``width`` in 512 px units."""
        w = max(1, round(self.scene.px(width)))
        for path in paths:
            self.draw.line(path.ravel().tolist(), fill=fill, width=w)

    def result(self, blur: float = 1.0) -> np.ndarray | float:
        """The drawing, Gaussian-blurred by ``blur`` (512 px units), in [0, 1];
        0.0 when nothing was drawn (saves the blur)."""
        if self.image.getbbox() is None:
            return 0.0
        image = self.image.filter(ImageFilter.GaussianBlur(self.scene.px(blur)))
        return np.asarray(image, np.float32) * np.float32(1 / 255)


def _fill(rng: np.random.Generator) -> int:
    """Per-cell expression level of a drawn pattern, on the 0-255 canvas."""
    return int(rng.integers(150, 256))


def _unit(angle: np.ndarray) -> np.ndarray:
    """Unit vectors [n, 2] (x, y) of angles."""
    return np.column_stack([np.cos(angle), np.sin(angle)])


def _wavy(rng: np.random.Generator, start: np.ndarray, heading: np.ndarray, steps: int,
          step_px: float, turn: float) -> np.ndarray:
    """Random-walk polylines [n, steps + 1, 2] from ``start`` with a smoothly
    turning heading (radians per step ~ ``turn``)."""
    angles = heading[:, None] + np.cumsum(rng.normal(0, turn, (len(start), steps)), axis=1)
    moves = step_px * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return np.concatenate([start[:, None], start[:, None] + np.cumsum(moves, axis=1)], axis=1)


def _microtubules(rng: np.random.Generator, scene: _Scene) -> list[np.ndarray]:
    """Slightly bent radial polylines [5, 2] from each nucleus to its membrane.

    Shared by the red reference channel and the green microtubule classes.
    """
    paths = []
    for i, cell in enumerate(scene.cells):
        n = max(4, int(110 * cell.radius / scene.px(60)))
        direction = _unit(rng.uniform(0, 2 * np.pi, n))
        r0 = _wobble(cell.nucleus_radius, cell.nucleus_shape, *direction.T) * 1.05
        r1 = scene.reach(i, np.repeat(cell.nucleus[None], n, 0), direction)
        t = np.linspace(0, 1, 5)
        along = r0[:, None] + (np.maximum(r1, r0) - r0)[:, None] * t
        bend = rng.normal(0, 0.08, (n, 1)) * np.sin(np.pi * t) * along
        normal = direction[:, ::-1] * [-1, 1]
        pts = (cell.nucleus + along[..., None] * direction[:, None]
               + bend[..., None] * normal[:, None])
        paths.extend(pts)
    return paths


# --------------------------------------------------------------------------
# Green patterns, one per class. Each either returns a float image (peak ~1)
# or draws onto the canvas clipped to the cells (``clip``) or not (``free``).
# --------------------------------------------------------------------------


@dataclasses.dataclass
class _Green:
    """What the class patterns of one sample draw on and share."""

    scene: _Scene
    rng: np.random.Generator
    microtubules: list[np.ndarray]
    er: np.ndarray
    clip: _Canvas
    free: _Canvas


def _g_nucleoplasm(g: _Green) -> np.ndarray:
    """Fills the nucleus, fainter in the nucleoli."""
    texture = np.clip(0.85 + 0.1 * _noise(g.rng, g.scene.size, g.scene.px(8)), 0.6, 1)
    return g.scene.nucleus * texture * (1 - 0.7 * g.scene.nucleoli)


def _g_nuclear_membrane(g: _Green) -> np.ndarray:
    """A thin rim on the nuclear envelope."""
    s = g.scene
    dist = (s.rn - 1) * s.nrad / np.float32(max(s.px(2.0), 0.7))
    return np.exp(-dist * dist) * s.inside


def _g_nucleoli(g: _Green) -> np.ndarray:
    """The nucleoli blobs."""
    return g.scene.nucleoli


def _g_fibrillar_center(g: _Green) -> None:
    """Small bright dots inside each nucleolus."""
    for x, y, r in np.concatenate([c.nucleoli for c in g.scene.cells]).tolist():
        k = int(g.rng.integers(2, 6))
        xy = np.array([x, y]) + 0.6 * r * g.rng.uniform(-1, 1, (k, 2))
        g.clip.dots(xy, 2.0, _fill(g.rng))


def _g_nuclear_speckles(g: _Green) -> np.ndarray:
    """Many irregular speckles in the nucleoplasm, outside the nucleoli."""
    for i in range(len(g.scene.cells)):
        xy = g.scene.points(g.rng, i, int(g.rng.integers(12, 25)), 0, 0.85)
        g.clip.dots(xy, g.rng.uniform(2, 4, len(xy)), _fill(g.rng))
    return 0.15 * g.scene.nucleus * (1 - g.scene.nucleoli)


def _g_nuclear_bodies(g: _Green) -> None:
    """A few distinct bright dots in the nucleus."""
    for i in range(len(g.scene.cells)):
        xy = g.scene.points(g.rng, i, int(g.rng.integers(2, 7)), 0, 0.8)
        g.clip.dots(xy, 3.0, 255)


def _g_er(g: _Green) -> np.ndarray:
    """The perinuclear reticulum of the yellow channel."""
    return g.er


def _g_golgi(g: _Green) -> np.ndarray:
    """A compact cap next to the nucleus on the polarity side."""
    s = g.scene
    shell = np.exp(-(((s.rn - 1.25) / np.float32(0.22)) ** 2))
    side = np.clip((s.ndot - 0.35) / np.float32(0.4), 0, 1)
    texture = 0.5 + 0.5 * _reticulum(g.rng, s.size, s.px(6))
    return s.cyto * shell * side * texture


def _cytoplasmic_dots(count: tuple[int, int], radius: tuple[float, float],
                      decay: float | None, ring: bool = False
                      ) -> Callable[[_Green], None]:
    """A pattern of ``count`` dots per cell in the cytoplasm."""

    def pattern(g: _Green) -> None:
        for i in range(len(g.scene.cells)):
            xy = g.scene.points(g.rng, i, int(g.rng.integers(*count)), 1.15, np.inf, decay)
            g.clip.dots(xy, g.rng.uniform(*radius, len(xy)), _fill(g.rng), ring)

    pattern.__doc__ = (f"{count[0]}-{count[1] - 1} {'rings' if ring else 'dots'} of radius "
                       f"{radius[0]}-{radius[1]} px per cell in the cytoplasm.")
    return pattern


def _g_intermediate_filaments(g: _Green) -> None:
    """Long wavy fibres winding around the nucleus."""
    for i, cell in enumerate(g.scene.cells):
        start = g.scene.points(g.rng, i, int(g.rng.integers(10, 18)), 1.1, 2.0)
        heading = np.arctan2(*(start - cell.nucleus).T[::-1]) + np.pi / 2
        paths = _wavy(g.rng, start, heading, 10, g.scene.px(9), 0.35)
        g.clip.lines(paths, _fill(g.rng), 1.5)


def _g_actin(g: _Green) -> None:
    """Straight parallel stress fibres spanning each cell."""
    for i in range(len(g.scene.cells)):
        mid = g.scene.points(g.rng, i, int(g.rng.integers(8, 15)), 1.0, np.inf)
        direction = _unit(g.rng.uniform(0, np.pi) + g.rng.normal(0, 0.05, len(mid)))
        ahead = g.scene.reach(i, mid, direction)
        back = g.scene.reach(i, mid, -direction)
        ends = np.stack([mid - back[:, None] * direction, mid + ahead[:, None] * direction], 1)
        g.clip.lines(ends, _fill(g.rng), 2.0)


def _g_focal_adhesions(g: _Green) -> None:
    """Short radial dashes just inside the membrane."""
    for i, cell in enumerate(g.scene.cells):
        n = int(g.rng.integers(15, 30))
        direction = _unit(g.rng.uniform(0, 2 * np.pi, n))
        origin = np.repeat(cell.nucleus[None], n, 0)
        edge = g.scene.reach(i, origin, direction)[:, None]
        length = g.scene.px(g.rng.uniform(4, 8, (n, 1)))
        ends = np.stack([origin + (edge - length - 1) * direction,
                         origin + (edge - 1) * direction], 1)
        g.clip.lines(ends, _fill(g.rng), 2.5)


def _g_microtubules(g: _Green) -> None:
    """The radial microtubule array of the red channel."""
    g.clip.lines(g.microtubules, _fill(g.rng), 1.5)


def _g_microtubule_ends(g: _Green) -> None:
    """Short comets at the plus ends of the microtubules, near the membrane."""
    tips = np.stack([p[-1] for p in g.microtubules])
    back = np.stack([p[-2] - p[-1] for p in g.microtubules])
    back *= g.scene.px(6) / np.maximum(np.hypot(*back.T), 1e-6)[:, None]
    g.clip.lines(np.stack([tips + back, tips], 1), 255, 2.5)


def _g_cytokinetic_bridge(g: _Green) -> None:
    """A bright bridge with a midbody between the nuclei of the two closest
    cells (a lone cell gets a bridge to an imagined sister off its edge)."""
    cells = g.scene.cells
    if len(cells) < 2:
        a = cells[0].nucleus
        b = a + 2 * cells[0].radius * _unit(g.rng.uniform(0, 2 * np.pi, 1))[0]
    else:
        _, i, j = min((np.hypot(*(p.center - q.center)), i, j) for i, p in enumerate(cells)
                      for j, q in enumerate(cells) if i < j)
        a, b = cells[i].nucleus, cells[j].nucleus
    mid = (a + b) / 2
    g.free.lines([np.stack([a + 0.3 * (b - a), b + 0.3 * (a - b)])], 200, 2.5)
    g.free.dots(mid[None], 4, 255)


def _g_mitotic_spindle(g: _Green) -> None:
    """A bipolar spindle (bundle of arcs between two poles) over one nucleus."""
    cell = g.scene.cells[int(g.rng.integers(len(g.scene.cells)))]
    axis = _unit(g.rng.uniform(0, np.pi, 1))[0]
    half = 0.8 * cell.nucleus_radius
    t = np.linspace(-1, 1, 9)[:, None]
    normal = axis[::-1] * [-1, 1]
    for bulge in np.linspace(-0.6, 0.6, 7):
        path = cell.nucleus + t * half * axis + bulge * half * (1 - t * t) * normal
        g.clip.lines([path], 255, 1.5)
    g.clip.dots(cell.nucleus + np.array([half, -half])[:, None] * axis, 3, 255)


def _perinuclear_spot(g: _Green, i: int, offset: float) -> np.ndarray:
    """A point beside cell ``i``'s nucleus on its polarity side, ``offset``
    nuclear radii out from the centre."""
    cell = g.scene.cells[i]
    direction = _unit(np.array([cell.polarity]))[0]
    rim = _wobble(cell.nucleus_radius, cell.nucleus_shape, *direction)
    return cell.nucleus + offset * rim * direction


def _g_mtoc(g: _Green) -> None:
    """One bright spot beside the nucleus with a faint aster around it."""
    for i in range(len(g.scene.cells)):
        spot = _perinuclear_spot(g, i, 1.2)
        rays = spot + g.scene.px(14) * _unit(np.linspace(0, 2 * np.pi, 12, endpoint=False))
        g.clip.lines((np.stack([spot, end]) for end in rays), 90, 1.0)
        g.clip.dots(spot[None], 4, 255)


def _g_centrosome(g: _Green) -> None:
    """One or two tiny sharp dots beside the nucleus."""
    for i in range(len(g.scene.cells)):
        spot = _perinuclear_spot(g, i, 1.15)
        k = int(g.rng.integers(1, 3))
        g.clip.dots(spot + g.scene.px(4) * np.arange(k)[:, None], 2.2, 255)


def _g_plasma_membrane(g: _Green) -> np.ndarray:
    """The cell outline, including borders between touching cells."""
    s = g.scene
    w = np.float32(max(s.px(2.0), 0.7))
    outer = (1 - s.rho) * s.rad / w
    inner = s.junction / w
    return np.exp(-outer * outer) + np.exp(-inner * inner)


def _g_cell_junctions(g: _Green) -> np.ndarray:
    """Only the borders where two cells touch."""
    inner = g.scene.junction / np.float32(max(g.scene.px(2.5), 0.8))
    return 1.2 * np.exp(-inner * inner) * g.scene.inside


def _g_mitochondria(g: _Green) -> None:
    """Many short worms in the cytoplasm, crowded around the nucleus."""
    for i in range(len(g.scene.cells)):
        start = g.scene.points(g.rng, i, int(g.rng.integers(60, 110)), 1.1, np.inf, 1.2)
        worms = _wavy(g.rng, start, g.rng.uniform(0, 2 * np.pi, len(start)), 3,
                      g.scene.px(3.5), 0.5)
        g.clip.lines(worms, _fill(g.rng), 2.0)


def _g_aggresome(g: _Green) -> None:
    """One large bright blob against the nucleus."""
    for i, cell in enumerate(g.scene.cells):
        spot = _perinuclear_spot(g, i, 1.3)
        g.clip.dots(spot[None], 0.35 * cell.nucleus_radius / g.scene.scale, 255)


def _g_cytosol(g: _Green) -> np.ndarray:
    """Diffuse, slightly uneven fill of the cytoplasm."""
    s = g.scene
    texture = np.clip(0.8 + 0.15 * _noise(g.rng, s.size, s.px(20)), 0.5, 1)
    return s.cyto * texture + 0.1 * s.nucleus


def _g_rods_rings(g: _Green) -> None:
    """A few short thick rods and small rings in the cytoplasm."""
    for i in range(len(g.scene.cells)):
        xy = g.scene.points(g.rng, i, int(g.rng.integers(2, 6)), 1.2, np.inf)
        rods = xy[: len(xy) // 2]
        half = g.scene.px(6) * _unit(g.rng.uniform(0, np.pi, len(rods)))
        g.clip.lines(np.stack([rods - half, rods + half], 1), 255, 3.0)
        g.clip.dots(xy[len(xy) // 2:], 4.5, 255, ring=True)


_GREEN: dict[int, Callable[[_Green], np.ndarray | None]] = {
    0: _g_nucleoplasm,
    1: _g_nuclear_membrane,
    2: _g_nucleoli,
    3: _g_fibrillar_center,
    4: _g_nuclear_speckles,
    5: _g_nuclear_bodies,
    6: _g_er,
    7: _g_golgi,
    8: _cytoplasmic_dots((40, 80), (0.8, 1.3), None),  # peroxisomes
    9: _cytoplasmic_dots((20, 40), (1.5, 2.5), 1.0),  # endosomes
    10: _cytoplasmic_dots((10, 20), (2.5, 4.0), None),  # lysosomes
    11: _g_intermediate_filaments,
    12: _g_actin,
    13: _g_focal_adhesions,
    14: _g_microtubules,
    15: _g_microtubule_ends,
    16: _g_cytokinetic_bridge,
    17: _g_mitotic_spindle,
    18: _g_mtoc,
    19: _g_centrosome,
    20: _cytoplasmic_dots((5, 15), (2.5, 4.0), None, ring=True),  # lipid droplets
    21: _g_plasma_membrane,
    22: _g_cell_junctions,
    23: _g_mitochondria,
    24: _g_aggresome,
    25: _g_cytosol,
    26: _cytoplasmic_dots((1, 4), (4.0, 6.0), None),  # cytoplasmic bodies
    27: _g_rods_rings,
}


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _to_uint8(rng: np.random.Generator, signal: np.ndarray, gain: float,
              offset: float) -> np.ndarray:
    """Camera model: offset + gain * signal plus read and shot noise, as uint8."""
    value = np.float32(gain) * signal
    value += np.float32(offset)
    noise = rng.random(value.shape, dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(5) + np.float32(0.25) * value  # uniform, sd ~ 1.4 + 0.07 value
    value += noise
    return np.clip(value, 0, 255, out=value).astype(np.uint8)


def _references(rng: np.random.Generator, s: _Scene
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Red, blue and yellow signals of a scene, plus what green may reuse:
    the ER reticulum and the microtubule polylines."""
    microtubules = _microtubules(rng, s)
    canvas = _Canvas(s)
    canvas.lines(microtubules, 160, 1.0)
    perinuclear = np.exp((1 - s.rn) / np.float32(1.5))
    red = s.cyto * (0.7 * canvas.result() + 0.1 + 0.25 * perinuclear) + 0.08 * s.nucleus
    chromatin = 0.8 + 0.12 * _noise(rng, s.size, s.px(5))
    blue = s.nucleus * chromatin * (1 - 0.45 * s.nucleoli)
    reticulum = 0.3 + 0.7 * _reticulum(rng, s.size, s.px(7))
    er = s.cyto * np.exp((1 - s.rn) / np.float32(0.8)) * reticulum
    yellow = er + 0.25 * s.cyto + 0.1 * s.nucleus
    return red, blue, yellow, er, microtubules


def _green_signal(labels_row: np.ndarray, g: _Green) -> np.ndarray:
    """The overlay of the patterns of the sample's classes."""
    s = g.scene
    green = np.zeros((s.size, s.size), np.float32)
    for c in np.flatnonzero(labels_row):
        field = _GREEN[int(c)](g)
        if field is not None:
            green += field
    return green + g.clip.result() * s.inside + g.free.result()


def _render_planes(labels_row: np.ndarray, image_size: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """The four uint8 [S, S] planes (red, green, blue, yellow) of one sample."""
    s = _Scene(rng, image_size)
    red, blue, yellow, er, microtubules = _references(rng, s)
    green = _green_signal(labels_row, _Green(s, rng, microtubules, er, _Canvas(s), _Canvas(s)))
    # Gains and offsets put channel means near HPA's (~10-25 of 255).
    return [_to_uint8(rng, red, rng.uniform(80, 160), rng.uniform(4, 9)),
            _to_uint8(rng, green, rng.uniform(50, 120), rng.uniform(2, 5)),
            _to_uint8(rng, blue, rng.uniform(110, 200), rng.uniform(3, 6)),
            _to_uint8(rng, yellow, rng.uniform(80, 160), rng.uniform(4, 9))]


def render(labels_row: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One synthetic sample, uint8 [S, S, 4] (red, green, blue, yellow).

    ``labels_row`` is a multi-hot [28] vector; the green channel overlays the
    patterns of its classes. Deterministic given the generator's state.
    """
    labels_row = np.asarray(labels_row)
    if labels_row.shape != (classes.NUM_CLASSES,):
        raise ValueError(f"labels_row must have shape ({classes.NUM_CLASSES},), "
                         f"got {labels_row.shape}")
    _check_image_size(image_size)
    return np.stack(_render_planes(labels_row, image_size, rng), axis=-1)


# --------------------------------------------------------------------------
# Writing the Kaggle layout
# --------------------------------------------------------------------------


def sample_id(seed: int, index: int, split: str = "train") -> str:
    """Kaggle-like UUID-shaped Id of sample ``index``; differs between splits."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{split}/{seed}/{index}"))


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Sample ``index``'s own generator, so output ignores the worker count."""
    return np.random.default_rng([seed, _SPLITS[split], 1, index])


def _png(plane: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a uint8 [H, W] plane.

    Every row uses PNG's "Sub" filter, deflated at zlib level 1: faster to
    write than PIL's per-row filter search and, like the real Kaggle PNGs,
    as costly to decode, so data-path benchmarks on synthetic sets see the
    real decoding cost (BENCHMARKS.md, "Measurements behind the defaults").
    """
    height, width = plane.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 1  # filter type "Sub": each byte minus its left neighbour, mod 256
    rows[:, 1] = plane[:, 0]
    np.subtract(plane[:, 1:], plane[:, :-1], out=rows[:, 2:])
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY)
    data = packer.compress(rows.tobytes()) + packer.flush()

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def _write_chunk(task: tuple[str, str, int, int, int, np.ndarray]) -> int:
    """Render and write samples ``start...``; returns how many (worker entry)."""
    image_dir, split, seed, image_size, start, labels = task
    for k, row in enumerate(labels):
        index = start + k
        planes = _render_planes(row, image_size, _sample_rng(seed, split, index))
        stem = os.path.join(image_dir, sample_id(seed, index, split))
        for channel, plane in zip(classes.CHANNELS, planes):
            pathlib.Path(f"{stem}_{channel}.png").write_bytes(_png(plane))
    return len(labels)


def _check_positive(name: str, value: int) -> None:
    """ValueError naming ``name`` unless ``value`` is a positive int."""
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_seed(seed: int) -> None:
    """ValueError unless ``seed`` is a non-negative int (NumPy seeds are)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _check_image_size(image_size: int) -> None:
    """ValueError unless ``image_size`` is an int >= 16 (room for a cell)."""
    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")


def generate(out_dir: str | os.PathLike, num_samples: int, image_size: int = 512,
             seed: int = 0, workers: int | None = None,
             labels_csv: str | os.PathLike | None = None, test: bool = False) -> pathlib.Path:
    """Write a synthetic data set in the Kaggle 2019 layout; returns the csv.

    Train: ``out_dir/train/{Id}_{channel}.png`` and ``out_dir/train.csv``
    (``Id,Target``, row ``i`` is sample ``i``). With ``test``:
    ``out_dir/test/`` and ``out_dir/sample_submission.csv`` (``Id,Predicted``,
    all ``0``), with Ids disjoint from train's. Labels come from
    ``sample_labels`` (or, for test, the same draw in the test stream).
    ``workers`` processes render in parallel (default: all cores); the
    output does not depend on it. The csv is written last.
    """
    _check_positive("num_samples", num_samples)
    _check_seed(seed)
    _check_image_size(image_size)
    workers = (os.cpu_count() or 1) if workers is None else workers
    _check_positive("workers", workers)
    split = "test" if test else "train"
    labels = _labels(num_samples, seed, labels_csv, split)
    out = pathlib.Path(out_dir)
    image_dir = out / split
    image_dir.mkdir(parents=True, exist_ok=True)

    tasks = [(str(image_dir), split, seed, image_size, start, labels[start:start + _CHUNK])
             for start in range(0, num_samples, _CHUNK)]
    workers = min(workers, len(tasks))
    with tqdm.tqdm(total=num_samples, desc=f"synthetic {split}", unit="sample") as bar:
        if workers == 1:
            for task in tasks:
                bar.update(_write_chunk(task))
        else:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for done in pool.imap_unordered(_write_chunk, tasks):
                    bar.update(done)

    csv_path = out / ("sample_submission.csv" if test else "train.csv")
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Id", "Predicted" if test else "Target"])
        for index, row in enumerate(labels):
            target = "0" if test else " ".join(str(c) for c in np.flatnonzero(row))
            writer.writerow([sample_id(seed, index, split), target])
    return csv_path
