"""Tests of the synthetic HPA-like data generator (hpajax.synthetic and its tool)."""

import csv
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hpajax import classes, synthetic
from conftest import DATA, REPO

REAL_CSV = DATA / "hpa2019" / "train.csv"
TOOL = REPO / "tools" / "make_synthetic.py"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def read_csv(path: pathlib.Path) -> list[list[str]]:
    """All rows of a csv, header included."""
    with path.open(newline="") as f:
        return list(csv.reader(f))


def multi_hot(target: str) -> np.ndarray:
    """A Kaggle Target string as a multi-hot [28] vector."""
    row = np.zeros(classes.NUM_CLASSES, np.uint8)
    row[[int(t) for t in target.split()]] = 1
    return row


def folder_bytes(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_train_layout_csv_and_pngs(tmp_path):
    csv_path = synthetic.generate(tmp_path, 12, image_size=32, seed=0, workers=1)
    assert csv_path == tmp_path / "train.csv"
    rows = read_csv(csv_path)
    assert rows[0] == ["Id", "Target"]
    ids = [r[0] for r in rows[1:]]
    assert len(ids) == 12 == len(set(ids))
    assert all(UUID.match(i) for i in ids)
    labels = np.stack([multi_hot(r[1]) for r in rows[1:]])
    assert all(r[1] == " ".join(sorted(r[1].split(), key=int)) for r in rows[1:])
    np.testing.assert_array_equal(labels, synthetic.sample_labels(12, 0))

    expected = {f"{i}_{c}.png" for i in ids for c in classes.CHANNELS}
    assert {p.name for p in (tmp_path / "train").iterdir()} == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train", "train.csv"]
    for name in list(expected)[:8]:
        with Image.open(tmp_path / "train" / name) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (32, 32)


def test_pngs_decode_to_the_rendered_sample(tmp_path):
    synthetic.generate(tmp_path, 3, image_size=40, seed=5, workers=1)
    labels = synthetic.sample_labels(3, 5)
    for index in range(3):
        want = synthetic.render(labels[index], 40, synthetic.kaggle_files.sample_rng(5, "train", index))
        stem = tmp_path / "train" / synthetic.sample_id(5, index)
        got = np.stack([np.asarray(Image.open(f"{stem}_{c}.png")) for c in classes.CHANNELS], -1)
        np.testing.assert_array_equal(got, want)


def test_deterministic_and_independent_of_workers(tmp_path):
    synthetic.generate(tmp_path / "a", 20, image_size=32, seed=3, workers=1)
    synthetic.generate(tmp_path / "b", 20, image_size=32, seed=3, workers=2)
    a, b = folder_bytes(tmp_path / "a"), folder_bytes(tmp_path / "b")
    assert len(a) == 20 * 4 + 1
    assert a == b


def test_different_seeds_differ(tmp_path):
    synthetic.generate(tmp_path / "a", 4, image_size=32, seed=0, workers=1)
    synthetic.generate(tmp_path / "b", 4, image_size=32, seed=1, workers=1)
    ids_a = [r[0] for r in read_csv(tmp_path / "a" / "train.csv")[1:]]
    ids_b = [r[0] for r in read_csv(tmp_path / "b" / "train.csv")[1:]]
    assert not set(ids_a) & set(ids_b)
    pixels_a = sorted(folder_bytes(tmp_path / "a" / "train").values())
    pixels_b = sorted(folder_bytes(tmp_path / "b" / "train").values())
    assert not set(pixels_a) & set(pixels_b)


def test_test_mode_layout(tmp_path):
    csv_path = synthetic.generate(tmp_path, 6, image_size=32, seed=0, workers=1, test=True)
    assert csv_path == tmp_path / "sample_submission.csv"
    rows = read_csv(csv_path)
    assert rows[0] == ["Id", "Predicted"]
    assert [r[1] for r in rows[1:]] == ["0"] * 6
    ids = [r[0] for r in rows[1:]]
    assert {p.name for p in (tmp_path / "test").iterdir()} == {
        f"{i}_{c}.png" for i in ids for c in classes.CHANNELS}
    assert not (tmp_path / "train").exists() and not (tmp_path / "train.csv").exists()
    train_ids = {synthetic.sample_id(0, i) for i in range(6)}
    assert len(set(ids)) == 6 and not train_ids & set(ids)


def test_default_labels_match_kaggle_statistics():
    labels = synthetic.sample_labels(20_000, seed=0)
    assert labels.shape == (20_000, classes.NUM_CLASSES) and labels.dtype == np.uint8
    counts = labels.sum(axis=1)
    assert counts.min() >= 1
    want = np.asarray(classes.KAGGLE_TRAIN_COUNTS) / classes.KAGGLE_TRAIN_SIZE
    got = labels.mean(axis=0)
    tolerance = 4 * np.sqrt(want * (1 - want) / len(labels)) + 0.002
    assert np.all(np.abs(got - want) < tolerance), np.round(got - want, 4)
    assert abs(counts.mean() - want.sum()) < 0.03  # ~1.63 labels per sample
    shares = np.bincount(counts, minlength=6)[1:6] / len(labels)
    np.testing.assert_allclose(shares[:3], [0.49, 0.40, 0.10], atol=0.04)
    assert 0.002 < shares[3:].sum() < 0.03
    nucleoplasm = labels[:, 0] == 1
    assert labels[nucleoplasm, 25].mean() > 0.2  # Nucleoplasm often with Cytosol
    assert labels[labels[:, 10] == 1, 9].all()  # Lysosomes always with Endosomes


def test_labels_csv_resamples_real_label_sets(tmp_path):
    real = {tuple(r) for r in synthetic.read_label_sets(REAL_CSV)}
    assert len(real) > 100
    labels = synthetic.sample_labels(2_000, seed=1, labels_csv=REAL_CSV)
    assert all(tuple(r) in real for r in labels)
    assert len({tuple(r) for r in labels}) > 50

    csv_path = synthetic.generate(tmp_path, 5, image_size=32, seed=1, workers=1,
                                  labels_csv=REAL_CSV)
    rows = read_csv(csv_path)[1:]
    np.testing.assert_array_equal(np.stack([multi_hot(r[1]) for r in rows]), labels[:5])


@pytest.mark.parametrize("text, message", [
    ("Id,Label\na,1\n", ":1: no Target column"),
    ("Id,Target\na,1 2\nb,1 x\n", "bad.csv:3: label 'x' is not an integer"),
    ("Id,Target\na,1 28\n", "bad.csv:2: label 28 outside 0..27"),
    ("Id,Target\na,\n", "bad.csv:2: empty Target"),
    ("Id,Target\na,1,2\n", "bad.csv:2: malformed row"),
    ("Id,Target\n", "no label rows"),
])
def test_malformed_labels_csv_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(str(path))) as error:
        synthetic.sample_labels(3, seed=0, labels_csv=path)
    assert message in str(error.value)


