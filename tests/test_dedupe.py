"""Tests for hpajax.data.dedupe and tools/dedupe.py: planted near-copies across two stores."""

import io
import pathlib
import subprocess

import numpy as np
import pytest
from PIL import Image

from hpajax import classes, synthetic
from hpajax.data import dedupe, store
from conftest import PYTHON, REPO

# Rows of A copied into B, and where the copies sit among B's 30 rows.
COPIED = [1, 4, 9, 13, 18, 22, 27, 31, 35, 38]
COPY_ROWS = [0, 3, 5, 8, 12, 16, 19, 23, 26, 29]


def render(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` distinct synthetic fields, uint8 [count, size, size, 4]."""
    labels = synthetic.sample_labels(count, seed=seed)
    return np.stack([synthetic.render(labels[i], size, np.random.default_rng([seed, i]))
                     for i in range(count)])


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Area-filter resize of every channel, as the converter does."""
    return np.stack([np.asarray(Image.fromarray(image[..., c]).resize(
        (size, size), Image.Resampling.BOX)) for c in range(image.shape[-1])], -1)


def near_copy(image: np.ndarray, size: int, quality: int, gain: float) -> np.ndarray:
    """``image`` resized to ``size``, each channel JPEG-recompressed, brightened by ``gain``."""
    planes = []
    for plane in np.moveaxis(resize(image, size), -1, 0):
        buffer = io.BytesIO()
        Image.fromarray(plane).save(buffer, "JPEG", quality=quality)
        planes.append(np.asarray(Image.open(buffer)))
    return np.clip(np.stack(planes, -1) * gain, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """A: 40 distinct 64 px fields with a split (copies of rows 1, 4, 9 in val, 13, 18 in
    test); B at 40 px (not a multiple of the 16 px signature): 20 other fields and 10
    near-copies of A rows (JPEG quality 70-90, gain 0.8-1.25)."""
    root = tmp_path_factory.mktemp("dedupe")
    a_images = render(40, 64, seed=1)
    a_ids = [f"kaggle{i:02d}" for i in range(40)]
    store.write_store(root / "a", a_images, a_ids, None)
    store.save_split(root / "a", "default", {"train": np.arange(20, 40),
                                             "val": np.array([1, 4, 9, 10]),
                                             "test": np.array([13, 18, 19])})
    rng = np.random.default_rng(0)
    others = iter(resize(image, 40) for image in render(20, 64, seed=2))
    copies = dict(zip(COPY_ROWS, COPIED))
    b_images = np.stack([near_copy(a_images[copies[row]], 40, int(rng.integers(70, 91)),
                                   rng.uniform(0.8, 1.25)) if row in copies else next(others)
                         for row in range(30)])
    store.write_store(root / "b", b_images, [f"v18_{i:02d}" for i in range(30)], None)
    return root / "a", root / "b"


def test_area_weights_average_exact_pixel_shares():
    np.testing.assert_allclose(dedupe.area_weights(5, 2),
                               [[0.4, 0.4, 0.2, 0, 0], [0, 0, 0.2, 0.4, 0.4]], atol=1e-7)
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), np.uint8)
    w = dedupe.area_weights(48, 16)  # divides: the weights must equal the reshape-mean
    by_weights = np.einsum("iy,jx,nyxc->nijc", w, w, images.astype(np.float64))
    np.testing.assert_allclose(dedupe.thumbnails(images, 16), by_weights, rtol=1e-5)


def test_signatures_ignore_size_gain_and_offset_and_survive_flat_channels():
    image = render(1, 64, seed=3)[0][..., [0, 2, 3]]
    brighter = np.clip(image.astype(np.float32) * 1.2 + 7, 0, 255).astype(np.uint8)
    original, resized, flat = (dedupe.signatures(x[None]) for x in
                               (image, resize(brighter, 48), np.full_like(image, 9)))
    assert original.shape == (1, 3 * dedupe.SIGNATURE_SIZE ** 2)
    assert np.linalg.norm(original) == pytest.approx(1.0, abs=1e-5)
    assert (original @ resized.T).item() > 0.99
    np.testing.assert_array_equal(flat, 0.0)


def test_finds_exactly_the_planted_copies(stores):
    a, b = stores
    matches = dedupe.match_stores(store.open_store(b), store.open_store(a))
    copies = matches.scores >= dedupe.THRESHOLD
    assert np.flatnonzero(copies).tolist() == COPY_ROWS
    assert [matches.match_ids[row] for row in COPY_ROWS] == [f"kaggle{i:02d}" for i in COPIED]
    # The measured gap: copies near 1, distinct fields well below the threshold.
    assert matches.scores[copies].min() > 0.97
    assert matches.scores[~copies].max() < dedupe.THRESHOLD - 0.1


def test_write_and_read_exclusions(stores, tmp_path):
    a, b = stores
    count, summary = dedupe.dedupe_stores(b, a, tmp_path / "dups.csv")
    assert count == 10 and "10 duplicates (score >= 0.9)" in summary
    lines = (tmp_path / "dups.csv").read_text().splitlines()
    assert lines[0] == "Id,duplicate_of,score"
    rows = [line.split(",") for line in lines[1:]]
    scores = [float(score) for _, _, score in rows]
    assert scores == sorted(scores, reverse=True)
    assert dict((i, d) for i, d, _ in rows) == {
        f"v18_{row:02d}": f"kaggle{a_row:02d}" for row, a_row in zip(COPY_ROWS, COPIED)}
    assert dedupe.read_exclusions(tmp_path / "dups.csv") == {
        f"v18_{row:02d}" for row in COPY_ROWS}


def test_read_exclusions_of_any_id_csv_and_its_errors(tmp_path):
    (tmp_path / "mine.csv").write_text("Target,Id\n0,a\n\n1,b\n2,a\n")
    assert dedupe.read_exclusions(tmp_path / "mine.csv") == {"a", "b"}
    (tmp_path / "no_id.csv").write_text("Name,score\na,1\n")
    (tmp_path / "short.csv").write_text("Target,Id\n0,a\n1\n")
    (tmp_path / "empty.csv").write_text("")
    for name, match in [("missing.csv", "missing.csv: cannot read the exclusion list"),
                        ("no_id.csv", r"no_id.csv:1: no Id column"),
                        ("short.csv", "short.csv:3: no Id"),
                        ("empty.csv", "empty.csv:1: no Id column")]:
        with pytest.raises(ValueError, match=match):
            dedupe.read_exclusions(tmp_path / name)


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(REPO / "tools/dedupe.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_against_held_out_parts(stores, tmp_path):
    a, b = stores
    out = tmp_path / "dups.csv"
    result = run_tool(f"--store={b}", f"--against={a}", "--against_parts=val,test",
                      f"--output={out}")
    assert result.returncode == 0, result.stderr
    # Copies of rows 1, 4, 9 (val) and 13, 18 (test); the other copies' originals are in train.
    held_out = {f"v18_{row:02d}" for row, a_row in zip(COPY_ROWS, COPIED) if a_row < 20}
    assert dedupe.read_exclusions(out) == held_out
    assert "against parts val, test of split 'default' (7 rows)" in result.stdout
    assert "0.9 to 0.95" in result.stdout and "5 duplicates" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--against_parts=val,holdout"], "no part holdout (parts: train, val, test)"),
    (["--split=other", "--against_parts=val"], "no split named 'other'"),
    (["--threshold=1.5"], "--threshold=1.5: must be in (0, 1]"),
    (["--output=/nonexistent/dups.csv"], "--output=/nonexistent/dups.csv: folder"),
])
def test_cli_refuses_bad_requests(stores, tmp_path, args, message):
    a, b = stores
    result = run_tool(f"--store={b}", f"--against={a}", f"--output={tmp_path / 'd.csv'}", *args)
    assert result.returncode != 0
    assert "tools/dedupe.py: error: " in result.stderr and message in result.stderr
    assert not (tmp_path / "d.csv").exists()


def test_refuses_a_store_against_itself_or_without_the_channels(stores, tmp_path):
    a, _ = stores
    with pytest.raises(store.StoreError, match="against itself"):
        dedupe.match_stores(store.open_store(a), store.open_store(a))
    gray = store.write_store(tmp_path / "gray", np.zeros((2, 16, 16, 2), np.uint8),
                             ["x", "y"], None)
    with pytest.raises(store.StoreError, match="no blue, yellow channel"):
        dedupe.match_stores(gray, store.open_store(a))
    small = store.write_store(tmp_path / "small", np.zeros((2, 8, 8, classes.NUM_CHANNELS),
                                                           np.uint8), ["x", "y"], None)
    with pytest.raises(store.StoreError, match="8 px are smaller than the 16 px signature"):
        dedupe.match_stores(small, store.open_store(a))
