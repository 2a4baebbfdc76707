"""A run's data from its config: several sources, exclusions, oversampling, the fingerprint."""

import ml_collections
import numpy as np
import pytest

from hpajax.config import base_config
from hpajax.data import run_data, store as storelib


@pytest.fixture
def stores(tmp_path):
    """A "kaggle" store of 10 samples split train/val/test and an "external" one of 6."""
    rng = np.random.default_rng(0)
    labels = np.zeros((10, 28), np.uint8)
    labels[np.arange(10), np.arange(10) % 3] = 1  # classes 0, 1, 2
    labels[9, 27] = 1  # one rare class
    kaggle = tmp_path / "kaggle"
    storelib.write_store(kaggle, rng.integers(0, 255, (10, 8, 8, 4), np.uint8),
                         [f"k{i}" for i in range(10)], labels)
    storelib.save_split(kaggle, "default", {"train": np.arange(6), "val": np.arange(6, 8),
                                            "test": np.arange(8, 10)})
    storelib.save_split(kaggle, "other", {"a": np.arange(3), "b": np.arange(3, 10)})
    external = tmp_path / "external"
    ext_labels = np.zeros((6, 28), np.uint8)
    ext_labels[:, 5] = 1
    storelib.write_store(external, rng.integers(0, 255, (6, 8, 8, 4), np.uint8),
                         [f"e{i}" for i in range(6)], ext_labels)
    return str(kaggle), str(external)


def data_config(kaggle: str, **fields) -> ml_collections.ConfigDict:
    config = base_config().data
    config.store = kaggle
    config.update(fields)
    return config


def test_the_default_source_is_the_train_part_with_the_old_fingerprint(stores):
    kaggle, _ = stores
    data = run_data.open_run_data(data_config(kaggle))
    [source] = data.sources
    np.testing.assert_array_equal(source.rows, np.arange(6))
    assert source.draw_weights is None
    # The keys data.json had before config.data.sources: old workdirs resume unchanged.
    assert set(data.fingerprint()) == {"store", "samples", "ids_sha256", "train_split_sha256"}


def test_sources_name_parts_all_rows_other_splits_and_weights(stores):
    kaggle, external = stores
    data = run_data.open_run_data(data_config(kaggle, sources=(
        f"{kaggle}:train:3", f"{external}:all:1", f"{kaggle}:other/a:0.5")))
    got = [(str(s.store.path), s.rows.tolist(), s.weight) for s in data.sources]
    assert got == [(kaggle, list(range(6)), 3.0), (external, list(range(6)), 1.0),
                   (kaggle, [0, 1, 2], 0.5)]
    assert data.sources[0].store is data.sources[2].store is data.store  # each opened once
    fingerprint = data.fingerprint()
    assert [s["weight"] for s in fingerprint["sources"]] == [3.0, 1.0, 0.5]
    reweighted = run_data.open_run_data(data_config(kaggle, sources=(
        f"{kaggle}:train:1", f"{external}:all:1", f"{kaggle}:other/a:0.5")))
    assert reweighted.fingerprint()["sources"] != fingerprint["sources"]


@pytest.mark.parametrize("spec, message", [
    ("{k}:train", "expected LOCATION:PART:WEIGHT"),
    ("{k}:train:x", "weight 'x' is not a number"),
    ("{k}:train:0", "weight must be positive"),
    ("{k}:train:nan", "weight must be positive"),
    ("{k}:nope:1", "has no part 'nope'"),
    ("{k}:missing/a:1", "no split named 'missing'"),
    ("{k}x:all:1", "entry '.*kagglex:all:1': .*kagglex is not a complete hpajax store"),
])
def test_bad_source_entries_are_refused_naming_the_entry(stores, spec, message):
    kaggle, _ = stores
    with pytest.raises(ValueError, match=message):
        run_data.open_run_data(data_config(kaggle, sources=(spec.format(k=kaggle),)))


def test_an_unlabeled_source_is_refused(stores, tmp_path):
    kaggle, _ = stores
    storelib.write_store(tmp_path / "unlabeled", np.zeros((2, 8, 8, 4), np.uint8), ["u0", "u1"],
                         None)
    with pytest.raises(ValueError, match="has no labels"):
        run_data.open_run_data(data_config(kaggle, sources=(f"{tmp_path}/unlabeled:all:1",)))