def test_render_shape_dark_reference_channels_and_every_class_visible():
    rng = np.random.default_rng(0)
    empty = synthetic.render(np.zeros(classes.NUM_CLASSES, np.uint8), 128, rng)
    assert empty.shape == (128, 128, 4) and empty.dtype == np.uint8
    assert empty[..., 1].max() < 20  # no label: green is background only
    means = []
    for c in range(classes.NUM_CLASSES):
        labels = np.zeros(classes.NUM_CLASSES, np.uint8)
        labels[c] = 1
        image = synthetic.render(labels, 128, np.random.default_rng(c))
        assert image[..., 1].max() >= 25, classes.CLASS_NAMES[c]
        means.append(image.reshape(-1, 4).mean(axis=0))
    means = np.mean(means, axis=0)
    for k in (0, 2, 3):  # red, blue, yellow: dark like HPA fields
        assert 2 < means[k] < 40, (classes.CHANNELS[k], means[k])
    same = synthetic.render(labels, 128, np.random.default_rng(27))
    np.testing.assert_array_equal(same, image)


def _features(image: np.ndarray) -> np.ndarray:
    """Green statistics in nucleus, cytoplasm and background masks found
    from the reference channels, plus green's correlation with them."""
    red, green, blue, yellow = (image[..., k].astype(np.float32) for k in range(4))
    nucleus = blue > 0.5 * blue.max()
    cell = red + yellow > 0.3 * (red + yellow).max()
    padded = np.pad(green, 1, mode="edge")
    size = green.shape[0]
    local = sum(padded[i:i + size, j:j + size] for i in range(3) for j in range(3)) / 9
    detail = np.abs(green - local)
    out = []
    for mask in (nucleus, cell & ~nucleus, ~cell):
        values = green[mask] if mask.any() else np.zeros(1)
        out += [values.mean(), values.std(), np.percentile(values, 90),
                detail[mask].mean() if mask.any() else 0.0]
    out += [np.corrcoef(green.ravel(), c.ravel())[0, 1] for c in (red, blue, yellow)]
    inner = nucleus.sum() > 2
    out += [np.corrcoef(green[nucleus], blue[nucleus])[0, 1] if inner else 0.0,
            green[nucleus].max() / (green[nucleus].mean() + 1) if inner else 0.0]
    out = np.nan_to_num(np.asarray(out, np.float64))
    return np.sign(out) * np.log1p(np.abs(out))


def test_classes_are_learnable_from_simple_features():
    labels = synthetic.sample_labels(200, seed=1)
    features = np.stack([_features(synthetic.render(row, 48, np.random.default_rng([7, i])))
                         for i, row in enumerate(labels)])
    for c in (0, 25, 21, 2, 23):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        score = cross_val_predict(model, features, labels[:, c], cv=4,
                                  method="predict_proba")[:, 1]
        auc = roc_auc_score(labels[:, c], score)
        assert auc > 0.8, (classes.CLASS_NAMES[c], auc)


def run_tool(*flags: str) -> subprocess.CompletedProcess:
    """Run tools/make_synthetic.py with ``flags``, capturing its output."""
    return subprocess.run([sys.executable, str(TOOL), *flags], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_tool_writes_and_says_where(tmp_path):
    result = run_tool(f"--out_dir={tmp_path}", "--num_samples=3", "--image_size=32",
                      "--workers=1", "--seed=2")
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "train.csv") in result.stdout
    assert len(read_csv(tmp_path / "train.csv")) == 4
    assert len(list((tmp_path / "train").iterdir())) == 12


@pytest.mark.parametrize("flag, name", [
    ("--num_samples=0", "--num_samples"),
    ("--image_size=8", "--image_size"),
    ("--labels_csv=does/not/exist.csv", "--labels_csv"),
])
def test_tool_rejects_bad_flags(tmp_path, flag, name):
    result = run_tool(f"--out_dir={tmp_path}", "--num_samples=2", "--image_size=32", flag)
    assert result.returncode != 0
    assert name in result.stderr
    assert not (tmp_path / "train.csv").exists()


def test_tool_requires_out_dir():
    result = run_tool("--num_samples=2")
    assert result.returncode != 0 and "--out_dir" in result.stderr, result.stderr
