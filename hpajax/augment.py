"""On-device data augmentation of uint8 HPA batches, inside the jitted train step.

``augment(key, images, cfg)`` turns a uint8 batch [B, H, W, C] into float32
in [0, 1], as the seed paper feeds its network (``to_float`` does the same
for evaluation), and applies per sample, with no host-side Python, the ops
that ``cfg`` (the ``augment`` block of ``hpajax.config.base_config()``)
switches on, after an optional random crop (``crop_size``):

- rotation by an angle drawn from U[-max_angle, max_angle] degrees (Keras
  ``rotation_range``: the seed's 270 covers every orientation, [90, 270]
  twice as often as the rest; ``max_angle=180`` makes all equally likely);
- zoom by one factor z ~ U[zoom_range] for both axes (z > 1 magnifies);
- horizontal and vertical flips, each with probability 0.5;
- brightness: multiply every channel by one factor f ~ U[brightness_range],
  add one offset u ~ U[-brightness_shift, brightness_shift], clip to [0, 1].

Rotation, zoom and flips form one affine map about the image center per
sample, applied in a single bilinear pass (``sample_affine``); points that
map outside the image read 0, the dark background of HPA fields. Brightness
is applied after it. ``_brightness`` says how the seed's range is read.

With ``crop_size`` (``config.augment.crop``: train on e.g. 512 px crops of a
1024 px store, as the HPA 2019 winner did) each sample is first cut to a
``crop_size`` square at a uniformly random position (``random_crop``), and
the ops above act on the crop: resampling costs a crop's pixels, not the
store's, and rotation leaves its dark corners inside the model input as
without cropping (rotating first would fill them from outside the crop).

Randomness: ``jax.random.split(key, B)`` gives sample ``i`` its own key and
each op a fixed subkey of it, so the same (key, batch) gives the same output
whatever the device count or sharding, and switching one op off leaves the
others' draws unchanged. The crop offsets are split the same way from a key
of their own, ``fold_in(key, _CROP_STREAM)``: with cropping off, the output
is bit for bit what it was before cropping existed, and with it on the other
ops draw as without it.

Why a hand-written sampler: see BENCHMARKS.md, section "Measurements behind
the defaults".
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections

_UINT8_TO_UNIT = 1.0 / 255.0  # a multiply, not a divide: XLA may rewrite x / 255
# as x * (1 / 255) in one compiled context and not in another
_CROP_STREAM = 2  # fold_in data of the crop offsets' key (the train step's dropout uses 1)


def _check_uint8(images: jax.Array) -> None:
    """Refuses non-uint8 input, which ÷255 would silently turn into garbage."""
    if images.dtype != jnp.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")


def to_float(images: jax.Array) -> jax.Array:
    """uint8 images -> float32 in [0, 1] (÷255), the model's input scale."""
    _check_uint8(images)
    return images.astype(jnp.float32) * _UINT8_TO_UNIT


def affine_map(angle: jax.Array, zoom: jax.Array, flip_rows: jax.Array,
               flip_cols: jax.Array, size: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """The output-to-input map ``in = matrix @ out + offset`` of one sample.

    Coordinates are (row, col) pixel indices. The forward transform, about
    the image center ``c``, flips (``flip_rows`` mirrors top-bottom,
    ``flip_cols`` left-right), scales by ``zoom`` and rotates by ``angle``
    radians counterclockwise as displayed (``angle = pi/2`` is ``np.rot90``);
    the sampler needs its inverse, ``F R(-angle) / zoom``.
    """
    cos, sin = jnp.cos(angle) / zoom, jnp.sin(angle) / zoom
    rot_inv = jnp.stack([jnp.stack([cos, sin]), jnp.stack([-sin, cos])])
    flips = jnp.stack([jnp.where(flip_rows, -1.0, 1.0), jnp.where(flip_cols, -1.0, 1.0)])
    matrix = flips[:, None] * rot_inv
    center = (jnp.asarray(size, jnp.float32) - 1.0) / 2.0
    return matrix, center - matrix @ center


def sample_affine(image: jax.Array, matrix: jax.Array, offset: jax.Array) -> jax.Array:
    """Bilinear resampling of one image [H, W, C] at ``matrix @ out + offset``.

    Gathers the 4 neighbours of every output pixel from the flattened image,
    all channels at once; a neighbour outside the image counts as 0. Returns
    float32 in the input's units (0-255 for uint8). The gather uses
    ``mode="clip"``: ``jnp.take``'s default ``"fill"`` is much slower.
    """
    height, width, channels = image.shape
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                              jnp.arange(width, dtype=jnp.float32), indexing="ij")
    y = matrix[0, 0] * rows + matrix[0, 1] * cols + offset[0]
    x = matrix[1, 0] * rows + matrix[1, 1] * cols + offset[1]
    y0, x0 = jnp.floor(y), jnp.floor(x)
    fy, fx = y - y0, x - x0
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    flat = image.reshape(height * width, channels)
    out = jnp.zeros((height, width, channels), jnp.float32)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            index = jnp.clip(yy, 0, height - 1) * width + jnp.clip(xx, 0, width - 1)
            taps = jnp.take(flat, index, axis=0, mode="clip").astype(jnp.float32)
            out = out + jnp.where(inside, wy * wx, 0.0)[..., None] * taps
    return out