def test_excluded_ids_leave_every_source(stores, tmp_path, capsys):
    kaggle, external = stores
    exclude = tmp_path / "dups.csv"
    exclude.write_text("Id,duplicate_of,score\ne1,k7,0.99\ne4,k8,0.98\nk2,k9,0.97\n")
    data = run_data.open_run_data(data_config(
        kaggle, sources=(f"{kaggle}:train:1", f"{external}:all:1"), exclude=str(exclude)))
    assert [s.rows.tolist() for s in data.sources] == [[0, 1, 3, 4, 5], [0, 2, 3, 5]]
    assert "2 of 6 training samples" in capsys.readouterr().out
    plain = run_data.open_run_data(data_config(
        kaggle, sources=(f"{kaggle}:train:1", f"{external}:all:1")))
    assert plain.fingerprint()["train_split_sha256"] != data.fingerprint()["train_split_sha256"]


def test_oversampling_weighs_each_sample_by_its_rarest_class(stores):
    kaggle, external = stores
    data = run_data.open_run_data(data_config(
        kaggle, sources=(f"{kaggle}:all:1", f"{external}:all:1"), oversample=0.5))
    labels = np.concatenate([s.store.labels[s.rows] for s in data.sources])
    frequency = labels.mean(0)  # over the union of the sources
    want = np.array([max(frequency[c] ** -0.5 for c in np.flatnonzero(y)) for y in labels])
    kaggle_want, external_want = want[:10], want[10:]  # each source's weights have mean 1
    np.testing.assert_allclose(data.sources[0].draw_weights, kaggle_want / kaggle_want.mean())
    np.testing.assert_allclose(data.sources[1].draw_weights,
                               external_want / external_want.mean())
    assert data.sources[0].draw_weights.argmax() == 9  # k9 carries the rarest class
    assert data.fingerprint()["oversample"] == 0.5
    with pytest.raises(ValueError, match="config.data.oversample"):
        run_data.open_run_data(data_config(kaggle, oversample=-1.0))



def save_three_folds(kaggle: str) -> None:
    """Split kfold3 of the kaggle store: test 8, 9 and three folds."""
    storelib.save_split(kaggle, "kfold3", {"test": np.array([8, 9]), "fold0": np.array([0, 3, 6]),
                                           "fold1": np.array([1, 4, 7]),
                                           "fold2": np.array([2, 5])})


def test_a_fold_run_trains_on_the_other_folds_validates_on_its_own_and_tests_on_test(stores):
    kaggle, _ = stores
    save_three_folds(kaggle)
    data = run_data.open_run_data(data_config(kaggle, split="kfold3", fold=1))
    assert (data.train_part, data.eval_part, data.test_part) == ("not_fold1", "fold1", "test")
    np.testing.assert_array_equal(data.rows("not_fold1"), [0, 2, 3, 5, 6])
    [source] = data.sources
    np.testing.assert_array_equal(source.rows, [0, 2, 3, 5, 6])
    storelib.save_split(kaggle, "kfold2", {"fold0": np.arange(5), "fold1": np.arange(5, 10)})
    without_test = run_data.open_run_data(data_config(kaggle, split="kfold2", fold=0))
    assert (without_test.eval_part, without_test.test_part) == ("fold0", None)


def test_a_fold_runs_held_out_rows_leave_the_sources_before_exclusion_and_oversampling(
        stores, tmp_path):
    kaggle, external = stores
    save_three_folds(kaggle)
    exclude = tmp_path / "dups.csv"
    exclude.write_text("Id,duplicate_of,score\nk2,k9,0.97\ne0,k1,0.9\n")
    data = run_data.open_run_data(data_config(
        kaggle, split="kfold3", fold=0, exclude=str(exclude), oversample=0.5,
        sources=(f"{kaggle}:all:1", f"{external}:all:2", f"{kaggle}:other/a:1")))
    # all = 0..9 less fold0 (0, 3, 6) and test (8, 9), less k2; other/a = 0, 1, 2 likewise.
    assert [s.rows.tolist() for s in data.sources] == [[1, 4, 5, 7], [1, 2, 3, 4, 5], [1]]
    labels = np.concatenate([s.store.labels[s.rows] for s in data.sources])
    frequency = labels.mean(0)  # over what is left to train on
    want = np.array([max(frequency[c] ** -0.5 for c in np.flatnonzero(y)) for y in labels[:4]])
    np.testing.assert_allclose(data.sources[0].draw_weights, want / want.mean())


def test_a_fold_beyond_the_splits_folds_is_refused(stores):
    kaggle, _ = stores
    storelib.save_split(kaggle, "kfold2", {"fold0": np.arange(5), "fold1": np.arange(5, 10)})
    with pytest.raises(ValueError, match="config.data.fold=2: split 'kfold2' has 2 folds, 0 to 1"):
        run_data.open_run_data(data_config(kaggle, split="kfold2", fold=2))
    with pytest.raises(ValueError, match="config.data.fold=0 needs a split with parts fold0"):
        run_data.open_run_data(data_config(kaggle, fold=0))
