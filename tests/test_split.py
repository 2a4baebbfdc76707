"""Tests for hpajax.data.split and tools/split.py."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hpajax import classes
from hpajax.data import split, store
from conftest import DATA, PYTHON, REPO

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


def test_folds_after_a_test_share_are_one_joint_stratified_split(tiny_stores):
    labelled, _ = tiny_stores
    split.split_store(labelled, folds=4, test_fraction=0.2, seed=3)
    parts = store.load_split(labelled, "kfold4")
    assert list(parts) == ["test", "fold0", "fold1", "fold2", "fold3"]
    expected = split.stratified_split(store.open_store(labelled).labels, [0.2] * 5, seed=3)
    for (name, rows), want in zip(parts.items(), expected):
        np.testing.assert_array_equal(rows, want, err_msg=name)
    assert store.split_info(labelled, "kfold4")["test_fraction"] == 0.2
    with pytest.raises(ValueError, match="--test_fraction=0.2 needs --folds=K"):
        split.split_store(labelled, test_fraction=0.2)
    with pytest.raises(ValueError, match=r"--test_fraction must be in \[0, 1\), got 1"):
        split.split_store(labelled, folds=4, test_fraction=1.0)


def test_a_saved_split_made_otherwise_is_kept_unless_overwritten(tiny_stores):
    labelled, _ = tiny_stores
    split.split_store(labelled, folds=4, seed=1)
    saved = (labelled / store.SPLITS / "kfold4.json").read_bytes()
    split.split_store(labelled, folds=4, seed=1)  # the same options: the same file again
    assert (labelled / store.SPLITS / "kfold4.json").read_bytes() == saved
    result = run_tool(f"--store={labelled}", "--folds=4", "--seed=1", "--test_fraction=0.25")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"tools/split.py: error: split 'kfold4' of {labelled} exists, made with other options "
        "(fractions [0.25, 0.25, 0.25, 0.25], now [0.25, 0.1875, 0.1875, 0.1875, 0.1875]; "
        "parts ['fold0', 'fold1', 'fold2', 'fold3'], now ['test', 'fold0', 'fold1', 'fold2', "
        "'fold3']; test_fraction None, now 0.25): runs trained on it would no longer match "
        "it; pass --overwrite to replace it")
    assert (labelled / store.SPLITS / "kfold4.json").read_bytes() == saved
    split.split_store(labelled, folds=4, seed=1, test_fraction=0.25, overwrite=True)
    assert list(store.load_split(labelled, "kfold4"))[0] == "test"


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


def grouped_labels(num_groups: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels of groups of 1-8 samples that share their group's label set (as an HPA
    gene's images do), samples shuffled; returns (labels, group of each sample)."""
    rng = np.random.default_rng(seed)
    group = rng.permutation(np.repeat(np.arange(num_groups), rng.integers(1, 9, num_groups)))
    return synthetic_labels(num_groups, seed)[group], group


