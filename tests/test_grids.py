"""Tests of the PNG image grids (hpajax.grids)."""

import numpy as np
import pytest
from PIL import Image

from hpajax import grids, synthetic

SIZE = 32


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """8 synthetic HPA-like samples, uint8 [8, 32, 32, 4]."""
    eye = np.eye(28, dtype=np.uint8)
    return np.stack([synthetic.render(eye[i], SIZE, np.random.default_rng(i))
                     for i in range(8)])


def grid_pixels(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("as_float", [False, True])
def test_save_grid(tmp_path, images, channels, as_float):
    tiles = images[:5, ..., :channels]
    tiles = tiles.astype(np.float32) / 255.0 if as_float else tiles
    path = grids.save_grid(tmp_path / "g" / "grid.png", tiles, num_cols=3,
                           labels=[f"t{i}" for i in range(5)])
    mode, pixels = grid_pixels(path)
    assert mode == "RGB" and pixels.shape == (2 * SIZE, 3 * SIZE, 3)
    assert pixels[:SIZE].mean() > 20  # stretched: visible, not black
    assert pixels[SIZE + 1:, 2 * SIZE + 1:].max() == 0  # the empty sixth tile


def test_save_grid_stretch_keeps_brightness_differences(tmp_path, images):
    tiles = np.stack([images[0] // 2, images[0]])
    _, pixels = grid_pixels(grids.save_grid(tmp_path / "grid.png", tiles))
    assert pixels[1:, SIZE + 1:].mean() > 1.5 * pixels[1:, 1:SIZE].mean()


def test_save_augmentation_grid_pairs_each_original_with_its_augmented_version(tmp_path, images):
    originals = images[:6]
    augmented = originals[:, ::-1].astype(np.float32) / 255.0  # stands in for augment's output
    labels = np.eye(28, dtype=np.uint8)[:6]
    mode, pixels = grid_pixels(grids.save_augmentation_grid(tmp_path / "aug.png", originals,
                                                            augmented, labels))
    assert mode == "RGB" and pixels.shape == (2 * SIZE, 8 * SIZE, 3)  # 4 pairs per row
    assert pixels.mean() > 10
    same = grid_pixels(grids.save_augmentation_grid(tmp_path / "same.png", originals,
                                                    originals, None))[1]
    below_text = slice(SIZE + SIZE // 2, 2 * SIZE)
    np.testing.assert_array_equal(same[below_text, 1:SIZE], same[below_text, SIZE + 1:2 * SIZE])
