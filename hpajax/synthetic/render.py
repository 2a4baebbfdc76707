"""One synthetic sample's four channels: references, green patterns, camera noise."""

from __future__ import annotations

import numpy as np

from hpajax import classes
from hpajax.synthetic import patterns
from hpajax.synthetic import scene as scene_lib

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


def _references(rng: np.random.Generator, s: scene_lib.Scene
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Red, blue and yellow signals of a scene, plus what green may reuse:
    the ER reticulum and the microtubule polylines."""
    microtubules = scene_lib.microtubules(rng, s)
    canvas = scene_lib.Canvas(s)
    canvas.lines(microtubules, 160, 1.0)
    perinuclear = np.exp((1 - s.rn) / np.float32(1.5))
    red = s.cyto * (0.7 * canvas.result() + 0.1 + 0.25 * perinuclear) + 0.08 * s.nucleus
    chromatin = 0.8 + 0.12 * scene_lib.smooth_noise(rng, s.size, s.px(5))
    blue = s.nucleus * chromatin * (1 - 0.45 * s.nucleoli)
    reticulum = 0.3 + 0.7 * scene_lib.reticulum(rng, s.size, s.px(7))
    er = s.cyto * np.exp((1 - s.rn) / np.float32(0.8)) * reticulum
    yellow = er + 0.25 * s.cyto + 0.1 * s.nucleus
    return red, blue, yellow, er, microtubules


def _green_signal(labels_row: np.ndarray, g: patterns.Green) -> np.ndarray:
    """The overlay of the patterns of the sample's classes."""
    s = g.scene
    green = np.zeros((s.size, s.size), np.float32)
    for c in np.flatnonzero(labels_row):
        field = patterns.GREEN[int(c)](g)
        if field is not None:
            green += field
    return green + g.clip.result() * s.inside + g.free.result()


def render_planes(labels_row: np.ndarray, image_size: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """The four uint8 [S, S] planes (red, green, blue, yellow) of one sample."""
    s = scene_lib.Scene(rng, image_size)
    red, blue, yellow, er, microtubules = _references(rng, s)
    canvases = scene_lib.Canvas(s), scene_lib.Canvas(s)  # clipped to the cells, free
    green = _green_signal(labels_row, patterns.Green(s, rng, microtubules, er, *canvases))
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
    check_image_size(image_size)
    return np.stack(render_planes(labels_row, image_size, rng), axis=-1)




def check_image_size(image_size: int) -> None:
    """ValueError unless ``image_size`` is an int >= 16 (room for a cell)."""
    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
