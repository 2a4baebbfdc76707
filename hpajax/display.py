"""HPA display colors for PNGs, in NumPy only (no JAX), shared by grids and figures.

HPA images have four stains; people look at them as one RGB picture in which
the yellow ER channel is added to red and green (so it shows as yellow), and
HPA fields are dark, so they are brightened before being shown.
"""

from __future__ import annotations

import numpy as np

DISPLAY_PERCENTILE = 99.5  # composite value shown as full white by stretch_to_uint8


def composite_rgb(images: np.ndarray) -> np.ndarray:
    """HPA display colors of [..., C]: R = red + yellow, G = green + yellow, B = blue.

    ``images`` have 3 channels (already RGB, returned as they are) or 4 (red,
    green, blue, yellow, the order of ``hpajax.classes.CHANNELS``). Integer
    input is summed in float32 so that uint8 values cannot wrap around.
    """
    images = np.asarray(images)
    if images.shape[-1] == 3:
        return images
    if images.shape[-1] == 4:
        if not np.issubdtype(images.dtype, np.floating):
            images = images.astype(np.float32)
        red, green, blue, yellow = np.moveaxis(images, -1, 0)
        return np.stack([red + yellow, green + yellow, blue], axis=-1)
    raise ValueError(f"expected 3 or 4 channels, got {images.shape[-1]}")


def stretch_to_uint8(rgb: np.ndarray) -> np.ndarray:
    """uint8 display image: one gain for the whole array maps its 99.5th percentile to white.

    HPA fields are dark (mean ~0.07), so they need brightening to be seen. A
    single gain for all images passed together, rather than one per image,
    keeps brightness differences between them visible. ``rgb`` is float in
    [0, 1] (values above 1 clip to white).
    """
    white = max(float(np.percentile(rgb, DISPLAY_PERCENTILE)), 1.0 / 255.0)
    return np.round(np.clip(rgb / white, 0.0, 1.0) * 255.0).astype(np.uint8)
