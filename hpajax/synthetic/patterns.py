"""The green channel's patterns, one per class, in the class's compartment.

Each pattern either returns a float image (peak ~1) or draws onto the canvas
clipped to the cells (``clip``) or not (``free``); ``GREEN`` maps a class
number to its pattern. A multi-label sample overlays its classes' patterns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from hpajax.synthetic import scene as scene_lib

@dataclasses.dataclass
class Green:
    """What the class patterns of one sample draw on and share."""

    scene: scene_lib.Scene
    rng: np.random.Generator
    microtubules: list[np.ndarray]
    er: np.ndarray
    clip: scene_lib.Canvas
    free: scene_lib.Canvas


def _g_nucleoplasm(g: Green) -> np.ndarray:
    """Fills the nucleus, fainter in the nucleoli."""
    noise = scene_lib.smooth_noise(g.rng, g.scene.size, g.scene.px(8))
    texture = np.clip(0.85 + 0.1 * noise, 0.6, 1)
    return g.scene.nucleus * texture * (1 - 0.7 * g.scene.nucleoli)


def _g_nuclear_membrane(g: Green) -> np.ndarray:
    """A thin rim on the nuclear envelope."""
    s = g.scene
    dist = (s.rn - 1) * s.nrad / np.float32(max(s.px(2.0), 0.7))
    return np.exp(-dist * dist) * s.inside


def _g_nucleoli(g: Green) -> np.ndarray:
    """The nucleoli blobs."""
    return g.scene.nucleoli


def _g_fibrillar_center(g: Green) -> None:
    """Small bright dots inside each nucleolus."""
    for x, y, r in np.concatenate([c.nucleoli for c in g.scene.cells]).tolist():
        k = int(g.rng.integers(2, 6))
        xy = np.array([x, y]) + 0.6 * r * g.rng.uniform(-1, 1, (k, 2))
        g.clip.dots(xy, 2.0, scene_lib.fill_level(g.rng))


def _g_nuclear_speckles(g: Green) -> np.ndarray:
    """Many irregular speckles in the nucleoplasm, outside the nucleoli."""
    for i in range(len(g.scene.cells)):
        xy = g.scene.points(g.rng, i, int(g.rng.integers(12, 25)), 0, 0.85)
        g.clip.dots(xy, g.rng.uniform(2, 4, len(xy)), scene_lib.fill_level(g.rng))
    return 0.15 * g.scene.nucleus * (1 - g.scene.nucleoli)


def _g_nuclear_bodies(g: Green) -> None:
    """A few distinct bright dots in the nucleus."""
    for i in range(len(g.scene.cells)):
        xy = g.scene.points(g.rng, i, int(g.rng.integers(2, 7)), 0, 0.8)
        g.clip.dots(xy, 3.0, 255)


def _g_er(g: Green) -> np.ndarray:
    """The perinuclear reticulum of the yellow channel."""
    return g.er


def _g_golgi(g: Green) -> np.ndarray:
    """A compact cap next to the nucleus on the polarity side."""
    s = g.scene
    shell = np.exp(-(((s.rn - 1.25) / np.float32(0.22)) ** 2))
    side = np.clip((s.ndot - 0.35) / np.float32(0.4), 0, 1)
    texture = 0.5 + 0.5 * scene_lib.reticulum(g.rng, s.size, s.px(6))
    return s.cyto * shell * side * texture


def _cytoplasmic_dots(count: tuple[int, int], radius: tuple[float, float],
                      decay: float | None, ring: bool = False
                      ) -> Callable[[Green], None]:
    """A pattern of ``count`` dots per cell in the cytoplasm."""

    def pattern(g: Green) -> None:
        for i in range(len(g.scene.cells)):
            xy = g.scene.points(g.rng, i, int(g.rng.integers(*count)), 1.15, np.inf, decay)
            g.clip.dots(xy, g.rng.uniform(*radius, len(xy)), scene_lib.fill_level(g.rng), ring)

    pattern.__doc__ = (f"{count[0]}-{count[1] - 1} {'rings' if ring else 'dots'} of radius "
                       f"{radius[0]}-{radius[1]} px per cell in the cytoplasm.")
    return pattern


def _g_intermediate_filaments(g: Green) -> None:
    """Long wavy fibres winding around the nucleus."""
    for i, cell in enumerate(g.scene.cells):
        start = g.scene.points(g.rng, i, int(g.rng.integers(10, 18)), 1.1, 2.0)
        heading = np.arctan2(*(start - cell.nucleus).T[::-1]) + np.pi / 2
        paths = scene_lib.wavy_paths(g.rng, start, heading, 10, g.scene.px(9), 0.35)
        g.clip.lines(paths, scene_lib.fill_level(g.rng), 1.5)


def _g_actin(g: Green) -> None:
    """Straight parallel stress fibres spanning each cell."""
    for i in range(len(g.scene.cells)):
        mid = g.scene.points(g.rng, i, int(g.rng.integers(8, 15)), 1.0, np.inf)
        angle = g.rng.uniform(0, np.pi) + g.rng.normal(0, 0.05, len(mid))
        direction = scene_lib.unit_vectors(angle)
        ahead = g.scene.reach(i, mid, direction)
        back = g.scene.reach(i, mid, -direction)
        ends = np.stack([mid - back[:, None] * direction, mid + ahead[:, None] * direction], 1)
        g.clip.lines(ends, scene_lib.fill_level(g.rng), 2.0)


def _g_focal_adhesions(g: Green) -> None:
    """Short radial dashes just inside the membrane."""
    for i, cell in enumerate(g.scene.cells):
        n = int(g.rng.integers(15, 30))
        direction = scene_lib.unit_vectors(g.rng.uniform(0, 2 * np.pi, n))
        origin = np.repeat(cell.nucleus[None], n, 0)
        edge = g.scene.reach(i, origin, direction)[:, None]
        length = g.scene.px(g.rng.uniform(4, 8, (n, 1)))
        ends = np.stack([origin + (edge - length - 1) * direction,
                         origin + (edge - 1) * direction], 1)
        g.clip.lines(ends, scene_lib.fill_level(g.rng), 2.5)


def _g_microtubules(g: Green) -> None:
    """The radial microtubule array of the red channel."""
    g.clip.lines(g.microtubules, scene_lib.fill_level(g.rng), 1.5)


def _g_microtubule_ends(g: Green) -> None:
    """Short comets at the plus ends of the microtubules, near the membrane."""
    tips = np.stack([p[-1] for p in g.microtubules])
    back = np.stack([p[-2] - p[-1] for p in g.microtubules])
    back *= g.scene.px(6) / np.maximum(np.hypot(*back.T), 1e-6)[:, None]
    g.clip.lines(np.stack([tips + back, tips], 1), 255, 2.5)


def _g_cytokinetic_bridge(g: Green) -> None:
    """A bright bridge with a midbody between the nuclei of the two closest
    cells (a lone cell gets a bridge to an imagined sister off its edge)."""
    cells = g.scene.cells
    if len(cells) < 2:
        a = cells[0].nucleus
        b = a + 2 * cells[0].radius * scene_lib.unit_vectors(g.rng.uniform(0, 2 * np.pi, 1))[0]
    else:
        _, i, j = min((np.hypot(*(p.center - q.center)), i, j) for i, p in enumerate(cells)
                      for j, q in enumerate(cells) if i < j)
        a, b = cells[i].nucleus, cells[j].nucleus
    mid = (a + b) / 2
    g.free.lines([np.stack([a + 0.3 * (b - a), b + 0.3 * (a - b)])], 200, 2.5)
    g.free.dots(mid[None], 4, 255)


def _g_mitotic_spindle(g: Green) -> None:
    """A bipolar spindle (bundle of arcs between two poles) over one nucleus."""
    cell = g.scene.cells[int(g.rng.integers(len(g.scene.cells)))]
    axis = scene_lib.unit_vectors(g.rng.uniform(0, np.pi, 1))[0]
    half = 0.8 * cell.nucleus_radius
    t = np.linspace(-1, 1, 9)[:, None]
    normal = axis[::-1] * [-1, 1]
    for bulge in np.linspace(-0.6, 0.6, 7):
        path = cell.nucleus + t * half * axis + bulge * half * (1 - t * t) * normal
        g.clip.lines([path], 255, 1.5)
    g.clip.dots(cell.nucleus + np.array([half, -half])[:, None] * axis, 3, 255)


def _perinuclear_spot(g: Green, i: int, offset: float) -> np.ndarray:
    """A point beside cell ``i``'s nucleus on its polarity side, ``offset``
    nuclear radii out from the centre."""
    cell = g.scene.cells[i]
    direction = scene_lib.unit_vectors(np.array([cell.polarity]))[0]
    rim = scene_lib.wobble(cell.nucleus_radius, cell.nucleus_shape, *direction)
    return cell.nucleus + offset * rim * direction


def _g_mtoc(g: Green) -> None:
    """One bright spot beside the nucleus with a faint aster around it."""
    for i in range(len(g.scene.cells)):
        spot = _perinuclear_spot(g, i, 1.2)
        around = scene_lib.unit_vectors(np.linspace(0, 2 * np.pi, 12, endpoint=False))
        rays = spot + g.scene.px(14) * around
        g.clip.lines((np.stack([spot, end]) for end in rays), 90, 1.0)
        g.clip.dots(spot[None], 4, 255)


def _g_centrosome(g: Green) -> None:
    """One or two tiny sharp dots beside the nucleus."""
    for i in range(len(g.scene.cells)):
        spot = _perinuclear_spot(g, i, 1.15)
        k = int(g.rng.integers(1, 3))
        g.clip.dots(spot + g.scene.px(4) * np.arange(k)[:, None], 2.2, 255)


def _g_plasma_membrane(g: Green) -> np.ndarray:
    """The cell outline, including borders between touching cells."""
    s = g.scene
    w = np.float32(max(s.px(2.0), 0.7))
    outer = (1 - s.rho) * s.rad / w
    inner = s.junction / w
    return np.exp(-outer * outer) + np.exp(-inner * inner)


def _g_cell_junctions(g: Green) -> np.ndarray:
    """Only the borders where two cells touch."""
    inner = g.scene.junction / np.float32(max(g.scene.px(2.5), 0.8))
    return 1.2 * np.exp(-inner * inner) * g.scene.inside


def _g_mitochondria(g: Green) -> None:
    """Many short worms in the cytoplasm, crowded around the nucleus."""
    for i in range(len(g.scene.cells)):
        start = g.scene.points(g.rng, i, int(g.rng.integers(60, 110)), 1.1, np.inf, 1.2)
        worms = scene_lib.wavy_paths(g.rng, start, g.rng.uniform(0, 2 * np.pi, len(start)), 3,
                      g.scene.px(3.5), 0.5)
        g.clip.lines(worms, scene_lib.fill_level(g.rng), 2.0)


def _g_aggresome(g: Green) -> None:
    """One large bright blob against the nucleus."""
    for i, cell in enumerate(g.scene.cells):
        spot = _perinuclear_spot(g, i, 1.3)
        g.clip.dots(spot[None], 0.35 * cell.nucleus_radius / g.scene.scale, 255)


def _g_cytosol(g: Green) -> np.ndarray:
    """Diffuse, slightly uneven fill of the cytoplasm."""
    s = g.scene
    texture = np.clip(0.8 + 0.15 * scene_lib.smooth_noise(g.rng, s.size, s.px(20)), 0.5, 1)
    return s.cyto * texture + 0.1 * s.nucleus


def _g_rods_rings(g: Green) -> None:
    """A few short thick rods and small rings in the cytoplasm."""
    for i in range(len(g.scene.cells)):
        xy = g.scene.points(g.rng, i, int(g.rng.integers(2, 6)), 1.2, np.inf)
        rods = xy[: len(xy) // 2]
        half = g.scene.px(6) * scene_lib.unit_vectors(g.rng.uniform(0, np.pi, len(rods)))
        g.clip.lines(np.stack([rods - half, rods + half], 1), 255, 3.0)
        g.clip.dots(xy[len(xy) // 2:], 4.5, 255, ring=True)


GREEN: dict[int, Callable[[Green], np.ndarray | None]] = {
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
