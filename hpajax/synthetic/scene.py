"""Scene geometry of a synthetic HPA field: cells, nuclei, per-pixel fields, drawing.

``Scene`` lays out 3-8 irregular cells and computes the per-pixel fields
(owning cell, normalized radii, nuclei) every channel is made from;
``Canvas`` draws dots and lines at the scene's scale. Sizes are written in
pixels of a 512 px image and scale with the image size.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_REF_SIZE = 512  # pattern sizes are given in pixels of an image this size


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


def wobble(base: float, shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
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


class Scene:
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
        rad = wobble(cell.radius, cell.shape, dx / d, dy / d)
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
        nrad = wobble(cell.nucleus_radius, cell.nucleus_shape, u, v)
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


def smooth_noise(rng: np.random.Generator, size: int, feature_px: float) -> np.ndarray:
    """Smooth noise (about unit variance) with blobs of ``feature_px`` pixels:
    a random lattice upsampled bicubically."""
    n = max(2, round(size / max(feature_px, 1.0))) + 1
    lattice = rng.standard_normal((n, n), dtype=np.float32)
    return np.asarray(Image.fromarray(lattice).resize((size, size), Image.Resampling.BICUBIC))


def reticulum(rng: np.random.Generator, size: int, feature_px: float) -> np.ndarray:
    """A net of thin bright ridges in [0, 1] (the zero set of smooth noise)."""
    ridge = np.clip(1 - np.abs(smooth_noise(rng, size, feature_px)), 0, 1)
    ridge *= ridge
    return ridge * ridge


class Canvas:
    """An 8-bit PIL drawing surface for dots, rings and lines, blurred once at
    the end into a float image in [0, 1]."""

    def __init__(self, scene: Scene):
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


def fill_level(rng: np.random.Generator) -> int:
    """Per-cell expression level of a drawn pattern, on the 0-255 canvas."""
    return int(rng.integers(150, 256))


def unit_vectors(angle: np.ndarray) -> np.ndarray:
    """Unit vectors [n, 2] (x, y) of angles."""
    return np.column_stack([np.cos(angle), np.sin(angle)])


def wavy_paths(rng: np.random.Generator, start: np.ndarray, heading: np.ndarray, steps: int,
          step_px: float, turn: float) -> np.ndarray:
    """Random-walk polylines [n, steps + 1, 2] from ``start`` with a smoothly
    turning heading (radians per step ~ ``turn``)."""
    angles = heading[:, None] + np.cumsum(rng.normal(0, turn, (len(start), steps)), axis=1)
    moves = step_px * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return np.concatenate([start[:, None], start[:, None] + np.cumsum(moves, axis=1)], axis=1)


def microtubules(rng: np.random.Generator, scene: Scene) -> list[np.ndarray]:
    """Slightly bent radial polylines [5, 2] from each nucleus to its membrane.

    Shared by the red reference channel and the green microtubule classes.
    """
    paths = []
    for i, cell in enumerate(scene.cells):
        n = max(4, int(110 * cell.radius / scene.px(60)))
        direction = unit_vectors(rng.uniform(0, 2 * np.pi, n))
        r0 = wobble(cell.nucleus_radius, cell.nucleus_shape, *direction.T) * 1.05
        r1 = scene.reach(i, np.repeat(cell.nucleus[None], n, 0), direction)
        t = np.linspace(0, 1, 5)
        along = r0[:, None] + (np.maximum(r1, r0) - r0)[:, None] * t
        bend = rng.normal(0, 0.08, (n, 1)) * np.sin(np.pi * t) * along
        normal = direction[:, ::-1] * [-1, 1]
        pts = (cell.nucleus + along[..., None] * direction[:, None]
               + bend[..., None] * normal[:, None])
        paths.extend(pts)
    return paths
