"""Tests of the on-device augmentation (hpajax.augment) and tools/augmentation_grid.py."""

import math
import subprocess

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import PYTHON, REPO
from jax.scipy import ndimage
from PIL import Image

from hpajax import augment, synthetic
from hpajax.config import base_config
from hpajax.data.store import write_store

SIZE = 32
OPS = ("rotate", "zoom", "brightness", "hflip", "vflip")


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """8 synthetic HPA-like samples, uint8 [8, 32, 32, 4]."""
    eye = np.eye(28, dtype=np.uint8)
    return np.stack([synthetic.render(eye[i], SIZE, np.random.default_rng(i))
                     for i in range(8)])


def only(*ops, **fields):
    """The default config with only ``ops`` switched on, then ``fields`` set."""
    cfg = base_config().augment
    for op in OPS:
        cfg[op] = op in ops
    cfg.update(fields)
    return cfg


AUGMENT = jax.jit(augment.augment, static_argnums=(2, 3))  # compiled once per config and shape
CROP = jax.jit(augment.random_crop, static_argnums=2)


def run(images, cfg, step=0, crop_size=None):
    """Jitted ``augment`` on a batch with the key of train step ``step``, as NumPy."""
    key = jax.random.fold_in(jax.random.key(0), step)
    return np.asarray(AUGMENT(key, images, ml_collections.FrozenConfigDict(cfg), crop_size))


def crop_origins(images, crops):
    """The top-left corner (r, c) of each crop in its image, found by trying every one."""
    size = crops.shape[1]
    height, width = images.shape[1:3]
    origins = []
    for image, crop in zip(images, crops):
        found = [(r, c) for r in range(height - size + 1) for c in range(width - size + 1)
                 if np.array_equal(image[r:r + size, c:c + size], crop)]
        assert len(found) == 1, found  # random images: each window is unique
        origins.append(found[0])
    return origins


def rotate(image, degrees, zoom=1.0, flip_rows=False, flip_cols=False):
    """``sample_affine`` of one uint8 image with an explicit transform, in [0, 1]."""
    matrix, offset = augment.affine_map(jnp.float32(math.radians(degrees)), jnp.float32(zoom),
                                        flip_rows, flip_cols, image.shape[:2])
    return np.asarray(augment.sample_affine(image, matrix, offset)) / 255.0


def test_all_off_is_to_float(images):
    out = run(images, only())
    np.testing.assert_array_equal(out, np.asarray(augment.to_float(images)))
    np.testing.assert_allclose(out, images / 255.0, rtol=1e-6)


def test_dtype_shape_and_range(images):
    out = run(images, base_config().augment)
    assert out.dtype == np.float32 and out.shape == images.shape
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_refuses_float_input(images):
    with pytest.raises(ValueError, match="uint8"):
        augment.augment(jax.random.key(0), images.astype(np.float32), base_config().augment)
    with pytest.raises(ValueError, match="uint8"):
        augment.to_float(images.astype(np.float32))


def test_deterministic_per_key_and_jit_agrees(images):
    cfg = base_config().augment
    first = run(images, cfg, step=0)
    np.testing.assert_array_equal(first, run(images, cfg, step=0))
    assert not np.allclose(first, run(images, cfg, step=1))
    eager = augment.augment(jax.random.fold_in(jax.random.key(0), 0), images, cfg)
    np.testing.assert_allclose(np.asarray(eager), first, atol=1e-5)


def test_samples_get_independent_transforms(images):
    twins = np.stack([images[0], images[0]])
    out = run(twins, base_config().augment)
    assert np.abs(out[0] - out[1]).mean() > 0.01


def test_disabled_op_leaves_other_draws_unchanged(images):
    rotated = run(images, only("rotate"))
    neutral = only("rotate", "brightness", brightness_range=(1.0, 1.0), brightness_shift=0.0)
    np.testing.assert_allclose(run(images, neutral), rotated, atol=1e-6)