def _uses_affine(cfg: ml_collections.ConfigDict) -> bool:
    """Whether any geometric op is on; if none is, resampling is skipped."""
    return bool(cfg.rotate or cfg.zoom or cfg.hflip or cfg.vflip)


def _random_affine(key: jax.Array, cfg: ml_collections.ConfigDict,
                   size: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """One sample's random affine map; disabled ops contribute the identity."""
    k_angle, k_zoom, k_hflip, k_vflip = jax.random.split(key, 4)
    angle, zoom = jnp.float32(0.0), jnp.float32(1.0)
    flip_rows = flip_cols = jnp.bool_(False)
    if cfg.rotate:
        limit = math.radians(cfg.max_angle)
        angle = jax.random.uniform(k_angle, (), minval=-limit, maxval=limit)
    if cfg.zoom:
        lo, hi = cfg.zoom_range
        zoom = jax.random.uniform(k_zoom, (), minval=lo, maxval=hi)
    if cfg.hflip:
        flip_cols = jax.random.bernoulli(k_hflip)
    if cfg.vflip:
        flip_rows = jax.random.bernoulli(k_vflip)
    return affine_map(angle, zoom, flip_rows, flip_cols, size)


def _brightness(key: jax.Array, image: jax.Array,
                cfg: ml_collections.ConfigDict) -> jax.Array:
    """``clip(image * f + u, 0, 1)``, one f and u per sample, all channels alike.

    Keras ``brightness_range=(lo, hi)`` multiplies by f ~ U[lo, hi]. The
    seed's "0-0.5" taken literally would darken every training image by 75 %
    on average while evaluation images stay unchanged, so the default reads
    it as a change of up to +-0.5, f ~ U[0.5, 1.5] (``(0.0, 0.5)`` is the
    literal reading). Keras' stretch of each image to a maximum of 255 is
    left out: training inputs would differ from evaluation inputs. The seed
    used no additive shift, and on images with a mean of about 0.07 even
    0.05 would lift the black background to the level of cell signal, so
    ``brightness_shift`` defaults to 0.
    """
    k_scale, k_shift = jax.random.split(key)
    lo, hi = cfg.brightness_range
    scale = jax.random.uniform(k_scale, (), minval=lo, maxval=hi)
    shift = jax.random.uniform(k_shift, (), minval=-cfg.brightness_shift,
                               maxval=cfg.brightness_shift)
    return jnp.clip(image * scale + shift, 0.0, 1.0)


def random_crop(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """A ``size`` x ``size`` crop of each image [B, H, W, C], same dtype.

    Sample ``i`` draws its top-left corner from ``jax.random.split(key, B)[i]``,
    uniformly over all ``(H - size + 1) * (W - size + 1)`` positions, so the
    whole image can be seen.
    """
    height, width, channels = images.shape[1:]
    if not 0 < size <= min(height, width):
        raise ValueError(f"crop size {size} must be in [1, {min(height, width)}] "
                         f"for {height}x{width} images")
    limits = jnp.asarray([height - size + 1, width - size + 1])

    def crop_one(k: jax.Array, image: jax.Array) -> jax.Array:
        row, col = jax.random.randint(k, (2,), 0, limits)
        return jax.lax.dynamic_slice(image, (row, col, 0), (size, size, channels))

    return jax.vmap(crop_one)(jax.random.split(key, images.shape[0]), images)


def _augment_one(key: jax.Array, image: jax.Array,
                 cfg: ml_collections.ConfigDict) -> jax.Array:
    """Augments one uint8 image [H, W, C] into float32 [0, 1]."""
    k_affine, k_brightness = jax.random.split(key)
    if _uses_affine(cfg):
        matrix, offset = _random_affine(k_affine, cfg, image.shape[:2])
        out = sample_affine(image, matrix, offset) * _UINT8_TO_UNIT
    else:
        out = to_float(image)
    if cfg.brightness:
        out = _brightness(k_brightness, out, cfg)
    return out


def augment(key: jax.Array, images: jax.Array, cfg: ml_collections.ConfigDict,
            crop_size: int | None = None) -> jax.Array:
    """Randomly augments a uint8 batch [B, H, W, C] into float32 [0, 1].

    ``key`` is e.g. ``jax.random.fold_in(base_key, step)``; sample ``i`` uses
    ``jax.random.split(key, B)[i]``. ``cfg`` (``config.augment`` or any
    object with its attributes) and ``crop_size`` are read in Python at trace
    time, so they act as static configuration under ``jax.jit``. With
    ``crop_size`` the output is [B, crop_size, crop_size, C]: a random crop
    (``random_crop``) augmented with the same draws as an uncropped batch.
    """
    _check_uint8(images)
    if crop_size is not None:
        images = random_crop(jax.random.fold_in(key, _CROP_STREAM), images, crop_size)
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, image: _augment_one(k, image, cfg))(keys, images)
