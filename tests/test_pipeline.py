"""Tests of the Grain input pipeline (hpajax.data.pipeline) on tiny stores."""

import json
import pickle

import numpy as np
import pytest
import tensorstore as ts

from hpajax import classes
from hpajax.data import pipeline, store
from hpajax.data.sources import Source

N, SIZE, CHANNELS = 40, 32, 4


@pytest.fixture(scope="module")
def data():
    """Random images and labels; every sample's image is distinct."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, SIZE, SIZE, CHANNELS), dtype=np.uint8)
    labels = rng.integers(0, 2, (N, classes.NUM_CLASSES), dtype=np.uint8)
    return images, labels


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("labeled") / "store"
    return store.write_store(path, data[0], [f"id{i}" for i in range(N)], data[1],
                             shard_samples=4)


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("unlabeled") / "store"
    return store.write_store(path, data[0], [f"id{i}" for i in range(N)], None, shard_samples=4)


def take(it, n):
    return [next(it) for _ in range(n)]


def check_batch(batch, data, batch_size, channels=(0, 1, 2, 3)):
    """Shapes, dtypes, and content equal to the store rows named by ``index``."""
    images, labels = data
    assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.uint8
    assert batch["index"].dtype == np.int64
    assert batch["image"].shape == (batch_size, SIZE, SIZE, len(channels))
    assert batch["label"].shape == (batch_size, classes.NUM_CLASSES)
    np.testing.assert_array_equal(batch["image"], images[batch["index"]][..., list(channels)])
    np.testing.assert_array_equal(batch["label"], labels[batch["index"]])


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


# --- StoreSource ------------------------------------------------------------

def test_source_items_equal_store(labeled, data):
    split = np.array([5, 17, 3, 39])
    src = pipeline.StoreSource(labeled, split)
    assert len(src) == 4 and src.image_shape == (SIZE, SIZE, CHANNELS)
    for pos, row in enumerate(split):
        item = src[pos]
        assert item["index"] == row and item["index"].dtype == np.int64
        assert item["image"].dtype == np.uint8 and item["label"].dtype == np.uint8
        np.testing.assert_array_equal(item["image"], data[0][row])
        np.testing.assert_array_equal(item["label"], data[1][row])


@pytest.mark.parametrize("channels", [(0, 1, 2), (2, 0)])
def test_source_channel_subset(labeled, data, channels):
    src = pipeline.StoreSource(labeled, [7, 8], channels=channels)
    assert src.image_shape == (SIZE, SIZE, len(channels))
    np.testing.assert_array_equal(src[1]["image"], data[0][8][..., list(channels)])
    check_batch(src.read_batch(np.array([1, 0])), data, 2, channels)


@pytest.mark.parametrize("channels", [(), (0, 0), (4,), (-1,)])
def test_source_rejects_bad_channels(labeled, channels):
    with pytest.raises(ValueError, match="channels"):
        pipeline.StoreSource(labeled, channels=channels)


@pytest.mark.parametrize("rows", [[0, N], [-1], [[1, 2]], [0.5]])
def test_source_rejects_bad_rows(labeled, rows):
    with pytest.raises(ValueError, match="rows"):
        pipeline.StoreSource(labeled, rows)


def test_source_pickles_without_tensorstore(labeled, data):
    src = pipeline.StoreSource(labeled, [3, 4])
    for _ in range(2):  # Before and after the first read opens the array.
        state = src.__getstate__()
        assert not any(isinstance(v, ts.TensorStore) for v in state.values())
        clone = pickle.loads(pickle.dumps(src))
        np.testing.assert_array_equal(clone[1]["image"], data[0][4])
        src[0]


def test_source_unlabeled_gives_zero_labels(unlabeled, data):
    src = pipeline.StoreSource(unlabeled, [2])
    assert not src.has_labels
    np.testing.assert_array_equal(src[0]["label"], np.zeros(classes.NUM_CLASSES, np.uint8))
    np.testing.assert_array_equal(src[0]["image"], data[0][2])


# --- train_dataset -----------------------------------------------------------

SPLIT = np.arange(1, N, 2)  # 20 of the 40 rows.


def split_of(source_store):
    """The training sources of a run on ``SPLIT`` of a store."""
    return [Source(source_store, SPLIT)]


def test_train_epochs_cover_split_and_reshuffle(labeled, data):
    it = iter(pipeline.train_dataset(split_of(labeled), batch_size=5, seed=1))
    epochs = [take(it, 4), take(it, 4)]
    orders = []
    for epoch in epochs:
        for batch in epoch:
            check_batch(batch, data, 5)
        order = np.concatenate([b["index"] for b in epoch])
        np.testing.assert_array_equal(np.sort(order), SPLIT)
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1])


def test_train_is_deterministic_by_seed(labeled):
    def epochs(seed):  # Two epochs of 5 batches of 4.
        it = iter(pipeline.train_dataset(split_of(labeled), batch_size=4, seed=seed))
        return np.concatenate([b["index"] for b in take(it, 10)]).reshape(2, 20)
    np.testing.assert_array_equal(epochs(3), epochs(3))
    assert not np.array_equal(epochs(3)[0], epochs(4)[0])
    # Adjacent seeds are not the same permutations shifted by an epoch.
    assert not np.array_equal(epochs(3)[1], epochs(4)[0])


def test_train_shards_are_disjoint_and_match_single_process(labeled, data):
    """Row for row, process k's batch is the k-th block of the single-process global batch."""
    # 20 samples, 2 shards x batch 5: one epoch is 2 steps of 10 samples.
    single = iter(pipeline.train_dataset(split_of(labeled), batch_size=10, seed=7))
    shards = [iter(pipeline.train_dataset(split_of(labeled), batch_size=5, seed=7, channels=(1,),
                                          shard_index=k, shard_count=2)) for k in range(2)]
    for _ in range(4):  # Two epochs.
        whole = next(single)
        check_batch(whole, data, 10)
        for k, it in enumerate(shards):
            part = next(it)
            check_batch(part, data, 5, channels=(1,))
            block = slice(k * 5, (k + 1) * 5)
            np.testing.assert_array_equal(part["index"], whole["index"][block], err_msg=f"{k}")
            np.testing.assert_array_equal(part["image"], whole["image"][block][..., [1]])
            np.testing.assert_array_equal(part["label"], whole["label"][block])


