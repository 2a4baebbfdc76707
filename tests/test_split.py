"""Tests for hpajax.data.split and tools/split.py."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hpajax import classes
from hpajax.data import split, store
from conftest import DATA, REPO

KAGGLE_CSV = DATA / "hpa2019" / "train.csv"
# Deviations are differences of floats; allow for rounding at exactly one sample.
TOL = 1 + 1e-9


def read_targets(path: pathlib.Path) -> np.ndarray:
    """Multi-hot uint8 [N, 28] labels from a Kaggle ``Id,Target`` csv."""
    lines = path.read_text().splitlines()[1:]
    labels = np.zeros((len(lines), classes.NUM_CLASSES), np.uint8)
    for row, line in enumerate(lines):
        labels[row, [int(t) for t in line.split(",")[1].split()]] = 1
    return labels


def synthetic_labels(n: int = 600, seed: int = 0) -> np.ndarray:
    """Random labels with common to rare classes: 1, 2 and 3 positives in the
    last three, and about a fifth of the samples with no label at all."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 10)) < np.geomspace(0.3, 0.01, 10)).astype(np.uint8)
    rare = np.zeros((n, 3), np.uint8)
    for column, positives in enumerate((1, 2, 3)):
        rare[rng.choice(n, positives, replace=False), column] = 1
    labels = np.concatenate([labels, rare], 1)
    labels[rng.random(n) < 0.2] = 0
    return labels


def assert_good_split(labels: np.ndarray, parts: list[np.ndarray],
                      fractions: tuple[float, ...]) -> None:
    """Sorted int64 parts, disjoint and covering; every class and size within
    one sample of fraction x count."""
    assert len(parts) == len(fractions)
    for idx in parts:
        assert idx.dtype == np.int64
        assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    class_dev, size_dev = split.split_deviations(labels, parts, fractions)
    assert np.abs(size_dev).max() <= TOL, size_dev
    assert np.abs(class_dev).max() <= TOL, class_dev


@pytest.fixture(scope="module")
def kaggle() -> np.ndarray:
    labels = read_targets(KAGGLE_CSV)
    assert labels.shape == (classes.KAGGLE_TRAIN_SIZE, classes.NUM_CLASSES)
    assert tuple(labels.sum(0)) == classes.KAGGLE_TRAIN_COUNTS
    return labels


@pytest.mark.parametrize("fractions", [(0.8, 0.2), (0.7, 0.1, 0.2)])
def test_kaggle_split_within_one_sample(kaggle, fractions):
    assert_good_split(kaggle, split.stratified_split(kaggle, fractions, seed=0), fractions)


def test_kaggle_5fold_within_one_sample(kaggle):
    assert_good_split(kaggle, split.stratified_kfold(kaggle, k=5, seed=0), (0.2,) * 5)