def assert_good_grouped_split(labels: np.ndarray, groups: np.ndarray,
                              parts: list[np.ndarray], fractions: tuple[float, ...]) -> None:
    """Sorted int64 parts, disjoint and covering; no group in two parts; sizes within one
    sample of ideal and every class within its largest group's positives (groups move whole;
    measured at most 0.8 of that over 10 seeds of grouped_labels, 0.6 on the HPAv18 genes)."""
    for idx in parts:
        assert idx.dtype == np.int64
        assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    sets = [set(groups[idx].tolist()) for idx in parts]
    assert all(not a & b for i, a in enumerate(sets) for b in sets[i + 1:])
    class_dev, size_dev = split.split_deviations(labels, parts, fractions)
    largest = np.zeros((groups.max() + 1, labels.shape[1]), np.int64)
    np.add.at(largest, groups, labels)
    assert np.abs(size_dev).max() <= TOL, size_dev
    assert np.all(np.abs(class_dev) <= largest.max(0)), class_dev


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fractions", [(0.8, 0.2), (0.7, 0.1, 0.2)])
def test_grouped_split_keeps_groups_whole(fractions, seed):
    labels, groups = grouped_labels(seed=seed)
    keys = np.array([f"gene{g}" for g in groups])  # any hashable keys
    parts = split.stratified_split(labels, fractions, seed, keys)
    assert_good_grouped_split(labels, groups, parts, fractions)
    for a, b in zip(parts, split.stratified_split(labels, fractions, seed, keys)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_kfold_keeps_groups_whole(seed):
    labels, groups = grouped_labels(seed=seed)
    parts = split.stratified_kfold(labels, k=5, seed=seed, groups=groups)
    assert_good_grouped_split(labels, groups, parts, (0.2,) * 5)


@pytest.mark.parametrize("groups, fractions, match", [
    (np.zeros(10), (0.8, 0.2), "cannot split 1 groups into 2 parts"),
    (np.arange(9), (0.8, 0.2), r"one key per sample \(10\)"),
    # Two groups of 5, one per class: either part would be 4 samples off.
    (np.repeat([0, 1], 5), (0.9, 0.1), r"part 1 \(fraction 0.1\) got no group: 2 groups"),
])
def test_bad_groups_raise(groups, fractions, match):
    labels = np.repeat([[1, 0], [0, 1]], 5, axis=0)
    with pytest.raises(ValueError, match=match):
        split.stratified_split(labels, fractions, groups=groups)


# Real HPAv18RGBY_ENSG.csv Ids: antibody 59901 is listed under two genes with the same
# images, a plate named si10, an Id with a "_cr..." suffix; then the same kind of Ids
# without the gene (HPAv18RBGY_wodpl.csv).
HPA_IDS = ["ENSG00000000003_4109_24_H11_1", "ENSG00000000003_4109_23_H11_2",
           "ENSG00000003096_59901_1045_A6_1", "ENSG00000198642_59901_1045_A6_1",
           "ENSG00000198642_12345_si10_B2_1", "ENSG00000003989_9277_1732_B2_13_cr580609aeb2c05"]
WODPL_IDS = ["4109_24_H11_1", "59901_1045_A6_1", "41707_si10_E9_5"]


def test_groups_from_hpa_ids():
    assert split.groups_from_ids(HPA_IDS, "gene") == [
        "ENSG00000000003", "ENSG00000000003", "ENSG00000003096", "ENSG00000003096",
        "ENSG00000003096", "ENSG00000003989"]  # 198642 joined to 3096 by antibody 59901
    assert split.groups_from_ids(HPA_IDS, "antibody") == [
        "4109", "4109", "59901", "59901", "12345", "9277"]
    assert split.groups_from_ids(WODPL_IDS, "antibody") == ["4109", "59901", "41707"]


@pytest.mark.parametrize("ids, by, match", [
    (WODPL_IDS, "gene", "row 0: Id '4109_24_H11_1' has no gene"),
    (HPA_IDS + ["00070df0-bbc3-11e8-b2bc-ac1f6b6435d0"], "antibody",
     "row 6: Id '00070df0-bbc3-11e8-b2bc-ac1f6b6435d0' has no antibody"),
    (HPA_IDS, "plate", "--group_by='plate': choose one of gene, antibody"),
])
def test_unparsable_ids_are_named_with_their_row(ids, by, match):
    with pytest.raises(ValueError, match=match):
        split.groups_from_ids(ids, by)


def test_groups_from_csv_and_its_errors(tmp_path):
    good = tmp_path / "cells.csv"
    good.write_text("Id,Target,CellLine\na,0,U-2 OS\nb,1,A-431\n\nc,2,U-2 OS\nz,3,A-431\n")
    assert split.groups_from_csv(good, "CellLine", ["c", "a", "b"]) == ["U-2 OS", "U-2 OS",
                                                                       "A-431"]
    (tmp_path / "twice.csv").write_text("Id,CellLine\na,U-2 OS\na,A-431\n")
    (tmp_path / "empty.csv").write_text("Id,CellLine\na,\n")
    (tmp_path / "short.csv").write_text("Id,CellLine\na\n")
    for path, column, match in [
        (tmp_path / "missing.csv", "CellLine", "missing.csv: cannot read the groups file"),
        (good, "Gene", "cells.csv:1: no Gene column in the header"),
        (good.with_name("twice.csv"), "CellLine", "twice.csv:3: Id 'a' has a second CellLine"),
        (good.with_name("empty.csv"), "CellLine", "empty.csv:2: empty CellLine for Id 'a'"),
        (good.with_name("short.csv"), "CellLine", "short.csv:2: 1 fields, expected 2"),
    ]:
        with pytest.raises(ValueError, match=match):
            split.groups_from_csv(path, column, ["a"])
    with pytest.raises(ValueError, match=r"cells.csv: no row for 1 Id\(s\) .* 'q' \(store row 1\)"):
        split.groups_from_csv(good, "CellLine", ["a", "q"])


@pytest.fixture
def hpa_store(tmp_path) -> pathlib.Path:
    """A labelled store of 60 tiny images with HPAv18-style Ids: 20 genes of 3 images."""
    rng = np.random.default_rng(0)
    ids = [f"ENSG{gene:011d}_{100 + gene}_1_A1_{i}" for gene in range(20) for i in range(3)]
    labels = np.repeat(rng.random((20, classes.NUM_CLASSES)) < 0.15, 3, axis=0)
    images = rng.integers(0, 256, (60, 16, 16, 4), dtype=np.uint8)
    store.write_store(tmp_path / "hpa", images, ids, labels.astype(np.uint8))
    return tmp_path / "hpa"


def parts_of_genes(path: pathlib.Path, name: str) -> list[set[str]]:
    stored = store.open_store(path)
    return [{stored.ids[i].split("_")[0] for i in idx} for idx in stored.split(name).values()]


def test_cli_grouped_by_gene_and_by_a_csv_column(hpa_store, tmp_path):
    result = run_tool(f"--store={hpa_store}", "--group_by=gene")
    assert result.returncode == 0, result.stderr
    assert "grouped by gene: 20 groups, each in one part" in result.stdout
    genes = parts_of_genes(hpa_store, "default")
    assert sum(len(g) for g in genes) == 20 and len(set.union(*genes)) == 20
    saved = json.loads((hpa_store / store.SPLITS / "default.json").read_text())
    assert saved["info"]["groups"] == "gene"
    stored = store.open_store(hpa_store)
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text("Id,Batch\n" + "".join(f"{i},b{row // 10}\n"
                                               for row, i in enumerate(stored.ids)))
    result = run_tool(f"--store={hpa_store}", f"--groups_csv={csv_path}", "--group_by=Batch",
                      "--folds=3")
    assert result.returncode == 0, result.stderr
    assert f"grouped by {csv_path}:Batch: 6 groups, each in one part" in result.stdout
    folds = stored.split("kfold3")
    batches = [{row // 10 for row in idx} for idx in folds.values()]
    assert sum(len(b) for b in batches) == 6


@pytest.mark.parametrize("args, message", [
    (["--group_by=plate"], "--group_by='plate': choose none, gene or antibody, or a column"),
    (["--groups_csv=x.csv"], "--groups_csv=x.csv needs --group_by=COLUMN"),
])
def test_cli_refuses_bad_grouping(hpa_store, args, message):
    result = run_tool(f"--store={hpa_store}", *args)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not (hpa_store / store.SPLITS).exists()


def test_cli_names_the_row_of_an_id_without_a_gene(tiny_stores):
    labelled, _ = tiny_stores
    result = run_tool(f"--store={labelled}", "--group_by=gene")
    assert result.returncode != 0
    assert "tools/split.py: error: row 0: Id 's0' has no gene" in result.stderr
    assert not (labelled / store.SPLITS).exists()


def test_bench_split_keeps_hpav18_antibodies_in_one_part():
    """experiments/bench_split.py --group_by on the repository's HPAv18 list: every
    split of ours leaves no antibody on two sides, within its size bound."""
    r = subprocess.run([PYTHON, str(REPO / "experiments" / "bench_split.py"),
                        f"--csv={DATA / 'hpa2019' / 'HPAv18RBGY_wodpl.csv'}",
                        "--group_by=antibody", "--seeds=1"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    ours = [json.loads(line) for line in r.stdout.splitlines() if '"hpajax"' in line]
    assert [d["fractions"] for d in ours] == [[0.8, 0.2], [0.7, 0.1, 0.2], [0.2] * 5]
    for d in ours:
        assert d["groups"] == 12815 and d["groups_on_two_sides"] == 0
        assert d["max_size_dev"] <= 2 and d["max_class_dev"] <= 4


@pytest.mark.parametrize("grouped", [False, True])
def test_the_repair_step_is_the_best_move_or_swap_by_brute_force(grouped):
    """``_best_step`` against every single move and swap of label sets, each costed by
    recomputing the whole split's cost; some sets are absent from some parts (the swaps
    are searched over the sets each part holds), and the best step is a swap."""
    rng = np.random.default_rng(2)
    units = rng.integers(0, 3 if grouped else 2, (40, 6))
    units[:, -1] = rng.integers(1, 4, 40) if grouped else 1  # the size column
    patterns = np.unique(units, axis=0).astype(np.float64)
    counts = rng.integers(0, 3, (3, len(patterns))) * (rng.random((3, len(patterns))) < 0.6)
    ideal = np.full((3, 1), 1 / 3) * (counts.sum(0) @ patterns)
    cost = (split._group_cost if grouped else split._sample_cost)(units)
    total = lambda c: cost(c @ patterns - ideal).sum()  # noqa: E731

    def moved(c, a, b, i, j=-1):
        c = c.copy()
        c[a, i], c[b, i] = c[a, i] - 1, c[b, i] + 1
        if j >= 0:
            c[b, j], c[a, j] = c[b, j] - 1, c[a, j] + 1
        return c

    gains = [total(moved(counts, a, b, i)) - total(counts)
             for a in range(3) for b in range(3) if a != b
             for i in np.flatnonzero(counts[a] > 0)]
    gains += [total(moved(counts, a, b, i, j)) - total(counts)
              for a in range(3) for b in range(a + 1, 3)
              for i in np.flatnonzero(counts[a] > 0) for j in np.flatnonzero(counts[b] > 0)]
    a, b, i, j = split._best_step(counts, counts @ patterns - ideal, patterns, cost)
    assert min(gains) < 0 and a >= 0 and j >= 0
    assert total(moved(counts, a, b, i, j)) - total(counts) == pytest.approx(min(gains),
                                                                             abs=1e-9)
