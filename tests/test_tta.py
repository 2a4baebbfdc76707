"""Tests of the test-time augmentation views (hpajax.tta), against NumPy transforms."""

import itertools

import jax
import numpy as np
import pytest

from hpajax import tta

# The module's documented order, written independently with NumPy on [B, H, W, C].
NUMPY_TRANSFORMS = (
    lambda x: x,
    lambda x: np.flip(x, 2),  # hflip: left-right
    lambda x: np.flip(x, 1),  # vflip: top-bottom
    lambda x: np.rot90(x, 2, axes=(1, 2)),
    lambda x: np.swapaxes(x, 1, 2),  # transpose
    lambda x: np.rot90(x, -1, axes=(1, 2)),  # clockwise
    lambda x: np.rot90(x, 1, axes=(1, 2)),  # counterclockwise
    lambda x: np.rot90(np.swapaxes(x, 1, 2), 2, axes=(1, 2)),  # anti-transpose
)
SIDE, CROP = 10, 4
CROP_STARTS = (0, 3, 6)  # ceil(10 / 4) = 3 crops of 4 px, evenly from 0 to 6


def random_images(shape, seed=0):
    """Uniform random uint8 images: no symmetry, so every transform changes them."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def linear_sigmoid(size, channels=2, classes=28):
    """A fixed random linear map of the flattened float image, then a sigmoid: [B, 28]."""
    weights = np.random.default_rng(1).normal(size=(size * size * channels, classes))
    weights = (weights / np.sqrt(weights.shape[0])).astype(np.float32)  # logits ~ 0.6
    return lambda x: jax.nn.sigmoid(x.reshape(x.shape[0], -1) @ weights)


def numpy_views(images, n, crop_size):
    """Every view, one by one with NumPy slicing and transforms, crops row-major."""
    starts = (0,) if crop_size is None else CROP_STARTS
    size = crop_size or images.shape[1]
    return [NUMPY_TRANSFORMS[t](images[:, r:r + size, c:c + size])
            for r, c in itertools.product(starts, starts) for t in range(n)]


@pytest.mark.parametrize("index", range(8))
def test_dihedral_matches_numpy(index):
    images = random_images((2, 5, 5, 3))
    np.testing.assert_array_equal(np.asarray(tta.dihedral(images, index)),
                                  NUMPY_TRANSFORMS[index](images))


def test_eight_transforms_of_an_asymmetric_image_are_distinct():
    out = np.asarray(tta.views(random_images((1, 5, 5, 1)), 8))
    assert all(not np.array_equal(a, b) for a, b in itertools.combinations(out, 2))


@pytest.mark.parametrize("n", tta.TTA_VIEWS)
@pytest.mark.parametrize("crop_size", [None, CROP])
def test_views_in_documented_order(n, crop_size):
    images = random_images((2, SIDE, SIDE, 2))
    out = np.asarray(jax.jit(tta.views, static_argnums=(1, 2))(images, n, crop_size))
    expected = numpy_views(images, n, crop_size)
    assert out.dtype == np.uint8 and out.shape == (len(expected), *expected[0].shape)
    np.testing.assert_array_equal(out, np.stack(expected))


def test_non_square_image_with_the_flips_group():
    images = random_images((2, 6, 5, 1))
    np.testing.assert_array_equal(np.asarray(tta.views(images, 4)),
                                  np.stack([NUMPY_TRANSFORMS[t](images) for t in range(4)]))
    with pytest.raises(ValueError, match="square"):
        tta.views(images, 8)


# Every n with and without crops, each reduction in half of them (each case compiles anew).
@pytest.mark.parametrize("n, crop_size, reduce", [
    (n, crop, tta.REDUCTIONS[(i + (crop is None)) % 2])
    for crop in (None, CROP) for i, n in enumerate(tta.TTA_VIEWS)])
def test_predict_views_in_jit_equals_one_by_one(n, crop_size, reduce):
    images = random_images((3, SIDE, SIDE, 2)).astype(np.float32) / 255
    fn = linear_sigmoid(crop_size or SIDE)
    predict = jax.jit(lambda x: tta.predict_views(fn, x, n, crop_size, reduce))
    probs = np.stack([np.asarray(fn(view)) for view in numpy_views(images, n, crop_size)])
    expected = probs.mean(axis=0) if reduce == "mean" else probs.max(axis=0)
    np.testing.assert_allclose(np.asarray(predict(images)), expected, rtol=0, atol=1e-6)


def test_views_change_the_prediction():
    """The test function tells views apart, so a wrong transform would fail the test above."""
    images = random_images((3, SIDE, SIDE, 2)).astype(np.float32) / 255
    fn = linear_sigmoid(SIDE)
    probs = [np.asarray(fn(view)) for view in numpy_views(images, 8, None)]
    assert min(np.abs(a - b).max() for a, b in itertools.combinations(probs, 2)) > 1e-3


def test_crop_offsets_cover_every_pixel():
    for image_size, size in ((s, c) for s in range(1, 41) for c in range(1, s + 1)):
        offsets = tta.crop_offsets(image_size, size)
        assert offsets == tta.crop_offsets(image_size, size)  # deterministic
        assert len(offsets) == -(-image_size // size) and offsets == tuple(sorted(offsets))
        assert offsets[0] == 0 and offsets[-1] == image_size - size
        covered = np.zeros(image_size, bool)
        for start in offsets:
            covered[start:start + size] = True
        assert covered.all()


def test_crop_offsets_examples():
    assert tta.crop_offsets(512, 512) == (0,)
    assert tta.crop_offsets(1024, 512) == (0, 512)
    assert tta.crop_offsets(600, 512) == (0, 88)
    assert tta.crop_offsets(SIDE, CROP) == CROP_STARTS


def test_refuses_bad_arguments():
    images = random_images((1, SIDE, SIDE, 2))
    fn = linear_sigmoid(SIDE)
    with pytest.raises(ValueError, match="--tta=3"):
        tta.predict_views(fn, images, 3)
    with pytest.raises(ValueError, match="--tta_reduce='median'"):
        tta.predict_views(fn, images, 2, reduce="median")
    with pytest.raises(ValueError, match="crop size"):
        tta.views(images, 1, SIDE + 1)
    with pytest.raises(ValueError, match="crop size"):
        tta.crop_offsets(SIDE, 0)
    with pytest.raises(ValueError, match="index"):
        tta.dihedral(images, 8)
