"""Decoding and checking one sample's four channel files into a uint8 array.

Two source layouts are understood:

* ``kaggle``: ``{Id}_{red,green,blue,yellow}.png``, 8-bit grayscale, all of one
  size (512 px in the competition).
* ``hpav18``: the HPA v18 "external data" downloads, ``{Id}_{colour}.jpg``,
  colour-coded RGB JPEGs of 1728-2048 px: the red file's R plane is the red
  channel, green's G, blue's B, and yellow is the rounded mean of R and G.

A sample either decodes completely or yields the reasons it cannot be trusted;
nothing is ever filled in with zeros.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from hpajax import classes

FORMATS: dict[str, str] = {"kaggle": "png", "hpav18": "jpg"}

# Exceptions Pillow raises for unreadable, truncated or hostile files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class BadImage(Exception):
    """One channel file cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """How to decode a sample: source layout, output size, expected source size."""

    format: str
    image_size: int
    source_size: int | None = None  # kaggle: every channel must have this size


def channel_paths(directory: str, sample_id: str, fmt: str) -> list[str]:
    """The four channel files of a sample, in channel order."""
    ext = FORMATS[fmt]
    return [f"{directory}/{sample_id}_{c}.{ext}" for c in classes.CHANNELS]


def header_size(path: str) -> tuple[int, int] | None:
    """Width and height from an image header (cheap), or None if unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except _DECODE_ERRORS:
        return None


def decode_sample(paths: list[str], spec: DecodeSpec) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
    """Decodes four channel files into uint8 [S, S, 4].

    Returns (array, []) or (None, [(file, why), ...]) listing every bad file.
    """
    planes, problems = [], []
    for path, channel in zip(paths, classes.CHANNELS):
        try:
            planes.append(_decode_channel(path, channel, spec))
        except BadImage as e:
            problems.append((path, str(e)))
    if problems:
        return None, problems
    sizes = {p.shape for p in planes}
    if len(sizes) > 1:
        return None, [(paths[0], f"channel sizes differ: {sorted(sizes)}")]
    return np.stack([_resize(p, spec.image_size) for p in planes], axis=-1), []


def _decode_channel(path: str, channel: str, spec: DecodeSpec) -> np.ndarray:
    """Decodes and checks one channel file into a 2-D uint8 plane."""
    try:
        with Image.open(path) as im:
            if spec.format == "kaggle":
                _check_gray(im)
            _check_size(im.size, spec)
            if spec.format == "kaggle":
                im.load()
                return np.asarray(im)
            return _colour_coded_plane(im, channel, spec.image_size)
    except _DECODE_ERRORS as e:
        raise BadImage(f"cannot decode: {e}") from None


def _check_size(size: tuple[int, int], spec: DecodeSpec) -> None:
    width, height = size
    if width != height:
        raise BadImage(f"not square: {width}x{height}")
    if spec.source_size is not None and width != spec.source_size:
        raise BadImage(f"wrong size {width}x{height}, expected "
                       f"{spec.source_size}x{spec.source_size}")
    if width < spec.image_size:
        raise BadImage(f"{width}x{height} is smaller than --image_size={spec.image_size}")


def _check_gray(im: Image.Image) -> None:
    if im.mode != "L":
        kind = {"I;16": "16-bit", "I;16B": "16-bit", "I": "32-bit"}.get(im.mode, im.mode)
        raise BadImage(f"{kind} image, expected 8-bit grayscale (mode L)")


def _colour_coded_plane(im: Image.Image, channel: str, image_size: int) -> np.ndarray:
    """The channel's signal from an HPA v18 colour-coded file."""
    if im.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below image_size.
        im.draft("RGB", (image_size, image_size))
    if im.mode == "L":
        im.load()
        return np.asarray(im)
    if im.mode != "RGB":
        raise BadImage(f"mode {im.mode}, expected an RGB (or 8-bit gray) JPEG")
    im.load()
    rgb = np.asarray(im)
    if channel == "yellow":
        r, g = rgb[..., 0].astype(np.uint16), rgb[..., 1].astype(np.uint16)
        return ((r + g + 1) >> 1).astype(np.uint8)
    return np.ascontiguousarray(rgb[..., "rgb".index(channel[0])])


def _resize(plane: np.ndarray, size: int) -> np.ndarray:
    """Area-averaging (box) resize, the right filter for downscaling micrographs."""
    if plane.shape == (size, size):
        return plane
    resized = Image.fromarray(plane).resize((size, size), Image.Resampling.BOX)
    return np.asarray(resized)
