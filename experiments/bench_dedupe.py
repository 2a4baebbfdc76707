"""How well hpajax.data.dedupe's signatures tell near-copies from distinct fields.

Renders 2N synthetic fields at 256 px: N originals, stored at 128 px, and N
distinct fields. Each original gets four near-copies (quality, gain and gamma
drawn once per original):

  resized_96   128 px -> 96 px, JPEG quality 70-90, gain 0.8-1.25; stored at 96 px
  resized_128  the same resized back to 128 px (bilinear)
  source_80    256 px source, JPEG quality 70-90, gain and gamma 0.8-1.25; stored at 80 px
  harsh_64     128 px -> 64 px, JPEG quality 50, gain and gamma 0.8-1.25; stored at 64 px

For each signature (16 or 32 px; all four channels, red+blue+yellow or green)
prints one JSON line: the worst score of a copy with its original, the best and
99.99th-percentile score of a distinct pair (each distinct field and each copy
against every other original), and the fraction of copies whose best match is
their own original.

  .venv/bin/python experiments/bench_dedupe.py [--num_samples=300]
"""

import io
import json
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from absl import app, flags
from PIL import Image

from hpajax import classes, synthetic
from hpajax.data import dedupe

_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 300, "Originals, and as many distinct fields.")
SOURCE_SIZE, STORE_SIZE = 256, 128
CHANNEL_SETS = (classes.CHANNELS, dedupe.SIGNATURE_CHANNELS, ("green",))


class Distortion(NamedTuple):
    quality: int  # JPEG
    gain: float
    gamma: float


def per_plane(image: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """``fn`` applied to each channel of uint8 [S, S, C] as a grayscale image, restacked."""
    return np.stack([np.asarray(fn(Image.fromarray(image[..., c])))
                     for c in range(image.shape[-1])], -1)


def resize(image: np.ndarray, size: int, resample=Image.Resampling.BOX) -> np.ndarray:
    return per_plane(image, lambda plane: plane.resize((size, size), resample))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Each channel JPEG-compressed as grayscale and decoded."""
    def roundtrip(plane: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        plane.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer)  # reads from the start
    return per_plane(image, roundtrip)


def gain(image: np.ndarray, g: float, gamma: float = 1.0) -> np.ndarray:
    x = (image.astype(np.float32) / 255.0) ** gamma * 255.0 * g
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def resized_96(original: np.ndarray, source: np.ndarray, d: Distortion) -> np.ndarray:
    return gain(jpeg(resize(original, 96), d.quality), d.gain)


def resized_128(original: np.ndarray, source: np.ndarray, d: Distortion) -> np.ndarray:
    return resize(resized_96(original, source, d), STORE_SIZE, Image.Resampling.BILINEAR)


def source_80(original: np.ndarray, source: np.ndarray, d: Distortion) -> np.ndarray:
    return resize(gain(jpeg(source, d.quality), d.gain, d.gamma), 80)


def harsh_64(original: np.ndarray, source: np.ndarray, d: Distortion) -> np.ndarray:
    return gain(jpeg(resize(original, 64), 50), d.gain, d.gamma)


COPY_KINDS = (resized_96, resized_128, source_80, harsh_64)


def render(n: int) -> np.ndarray:
    """uint8 [n, 256, 256, 4] synthetic fields, seeded as when dedupe's constants were chosen."""
    labels = synthetic.sample_labels(n, seed=0)
    return np.stack([synthetic.render(labels[i], SOURCE_SIZE, np.random.default_rng([7, i]))
                     for i in range(n)])


def measure(originals: np.ndarray, distinct: np.ndarray, copies: list[np.ndarray],
            size: int, channels: tuple[str, ...]) -> dict:
    """Copy and distinct-pair scores of one signature."""
    index = [classes.CHANNELS.index(c) for c in channels]

    def sign(images: np.ndarray) -> np.ndarray:
        return dedupe.signatures(np.ascontiguousarray(images[..., index]), size)

    known = sign(originals).T
    scores = np.stack([sign(c) @ known for c in copies])  # [kinds, N copies, N originals]
    own = np.eye(len(originals), dtype=bool)
    pairs = np.concatenate([(sign(distinct) @ known).ravel(), scores[:, ~own].ravel()])
    worst = scores[:, own].min(1)
    return {"bench": "dedupe", "signature": f"{size} px {'+'.join(channels)}",
            "dims": known.shape[0], "distinct_pairs": pairs.size,
            "worst_copy": round(float(worst.min()), 3),
            "worst_kind": COPY_KINDS[int(worst.argmin())].__name__,
            "best_distinct": round(float(pairs.max()), 3),
            "p9999_distinct": round(float(np.quantile(pairs, 0.9999)), 3),
            "top1": round(float((scores.argmax(-1) == np.arange(len(originals))).mean()), 4)}


def main(argv: Sequence[str]) -> None:
    del argv
    n = _NUM_SAMPLES.value
    sources = render(2 * n)
    originals, distinct = (np.stack([resize(x, STORE_SIZE) for x in part])
                           for part in (sources[:n], sources[n:]))
    rng = np.random.default_rng(0)
    distortions = [Distortion(int(rng.uniform(70, 90)), *rng.uniform(0.8, 1.25, 2))
                   for _ in range(n)]
    copies = [np.stack([kind(originals[i], sources[i], d) for i, d in enumerate(distortions)])
              for kind in COPY_KINDS]
    for size in (16, 32):
        for channels in CHANNEL_SETS:
            print(json.dumps(measure(originals, distinct, copies, size, channels)), flush=True)


if __name__ == "__main__":
    app.run(main)