def test_rotation_by_90_is_rot90(images):
    expected = np.rot90(images[0].astype(np.float32) / 255.0)  # counterclockwise
    np.testing.assert_allclose(rotate(images[0], 90.0), expected, atol=1e-5)


def test_rotation_fills_outside_with_zero():
    white = np.full((SIZE, SIZE, 4), 255, np.uint8)
    out = rotate(white, 45.0)
    np.testing.assert_allclose(out[SIZE // 2, SIZE // 2], 1.0, atol=1e-6)
    np.testing.assert_array_equal(out[[0, 0, -1, -1], [0, -1, 0, -1]], 0.0)


def test_sampler_matches_map_coordinates(images):
    """The gather sampler equals jax.scipy.ndimage.map_coordinates(order=1)."""
    image = images[1]
    matrix, offset = augment.affine_map(jnp.float32(0.7), jnp.float32(1.13), True, False,
                                        image.shape[:2])
    rows, cols = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    coords = np.tensordot(np.asarray(matrix), np.stack([rows, cols]), axes=1)
    coords = coords + np.asarray(offset)[:, None, None]
    reference = np.stack([ndimage.map_coordinates(image[..., c].astype(np.float32), list(coords),
                                                  order=1, mode="constant", cval=0.0)
                          for c in range(4)], axis=-1)
    np.testing.assert_allclose(np.asarray(augment.sample_affine(image, matrix, offset)),
                               reference, atol=1e-3)  # 0-255 units: ~4e-6 in [0, 1]


@pytest.mark.parametrize("op, flip", [("hflip", lambda x: x[:, ::-1]),
                                      ("vflip", lambda x: x[::-1])])
def test_flip_alone_is_exact_mirror_or_identity(images, op, flip):
    batch = np.concatenate([images, images])
    out = run(batch, only(op))
    base = np.asarray(augment.to_float(batch))
    flipped = [np.array_equal(o, flip(b)) for o, b in zip(out, base)]
    kept = [np.array_equal(o, b) for o, b in zip(out, base)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_zoom_magnifies_about_the_center():
    size = 33  # odd, so the center is a pixel
    image = np.zeros((1, size, size, 4), np.uint8)
    image[0, 16, 16] = 200  # center
    image[0, 16, 20] = 100  # 4 px right of it
    image[0, 13, 16] = 50  # 3 px above it
    out = run(image, only("zoom", zoom_range=(2.0, 2.0)))[0]
    np.testing.assert_allclose(out[16, 16], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(out[16, 24], 100 / 255, atol=1e-6)
    np.testing.assert_allclose(out[10, 16], 50 / 255, atol=1e-6)
    np.testing.assert_allclose(out[16, 23], 50 / 255, atol=1e-6)  # input col 19.5: bilinear
    np.testing.assert_array_equal(out[16, 22], 0.0)  # input col 19


def test_brightness_scale_in_range_and_same_for_all_channels(images):
    batch = np.concatenate([images, images])
    base = batch.astype(np.float32) / 255.0
    out = run(batch, only("brightness", brightness_range=(0.5, 1.5), brightness_shift=0.0))
    lit = (base > 0.05) & (base < 0.6)  # no clipping at 1.5x
    factors = [o[m] / b[m] for o, b, m in zip(out, base, lit)]
    assert all(np.ptp(f) < 1e-5 and 0.5 <= f[0] <= 1.5 for f in factors)
    means = out.mean(axis=(1, 2, 3)) / base.mean(axis=(1, 2, 3))
    assert means.min() < 0.9 and means.max() > 1.1


def test_brightness_shift_in_range_and_clipped(images):
    base = images.astype(np.float32) / 255.0
    out = run(images, only("brightness", brightness_range=(1.0, 1.0), brightness_shift=0.1))
    interior = (base > 0.1) & (base < 0.9)
    shifts = [o[m] - b[m] for o, b, m in zip(out, base, interior)]
    assert all(np.ptp(s) < 1e-5 and -0.1 <= s[0] <= 0.1 for s in shifts)
    assert out.min() >= 0.0 and out.max() <= 1.0
    bright = run(images, only("brightness", brightness_range=(20.0, 20.0)))
    assert bright.max() == 1.0 and bright.min() >= 0.0


def random_images(shape, seed=0):
    """Uniform random uint8 images, in which no two windows are alike."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_random_crop_is_a_window_of_its_image():
    images = random_images((6, 9, 7, 2))  # not square: both sides' limits
    crops = np.asarray(CROP(jax.random.key(0), images, 4))
    assert crops.shape == (6, 4, 4, 2) and crops.dtype == np.uint8
    origins = crop_origins(images, crops)
    assert all(0 <= r <= 5 and 0 <= c <= 3 for r, c in origins)
    assert len(set(origins)) > 1  # each sample its own offset


def test_random_crop_offsets_cover_every_position_uniformly():
    """400 samples of one image: all 4 x 3 corners occur, each about equally often."""
    images = np.repeat(random_images((1, 6, 5, 1)), 400, axis=0)
    origins = crop_origins(images, np.asarray(CROP(jax.random.key(1), images, 3)))
    counts = np.zeros((4, 3))
    for r, c in origins:
        counts[r, c] += 1
    expected = 400 / counts.size
    assert counts.min() > 0.5 * expected and counts.max() < 1.5 * expected


def test_random_crop_deterministic_per_key():
    images = random_images((4, 8, 8, 1))
    first = np.asarray(CROP(jax.random.key(0), images, 3))
    np.testing.assert_array_equal(first, np.asarray(CROP(jax.random.key(0), images, 3)))
    assert not np.array_equal(first, np.asarray(CROP(jax.random.key(1), images, 3)))
    np.testing.assert_array_equal(first, np.asarray(augment.random_crop(jax.random.key(0),
                                                                        images, 3)))  # eager


@pytest.mark.parametrize("size", [0, 8])
def test_random_crop_refuses_bad_size(size):
    with pytest.raises(ValueError, match="crop size"):
        augment.random_crop(jax.random.key(0), random_images((1, 9, 7, 1)), size)


def test_crop_to_full_size_is_bit_identical_to_no_crop(images):
    """The crop draws from its own key: every other op draws as without cropping."""
    cfg = base_config().augment
    np.testing.assert_array_equal(run(images, cfg, crop_size=SIZE), run(images, cfg))


def test_augment_crops_then_augments_the_crop(images):
    """Cropped output = the uncropped augmentation (same key) of the windows it chose."""
    cropped = run(images, only(), crop_size=20)
    assert cropped.shape == (8, 20, 20, 4)
    origins = crop_origins(images, np.round(cropped * 255).astype(np.uint8))
    windows = np.stack([image[r:r + 20, c:c + 20] for image, (r, c) in zip(images, origins)])
    cfg = base_config().augment
    np.testing.assert_allclose(run(images, cfg, crop_size=20), run(windows, cfg), atol=1e-6)


def test_augmentation_grid_tool(tmp_path, images):
    """The tool draws each of a store's first samples beside its augmented version."""
    labels = np.eye(28, dtype=np.uint8)[:8]
    write_store(tmp_path / "st", images, [f"s{i}" for i in range(8)], labels)
    out = tmp_path / "aug.png"
    r = subprocess.run([PYTHON, str(REPO / "tools" / "augmentation_grid.py"),
                        f"--store={tmp_path / 'st'}", f"--output={out}", "--num_samples=6",
                        "--config=experiments/configs/tiny.py", "--config.augment.zoom=False"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"wrote {out}" in r.stdout
    with Image.open(out) as im:
        mode, pixels = im.mode, np.asarray(im)
    assert mode == "RGB" and pixels.shape == (2 * SIZE, 8 * SIZE, 3)  # 4 pairs per row
    assert pixels.mean() > 10
