"""Report figures (hpajax.figures) and the display helpers they share with augment."""

import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import PYTHON, REPO
from hpajax import display, figures
from hpajax.classes import CLASS_NAMES

C = len(CLASS_NAMES)
GREEN, ORANGE, RED = (44, 160, 44), (255, 127, 14), (214, 39, 40)  # the montage's bar colors

needs_matplotlib = pytest.mark.skipif(not figures.plotting_available(),
                                      reason="matplotlib is not installed")


def png(path):
    """(mode, width, height, RGB pixels [H, W, 3]) of a written PNG."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.mode, im.width, im.height, np.asarray(im.convert("RGB"))


def has_color(pixels, rgb):
    return bool(np.all(pixels == rgb, axis=-1).any())


# --- display -------------------------------------------------------------------------------

def test_composite_rgb_adds_yellow_to_red_and_green():
    red, green, blue, yellow = 0.1, 0.2, 0.3, 0.4
    images = np.broadcast_to(np.array([red, green, blue, yellow], np.float32), (2, 3, 3, 4))
    rgb = display.composite_rgb(images)
    assert rgb.shape == (2, 3, 3, 3)
    np.testing.assert_allclose(rgb[0, 0, 0], [red + yellow, green + yellow, blue])
    three = np.zeros((1, 2, 2, 3), np.float32)
    assert display.composite_rgb(three) is three
    wide = display.composite_rgb(np.full((1, 1, 4), 200, np.uint8))
    np.testing.assert_array_equal(wide[0, 0], [400, 400, 200])  # no uint8 wrap-around
    with pytest.raises(ValueError, match="3 or 4 channels"):
        display.composite_rgb(np.zeros((1, 2, 2, 5)))


def test_stretch_to_uint8_maps_high_percentile_to_white():
    rgb = np.linspace(0.0, 0.2, 1000, dtype=np.float32).reshape(10, 100)
    out = display.stretch_to_uint8(rgb)
    assert out.dtype == np.uint8 and out[0, 0] == 0 and out[-1, -1] == 255
    assert 120 < out[5, 0] < 135  # the middle value lands near half of white
    assert display.stretch_to_uint8(np.zeros((2, 2))).max() == 0  # black stays black


# --- import behaviour (subprocesses: a clean sys.modules) ------------------------------------

def run_python(code):
    proc = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_pulls_in_neither_jax_nor_matplotlib():
    out = run_python(
        "import sys, hpajax.figures\n"
        "heavy = ('jax', 'flax', 'tensorstore', 'matplotlib')\n"
        "print(sorted(m for m in heavy if m in sys.modules))")
    assert out.strip() == "[]"


def test_without_matplotlib_figures_raise_install_hint():
    out = run_python(
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "from hpajax import figures\n"
        "print(figures.plotting_available())\n"
        "try:\n"
        "    records = [{'step': 1, 'split': 'train', 'loss': 1.0}]\n"
        "    figures.training_curves_figure('unused.png', records)\n"
        "except ImportError as error:\n"
        "    print('ImportError:', error)\n")
    available, error = out.strip().splitlines()
    assert available == "False"
    assert error.startswith("ImportError:") and "hpajax[plots]" in error
    assert not (REPO / "unused.png").exists()


# --- ROC ------------------------------------------------------------------------------------

def roc_curves():
    fpr = np.array([0.0, 0.1, 0.4, 1.0])
    curves = [(fpr, np.array([0.0, 0.6, 0.9, 1.0]), 0.81 + i / 1000) for i in range(C)]
    curves[8] = curves[27] = None  # e.g. no positives of these classes in a small split
    return curves


@needs_matplotlib
def test_roc_figure(tmp_path):
    path = figures.roc_figure(tmp_path / "new" / "roc.png", roc_curves(), CLASS_NAMES)
    assert path == tmp_path / "new" / "roc.png"
    mode, width, height, pixels = png(path)
    assert mode == "RGBA" and width > height > 500  # 7 columns x 4 rows
    assert pixels.std() > 10  # not a blank canvas


def test_roc_figure_rejects_bad_curves(tmp_path):
    curves = roc_curves()
    with pytest.raises(ValueError, match="one curve per class"):
        figures.roc_figure(tmp_path / "roc.png", curves[:-1], CLASS_NAMES)
    curves[3] = (np.zeros(4), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"curves\[3\] tpr must have shape \[4\], got \[3\]"):
        figures.roc_figure(tmp_path / "roc.png", curves, CLASS_NAMES)
    assert not (tmp_path / "roc.png").exists()


# --- training curves ------------------------------------------------------------------------

def metric_records(with_val):
    records = [{"step": s, "split": "train", "epoch": s // 20, "lr": 1e-3, "loss": 1.0 / (1 + s)}
               for s in range(10, 101, 10)]
    records.append({"step": 50, "split": "checkpoint", "params_sha256": "ab" * 32})
    if with_val:
        records += [{"step": s, "split": "val", "loss": 0.5, "macro_f1": s / 200,
                     "weighted_f1": s / 150} for s in (50, 100)]
    return records


@needs_matplotlib
@pytest.mark.parametrize("with_val", [True, False])
def test_training_curves_figure(tmp_path, with_val):
    path = figures.training_curves_figure(tmp_path / "curves.png", metric_records(with_val))
    mode, width, height, pixels = png(path)
    assert mode == "RGBA" and width > 2 * height > 500 and pixels.std() > 10


def test_training_curves_figure_needs_train_or_val_records(tmp_path):
    with pytest.raises(ValueError, match="no 'train' or 'val'"):
        figures.training_curves_figure(tmp_path / "c.png",
                                       [{"step": 5, "split": "checkpoint"}])


# --- per-class F1 bars ----------------------------------------------------------------------

@needs_matplotlib
def test_f1_bars_figure(tmp_path):
    rng = np.random.default_rng(0)
    path = figures.f1_bars_figure(tmp_path / "f1.png", CLASS_NAMES, rng.random(C),
                                  rng.random(C), rng.integers(1, 5000, C))
    mode, width, height, pixels = png(path)
    assert mode == "RGBA" and height > width > 500  # one row of bars per class
    assert has_color(pixels, GREEN)  # the tuned bars


def test_f1_bars_figure_rejects_wrong_lengths(tmp_path):
    with pytest.raises(ValueError, match=r"f1_tuned must have shape \[28\], got \[27\]"):
        figures.f1_bars_figure(tmp_path / "f1.png", CLASS_NAMES, np.zeros(C), np.zeros(C - 1),
                               np.ones(C))


# --- prediction montage ---------------------------------------------------------------------

def montage_inputs(num, channels):
    images = np.zeros((num, 16, 16, channels), np.uint8)
    images[..., -1] = 200  # a yellow field (4 channels) or a blue one (3 channels)
    probs = np.full((num, C), 0.1)
    labels = np.zeros((num, C), np.uint8)
    probs[:, 0], labels[:, 0] = 0.9, 1  # true, predicted
    probs[:, 1], labels[:, 1] = 0.3, 1  # true, missed
    probs[:, 2] = 0.8  # false positive
    return images, probs, labels, np.full(C, 0.5), [f"id-{i}" for i in range(num)]


@needs_matplotlib
@pytest.mark.parametrize("channels, field", [(4, (255, 255, 0)), (3, (0, 0, 255))])
def test_prediction_montage(tmp_path, channels, field):
    path = figures.prediction_montage(tmp_path / "m.png", *montage_inputs(2, channels),
                                      title="best predictions")
    mode, width, height, pixels = png(path)
    assert mode == "RGBA" and width > height > 300
    assert has_color(pixels, field)  # the composite, stretched to full brightness
    assert all(has_color(pixels, c) for c in (GREEN, ORANGE, RED))  # hit, missed, false pos.


@needs_matplotlib
def test_prediction_montage_single_row(tmp_path):
    path = figures.prediction_montage(tmp_path / "one.png", *montage_inputs(1, 4), title="one")
    assert png(path)[0] == "RGBA"


@pytest.mark.parametrize("change, message", [
    (lambda a: (a[0][:0], *a[1:]), "need 1 to 8 samples, got 0"),
    (lambda a: (np.zeros((9, 16, 16, 4), np.uint8), *a[1:]), "need 1 to 8 samples, got 9"),
    (lambda a: (a[0][..., :2], *a[1:]), r"images must have shape \[K, S, S, 3 or 4\]"),
    (lambda a: (a[0], a[1][:, :27], *a[2:]), r"probs must have shape \[2, 28\], got \[2, 27\]"),
    (lambda a: (*a[:2], a[2][:1], *a[3:]), r"labels must have shape \[2, 28\], got \[1, 28\]"),
    (lambda a: (*a[:3], np.full(27, 0.5), a[4]), r"thresholds must have shape \[28\]"),
    (lambda a: (*a[:4], ["only-one"]), "ids must have 2 entries, got 1"),
])
def test_prediction_montage_rejects_bad_shapes(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        figures.prediction_montage(tmp_path / "m.png", *change(montage_inputs(2, 4)), title="x")