def test_train_rejects_bad_input(labeled, unlabeled):
    with pytest.raises(ValueError, match="no labels"):
        pipeline.train_dataset(split_of(unlabeled), batch_size=4, seed=0)
    with pytest.raises(ValueError, match="empty"):
        pipeline.train_dataset([Source(labeled, [])], batch_size=4, seed=0)
    with pytest.raises(ValueError, match="smaller than one"):
        pipeline.train_dataset(split_of(labeled), batch_size=21, seed=0)
    with pytest.raises(ValueError, match="smaller than one"):
        pipeline.train_dataset(split_of(labeled), batch_size=8, seed=0, shard_count=3)
    with pytest.raises(ValueError, match="shard_index"):
        pipeline.train_dataset(split_of(labeled), batch_size=4, seed=0, shard_index=2,
                               shard_count=2)
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.train_dataset(split_of(labeled), batch_size=0, seed=0)


# --- eval_dataset ------------------------------------------------------------

def test_eval_reads_split_once_in_order_with_padding(labeled, data):
    split = SPLIT[:13]
    batches = list(pipeline.eval_dataset(labeled, split, batch_size=5))
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.dtype == bool and mask.sum() == 13 and not mask[13:].any()
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(index[:13], split)
    np.testing.assert_array_equal(index[13:], -1)
    for b in batches[:2]:
        check_batch(b, data, 5)
    last = batches[2]
    real = {k: v[:3] for k, v in last.items()}
    check_batch(real, data, 3)
    assert not last["image"][3:].any() and not last["label"][3:].any()


def test_eval_shards_line_up_and_cover_split(labeled, data):
    split = SPLIT[:9]  # Blocks of 3, 2, 2, 2: shards 1-3 end on a fully masked batch.
    shards = [list(pipeline.eval_dataset(labeled, split, batch_size=2, channels=(0, 1, 2),
                                         shard_index=k, shard_count=4)) for k in range(4)]
    assert [len(s) for s in shards] == [2, 2, 2, 2]
    assert not shards[1][1]["mask"].any()
    seen = np.concatenate([b["index"][b["mask"]] for s in shards for b in s])
    np.testing.assert_array_equal(seen, split)
    for s in shards:
        for b in s:
            real = {k: v[b["mask"]] for k, v in b.items() if k != "mask"}
            check_batch(real, data, int(b["mask"].sum()), channels=(0, 1, 2))


def test_eval_on_unlabeled_store(unlabeled, data):
    (batch,) = list(pipeline.eval_dataset(unlabeled, [4, 9], batch_size=4))
    np.testing.assert_array_equal(batch["mask"], [True, True, False, False])
    np.testing.assert_array_equal(batch["image"][:2], data[0][[4, 9]])
    assert batch["label"].shape == (4, classes.NUM_CLASSES) and not batch["label"].any()


def test_eval_rejects_empty_split(labeled):
    with pytest.raises(ValueError, match="empty"):
        pipeline.eval_dataset(labeled, [], batch_size=4)


# --- iterator state ------------------------------------------------------------

def check_state_round_trip(ds, skip=3, n=4):
    """Batches after a restored (JSON round-tripped) state equal the original's.

    Returns all batches the original iterator produced.
    """
    it = iter(ds)
    try:
        first = take(it, skip)
        state = json.loads(json.dumps(it.get_state()))
        rest = take(it, n)
    finally:
        it.close()
    it2 = iter(ds)
    try:
        it2.set_state(state)
        assert_same_batches(take(it2, n), rest)
    finally:
        it2.close()
    return first + rest


def test_state_round_trip_in_process(labeled):
    check_state_round_trip(pipeline.train_dataset(split_of(labeled), batch_size=4, seed=2))
    check_state_round_trip(pipeline.eval_dataset(labeled, SPLIT, batch_size=3), skip=2)


def test_workers_match_in_process_and_restore_state(labeled, data):
    kwargs = dict(batch_size=4, seed=5, channels=(0, 1, 2))
    in_process = take(iter(pipeline.train_dataset(split_of(labeled), **kwargs)), 7)
    batches = check_state_round_trip(
        pipeline.train_dataset(split_of(labeled), num_workers=2, **kwargs))
    assert_same_batches(batches, in_process)
    check_batch(batches[0], data, 4, channels=(0, 1, 2))
