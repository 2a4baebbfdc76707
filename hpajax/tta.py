"""Test-time augmentation: a model's probabilities reduced over fixed views of each batch.

``--tta=N`` evaluates every image in N exact transforms from the dihedral
group D4 (the rotations by multiples of 90 degrees and the mirrors), and,
when the stored image is larger than the model input (``config.augment.crop``),
in each crop of a fixed grid that covers the image (``crop_offsets``);
``--tta_reduce`` takes the mean or the max of the probabilities over all
views. Flips, rotations and crops are exact, so views work on any dtype.

Transform ``index = 4 t + 2 v + h`` transposes the image if t, then mirrors
it top-bottom if v and left-right if h:

    0 identity   1 hflip                     2 vflip                     3 rot180
    4 transpose  5 rot90 clockwise (rot270)  6 rot90 (``np.rot90``)      7 anti-transpose

The first N of them form a group for each N in 1, 2, 4, 8: N=2 adds the
horizontal flip, N=4 is the flips group, the training flips' (it needs no
transpose, so it also works on non-square views), N=8 all of D4. HPA fields
have no preferred orientation, so every transform is as valid as another.

Views are made one at a time in a ``jax.lax.map``: the model is traced and
compiled once whatever the number of views, and only one view's activations
are alive at a time. Stacking the views on the batch axis would call the model
once on V times the batch: larger matmuls, but V times the memory, and with
BatchNorm in inference mode the same result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

TTA_VIEWS = (1, 2, 4, 8)  # the allowed --tta
REDUCTIONS = ("mean", "max")  # the allowed --tta_reduce


def dihedral(images: jax.Array, index: int) -> jax.Array:
    """The ``index``-th transform (the module's order) of images [B, H, W, C]."""
    if not 0 <= index < 8:
        raise ValueError(f"dihedral transform index {index} is not in [0, 8)")
    if index & 4:
        images = jnp.swapaxes(images, 1, 2)
    if index & 2:
        images = jnp.flip(images, 1)
    if index & 1:
        images = jnp.flip(images, 2)
    return images


def crop_offsets(image_size: int, size: int) -> tuple[int, ...]:
    """Start positions of ``size`` px crops that cover a side of ``image_size`` px.

    The fewest that cover it, ``ceil(image_size / size)``, evenly spaced from
    0 to ``image_size - size`` (rounded down): one at 0 when the sizes are
    equal, else at least two, the first and last flush with the edges.
    """
    if not 0 < size <= image_size:
        raise ValueError(f"crop size {size} must be in [1, {image_size}]")
    count = -(-image_size // size)
    return tuple(i * (image_size - size) // max(count - 1, 1) for i in range(count))


def _view_table(shape: tuple[int, ...], n: int, crop_size: int | None
                ) -> tuple[tuple[int, int], list[tuple[int, int, int]]]:
    """The views' side (h, w) and every view's (row, col, transform) of images ``shape``.

    Crops come row-major, each in the first ``n`` transforms; without
    ``crop_size`` the one crop is the whole image.
    """
    if n not in TTA_VIEWS:
        raise ValueError(f"--tta={n}: choose one of {TTA_VIEWS}")
    _, height, width, _ = shape
    crop = (height, width) if crop_size is None else (crop_size, crop_size)
    if n == 8 and crop[0] != crop[1]:
        raise ValueError(f"--tta=8 transposes, which needs square views, not {crop[0]}x{crop[1]}")
    return crop, [(row, col, t) for row in crop_offsets(height, crop[0])
                  for col in crop_offsets(width, crop[1]) for t in range(n)]


def _view_maker(images: jax.Array, n: int, crop_size: int | None
                ) -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
    """Every view's (row, col, transform) [V, 3] and a function making a row's view,
    for ``jax.lax.map``."""
    crop, entries = _view_table(images.shape, n, crop_size)
    batch, channels = images.shape[0], images.shape[3]
    transforms = [functools.partial(dihedral, index=t) for t in range(n)]

    def make(entry: jax.Array) -> jax.Array:
        row, col, transform = entry
        cropped = jax.lax.dynamic_slice(images, (0, row, col, 0), (batch, *crop, channels))
        return jax.lax.switch(transform, transforms, cropped)

    return make, jnp.asarray(entries, jnp.int32)


def _unrolled_views(images: jax.Array, n: int, crop_size: int | None) -> list[jax.Array]:
    """The views of ``views``, one static slice and transform each (no loop, no switch)."""
    (h, w), entries = _view_table(images.shape, n, crop_size)
    crop = lambda row, col: jax.lax.slice_in_dim(  # noqa: E731
        jax.lax.slice_in_dim(images, row, row + h, axis=1), col, col + w, axis=2)
    return [dihedral(crop(row, col), t) for row, col, t in entries]


def views(images: jax.Array, n: int, crop_size: int | None = None) -> jax.Array:
    """Every view [V, B, s, s, C] of images [B, H, W, C], in ``predict_views``' order."""
    make, table = _view_maker(images, n, crop_size)
    return jax.lax.map(make, table)


def predict_views(fn: Callable[[jax.Array], jax.Array], images: jax.Array, n: int,
                  crop_size: int | None = None, reduce: str = "mean", *,
                  unrolled: bool = False) -> jax.Array:
    """``fn`` (images -> probabilities [B, K]) reduced by ``reduce`` over every view.

    ``n`` (``--tta``), ``crop_size`` and ``reduce`` (``--tta_reduce``) are read
    in Python, so they are static under ``jax.jit``. A single view (``n=1``,
    no crops) is ``fn(images)`` itself, the evaluation without TTA.
    ``unrolled`` traces ``fn`` once per view instead of looping over the views
    (the same values): the form exporters without loops or multi-way switches
    convert (``hpajax.export``).
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"--tta_reduce={reduce!r}: choose one of {REDUCTIONS}")
    if len(_view_table(images.shape, n, crop_size)[1]) == 1:
        return fn(images)
    if unrolled:
        probs = jnp.stack([fn(view) for view in _unrolled_views(images, n, crop_size)])
    else:
        make, table = _view_maker(images, n, crop_size)
        probs = jax.lax.map(lambda entry: fn(make(entry)), table)
    return probs.mean(axis=0) if reduce == "mean" else probs.max(axis=0)