def test_deterministic_by_seed(kaggle):
    first = split.stratified_split(kaggle, (0.8, 0.2), seed=3)
    again = split.stratified_split(kaggle, (0.8, 0.2), seed=3)
    other = split.stratified_split(kaggle, (0.8, 0.2), seed=4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("fractions", [(0.8, 0.2), (0.7, 0.1, 0.2), (0.2,) * 5])
def test_rare_classes_and_unlabelled_samples(fractions):
    labels = synthetic_labels()
    parts = split.stratified_split(labels, fractions, seed=1)
    assert_good_split(labels, parts, fractions)
    if len(fractions) == 5:  # 1-3 positives over 5 folds: never two in one fold
        assert max(labels[idx, -3:].sum(0).max() for idx in parts) == 1


def test_label_dtypes_give_the_same_split():
    labels = synthetic_labels(200)
    expected = split.stratified_split(labels, (0.7, 0.1, 0.2))
    for as_type in (bool, np.int64, np.float32):
        got = split.stratified_split(labels.astype(as_type), (0.7, 0.1, 0.2))
        for a, b in zip(expected, got):
            np.testing.assert_array_equal(a, b)


def test_no_labels_at_all_splits_by_size():
    parts = split.stratified_kfold(np.zeros((23, 4), np.uint8), k=4, seed=0)
    assert_good_split(np.zeros((23, 4)), parts, (0.25,) * 4)


@pytest.mark.parametrize("labels, fractions, match", [
    (np.zeros((10, 3)), (0.8, -0.2, 0.4), "positive"),
    (np.zeros((10, 3)), (0.8, 0.0, 0.2), "positive"),
    (np.zeros((10, 3)), (0.8, 0.3), "sum to 1"),
    (np.zeros((10, 3)), (), "non-empty"),
    (np.zeros(10), (0.8, 0.2), "2-D"),
    (np.zeros((10, 3, 1)), (0.8, 0.2), "2-D"),
    (np.zeros((10, 0)), (0.8, 0.2), "2-D"),
    (np.full((10, 3), 2), (0.8, 0.2), "0 or 1"),
    (np.full((10, 3), 0.5), (0.8, 0.2), "0 or 1"),
    (np.zeros((2, 3)), (0.5, 0.3, 0.2), "smaller than the number of parts"),
])
def test_bad_inputs_raise(labels, fractions, match):
    with pytest.raises(ValueError, match=match):
        split.stratified_split(labels, fractions)


@pytest.mark.parametrize("k", [1, 0, 2.5])
def test_bad_k_raises(k):
    with pytest.raises(ValueError, match="k must be"):
        split.stratified_kfold(np.zeros((10, 3)), k=k)


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools/split.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture
def tiny_stores(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    """A labelled and an unlabelled store of 40 random 16x16x4 images."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 16, 16, 4), dtype=np.uint8)
    ids = [f"s{i}" for i in range(40)]
    labels = (rng.random((40, classes.NUM_CLASSES)) < 0.15).astype(np.uint8)
    store.write_store(tmp_path / "labelled", images, ids, labels)
    store.write_store(tmp_path / "unlabelled", images, ids, None)
    return tmp_path / "labelled", tmp_path / "unlabelled"


def test_cli_saves_default_and_kfold_splits(tiny_stores):
    labelled, _ = tiny_stores
    result = run_tool(f"--store={labelled}")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "train" in result.stdout
    parts = store.load_split(labelled, "default")
    assert {name: len(idx) for name, idx in parts.items()} == {"train": 28, "val": 4, "test": 8}
    np.testing.assert_array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(40))

    result = run_tool(f"--store={labelled}", "--folds=4", "--seed=1")
    assert result.returncode == 0, result.stderr
    folds = store.open_store(labelled).split("kfold4")
    assert {name: len(idx) for name, idx in folds.items()} == {f"fold{i}": 10 for i in range(4)}


def test_cli_refuses_bad_requests(tiny_stores):
    labelled, unlabelled = tiny_stores
    result = run_tool(f"--store={unlabelled}")
    assert result.returncode != 0 and "unlabelled" in result.stderr
    result = run_tool(f"--store={labelled}", "--fractions=0.8,0.2")
    assert result.returncode != 0 and "fractions" in result.stderr
    result = run_tool(f"--store={labelled}", "--fractions=0.8,0.3", "--parts=a,b")
    assert result.returncode != 0 and "fractions must sum to 1" in result.stderr
    assert not (unlabelled / store.SPLITS).exists()
    assert not (labelled / store.SPLITS).exists()


@pytest.mark.parametrize("args, named", [
    ([], "--store"),                                      # required
    (["--store=st", "--seed=one"], "--seed"),             # not an integer
    (["--store=st", "--fractions=a,b"], "--fractions"),   # not numbers
    (["--store=st", "stray"], "unexpected arguments: stray"),
])
def test_cli_names_a_missing_or_bad_flag(args, named):
    result = run_tool(*args)
    assert result.returncode != 0 and named in result.stderr, result.stderr


def test_cli_refuses_names_that_are_not_plain_identifiers(tiny_stores, tmp_path):
    """A split or part name becomes a file name: '../x' must not write outside the store."""
    labelled, _ = tiny_stores
    for flag, value in [("name", "../x"), ("name", ".."), ("name", "-x"),
                        ("parts", "train,../v,test")]:
        result = run_tool(f"--store={labelled}", f"--{flag}={value}")
        shown = value if flag == "name" else "../v"
        assert result.returncode != 0, result.stdout
        assert f"--{flag}={shown!r}: not a plain name" in result.stderr
    assert not (labelled / store.SPLITS).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labelled", "unlabelled"]
    for call in (lambda: store.save_split(labelled, "../x", {"a": np.arange(3)}),
                 lambda: store.save_split(labelled, "x", {"a/b": np.arange(3)}),
                 lambda: store.load_split(labelled, "../x")):
        with pytest.raises(store.StoreError, match="not a plain name"):
            call()
    assert not (labelled / store.SPLITS).exists()
