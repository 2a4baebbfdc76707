"""Tests of mixed training (several sources drawn per sample by weight): the draw plan of
hpajax.data.sources and the batches hpajax.data.pipeline reads from it."""

import json

import grain
import numpy as np
import pytest

from hpajax import classes
from hpajax.data import pipeline, store
from hpajax.data import sources as sourcelib
from hpajax.data.sources import Source

SIZE = 8
# Store A: 12 samples, all trained on. Store B: 40 samples, 30 trained on
# (every fourth left out), so a sample's store row differs from its position.
A_ROWS = np.arange(12)
B_ROWS = np.setdiff1d(np.arange(40), np.arange(0, 40, 4))
EPOCH = len(A_ROWS) + len(B_ROWS)  # 42 draws per virtual epoch


def write(tmp_path_factory, name, n, *, size=SIZE, channels=4, mark=None, seed=0):
    """A store of distinct random images; labels whose classes 0 and 1 are ``mark``
    (None: unlabeled). Returns (Store, images, labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    labels = rng.integers(0, 2, (n, classes.NUM_CLASSES), dtype=np.uint8)
    if mark is not None:
        labels[:, :2] = mark
    path = tmp_path_factory.mktemp(name) / "store"
    written = store.write_store(path, images, [f"{name}{i}" for i in range(n)],
                                None if mark is None else labels, shard_samples=4)
    return written, images, labels


@pytest.fixture(scope="module")
def a(tmp_path_factory):
    return write(tmp_path_factory, "a", 12, mark=(1, 0), seed=1)


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    return write(tmp_path_factory, "b", 40, mark=(0, 1), seed=2)


def mixed(a, b, weights=(1.0, 1.0), a_draw_weights=None):
    """Sources A (all rows) and B (B_ROWS) with weights."""
    return [Source(a[0], A_ROWS, weights[0], a_draw_weights), Source(b[0], B_ROWS, weights[1])]


def take(ds, n):
    it = iter(ds)
    try:
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def draws_of(batches):
    """The (source, store row) of every sample of the batches, in order."""
    return (np.concatenate([x["source"] for x in batches]),
            np.concatenate([x["index"] for x in batches]))


def assert_same_batches(x, y):
    assert len(x) == len(y)
    for p, q in zip(x, y):
        assert p.keys() == q.keys()
        for k in p:
            np.testing.assert_array_equal(p[k], q[k], err_msg=k)


def test_batches_hold_the_drawn_samples(a, b):
    """Image and label of each sample are those of the (source, row) it names; labels
    tell the stores apart."""
    channels = (2, 0)
    batches = take(pipeline.train_dataset(mixed(a, b), batch_size=8, seed=0,
                                          channels=channels), 7)
    for x in batches:
        assert x.keys() == {"image", "label", "index", "source"}
        assert x["image"].dtype == np.uint8 and x["image"].shape == (8, SIZE, SIZE, 2)
        assert x["label"].dtype == np.uint8 and x["label"].shape == (8, classes.NUM_CLASSES)
        assert x["index"].dtype == np.int64 and x["source"].dtype == np.int32
        np.testing.assert_array_equal(x["label"][:, 0], x["source"] == 0)
        np.testing.assert_array_equal(x["label"][:, 1], x["source"] == 1)
        for i, (s, row) in enumerate(zip(x["source"], x["index"])):
            images, labels = (a, b)[s][1:]
            np.testing.assert_array_equal(x["image"][i], images[row][..., list(channels)])
            np.testing.assert_array_equal(x["label"][i], labels[row])
    source, _ = draws_of(batches)
    assert 0 < source.sum() < len(source)  # batches do mix the stores


def test_deterministic_by_seed(a, b):
    def run(seed):
        return draws_of(take(pipeline.train_dataset(mixed(a, b), batch_size=6, seed=seed), 14))
    for x, y in zip(run(3), run(3)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(run(3)[1], run(4)[1])
    # Epoch 1 of seed 3 is not epoch 0 of seed 4 (no seed + epoch).
    assert not np.array_equal(run(3)[1][EPOCH:], run(4)[1][:EPOCH])


# Largest remainder of 42 draws, by hand: 1:3 is 10.5 and 31.5, the tie rounds
# the first source up; 0.1:1 is 3.82 and 38.18, the larger remainder rounds up.
@pytest.mark.parametrize("weights, counts", [((1, 1), (21, 21)), ((2, 1), (28, 14)),
                                             ((1, 3), (11, 31)), ((0.1, 1), (4, 38))])
def test_epochs_draw_exact_counts_and_every_row_once_per_pass(a, b, weights, counts):
    epochs = 10
    batches = take(pipeline.train_dataset(mixed(a, b, weights), batch_size=6, seed=2),
                   epochs * EPOCH // 6)
    source, index = draws_of(batches)
    for e in range(epochs):
        in_epoch = source[e * EPOCH:(e + 1) * EPOCH]
        assert [(in_epoch == s).sum() for s in (0, 1)] == list(counts), e
    assert not np.array_equal(source[:EPOCH], source[EPOCH:2 * EPOCH])  # shuffled anew
    for s, rows in enumerate((A_ROWS, B_ROWS)):
        drawn = index[source == s]
        passes = len(drawn) // len(rows)
        assert passes >= 1
        for k in range(passes):
            np.testing.assert_array_equal(np.sort(drawn[k * len(rows):(k + 1) * len(rows)]),
                                          rows, err_msg=f"source {s} pass {k}")
        # Passes are fresh permutations, not one order repeated.
        assert not np.array_equal(drawn[:len(rows)], drawn[len(rows):2 * len(rows)])


def test_draw_weights_frequencies(a, b):
    """Over 200 epochs A's rows come in proportion to its draw weights.

    4200 draws of A from p = w / sum(w), w = 0..11: row 0 never, and Pearson's
    chi-square over rows 1-11 (10 degrees of freedom, smallest expected count
    64) stays below 46.9, its 1e-6 upper tail (scipy.stats.chi2.ppf(1 - 1e-6,
    10)): a correct sampler fails one seed in a million; the uniform law,
    tested the same way, scores in the hundreds.
    """
    w = np.arange(12, dtype=np.float64)
    epochs = 200
    batches = take(pipeline.train_dataset(mixed(a, b, a_draw_weights=w), batch_size=EPOCH,
                                          seed=0), epochs)
    source, index = draws_of(batches)
    np.testing.assert_array_equal(source.reshape(epochs, EPOCH).sum(axis=1), 21)
    seen = np.bincount(index[source == 0], minlength=12)
    assert seen[0] == 0 and seen.sum() == 21 * epochs

    def chi_square(p):
        expected = seen.sum() * p[1:]
        return (((seen[1:] - expected) ** 2) / expected).sum()
    assert chi_square(w / w.sum()) < 46.9
    assert chi_square(np.full(12, 1 / 11)) > 100
    # B, without draw weights, still shows each row once per pass.
    drawn = index[source == 1][:3 * len(B_ROWS)].reshape(3, -1)
    np.testing.assert_array_equal(np.sort(drawn, axis=1), np.tile(B_ROWS, (3, 1)))


def resumed(make_ds, skip, n):
    """The ``n`` batches after ``skip``, uninterrupted and from a restored state
    (JSON round-tripped) in a new dataset."""
    it = iter(make_ds())
    try:
        [next(it) for _ in range(skip)]
        state = json.loads(json.dumps(it.get_state()))
        straight = [next(it) for _ in range(n)]
    finally:
        it.close()
    it = iter(make_ds())
    try:
        it.set_state(state)
        return straight, [next(it) for _ in range(n)]
    finally:
        it.close()


@pytest.mark.parametrize("draw_weights", [None, np.linspace(1, 2, 12)])
def test_resumes_exactly_across_an_epoch_boundary(a, b, draw_weights):
    # Batches of 8: batch 5 (positions 40-47) spans the end of virtual epoch 0.
    def make():
        return pipeline.train_dataset(mixed(a, b, (1, 2), draw_weights), batch_size=8, seed=6)
    straight, restored = resumed(make, skip=3, n=4)
    assert_same_batches(restored, straight)


def test_workers_match_in_process_and_resume(a, b):
    kwargs = dict(batch_size=8, seed=7, channels=(1,))
    in_process = take(pipeline.train_dataset(mixed(a, b), **kwargs), 8)
    straight, restored = resumed(
        lambda: pipeline.train_dataset(mixed(a, b), num_workers=1, **kwargs), skip=4, n=4)
    assert_same_batches(straight, in_process[4:])
    assert_same_batches(restored, straight)


def test_shards_are_blocks_of_the_single_process_batch(a, b):
    sources = mixed(a, b, (1, 3), np.linspace(0, 1, 12))
    single = take(pipeline.train_dataset(sources, batch_size=10, seed=9), 9)  # 2+ epochs
    shards = [take(pipeline.train_dataset(sources, batch_size=5, seed=9, shard_index=k,
                                          shard_count=2), 9) for k in range(2)]
    for t, whole in enumerate(single):
        for k in range(2):
            block = {key: v[k * 5:(k + 1) * 5] for key, v in whole.items()}
            assert_same_batches([shards[k][t]], [block])


def test_one_source_keeps_grains_shuffle(b):
    """One source without draw weights, of any weight, is drawn as before mixing existed."""
    seed, batch, steps = 5, 7, 10  # 70 draws: over two epochs of 30
    batches = take(pipeline.train_dataset([Source(b[0], B_ROWS, 2.5)], batch_size=batch,
                                          seed=seed), steps)
    order = grain.MapDataset.range(len(B_ROWS)).shuffle(sourcelib.shuffle_seed(seed)).repeat()
    expected = B_ROWS[[order[i] for i in range(batch * steps)]]
    source, index = draws_of(batches)
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_array_equal(source, 0)
    for x in batches:
        np.testing.assert_array_equal(x["image"], b[1][x["index"]])
        np.testing.assert_array_equal(x["label"], b[2][x["index"]])


@pytest.mark.parametrize("case", ["mixed", "draw weights", "one source"])
def test_drawn_label_frequency_is_that_of_the_drawn_rows(a, b, case):
    sources = {"mixed": mixed(a, b, (1, 2)),
               "draw weights": mixed(a, b, a_draw_weights=np.arange(12.0)),
               "one source": [Source(b[0], B_ROWS)]}[case]
    num_draws = 100  # over two virtual epochs
    source, index = draws_of(take(pipeline.train_dataset(sources, batch_size=6, seed=4), 17))
    stores = [a, b] if len(sources) == 2 else [b]
    labels = np.array([stores[s][2][row] for s, row in zip(source, index)][:num_draws])
    np.testing.assert_allclose(sourcelib.drawn_label_frequency(sources, 4, num_draws),
                               labels.mean(axis=0), rtol=1e-12)


# --- refusals ------------------------------------------------------------------

@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """Stores that cannot be mixed with A: 16 px, 3 channels, unlabeled."""
    return {"big": write(tmp_path_factory, "big", 4, size=16, mark=(1, 0))[0],
            "rgb": write(tmp_path_factory, "rgb", 4, channels=3, mark=(1, 0))[0],
            "unlabeled": write(tmp_path_factory, "unlabeled", 4)[0]}


def refusal(sources, *needles, channels=None):
    """Asserts that training on the sources raises a ValueError naming every needle."""
    with pytest.raises(ValueError) as e:
        pipeline.train_dataset(sources, batch_size=2, seed=0, channels=channels)
    for needle in needles:
        assert str(needle) in str(e.value), (needle, str(e.value))
    return str(e.value)


def test_refuses_stores_that_cannot_share_a_batch(a, odd):
    first = Source(a[0], A_ROWS)
    refusal([first, Source(odd["big"], [0, 1])], a[0].path, odd["big"].path, "8 px", "16 px",
            "convert them at one size")
    refusal([first, Source(odd["rgb"], [0, 1])], a[0].path, odd["rgb"].path, "4 channels",
            " 3")
    refusal([first, Source(odd["rgb"], [0, 1])], odd["rgb"].path, "3 channels", channels=(3,))
    refusal([first, Source(odd["unlabeled"], [0, 1])], odd["unlabeled"].path, "no labels")
    refusal([first, Source(odd["rgb"], [])], odd["rgb"].path, "empty")
    refusal([first, Source(odd["rgb"], [7])], odd["rgb"].path, "rows out of range [0, 4)")
    refusal([], "no training sources")


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan"), float("inf")])
def test_refuses_bad_weights(a, b, weight):
    refusal(mixed(a, b, (1, weight)), b[0].path, f"got {weight}")
    refusal([Source(b[0], B_ROWS, weight)], b[0].path, f"got {weight}")


def test_refuses_a_weight_too_small_for_any_draw(a, b):
    refusal(mixed(a, b, (1e-3, 1)), a[0].path, "weight 0.001", "none of the 42 draws")


@pytest.mark.parametrize("draw_weights, needles", [
    (np.ones(11), ["shape (11,)", "12 rows"]),
    (np.r_[-1.0, np.ones(11)], ["min -1.0"]),
    (np.zeros(12), ["sum 0.0"]),
    (np.r_[np.nan, np.ones(11)], ["finite"]),
])
def test_refuses_bad_draw_weights(a, b, draw_weights, needles):
    refusal(mixed(a, b, a_draw_weights=draw_weights), a[0].path, *needles)
    with pytest.raises(ValueError, match="draw_weights"):
        sourcelib.drawn_label_frequency([Source(a[0], A_ROWS, 1, draw_weights)], 0, 10)


def test_drawn_label_frequency_refuses(a, odd):
    with pytest.raises(ValueError, match="num_draws"):
        sourcelib.drawn_label_frequency([Source(a[0], A_ROWS)], 0, 0)
    with pytest.raises(ValueError, match="no training sources"):
        sourcelib.drawn_label_frequency([], 0, 5)
    with pytest.raises(ValueError, match="no labels"):
        sourcelib.drawn_label_frequency([Source(odd["unlabeled"], [0])], 0, 5)


# --- oversample_weights -----------------------------------------------------------

def test_oversample_weights_formula():
    labels = np.zeros((4, classes.NUM_CLASSES), np.uint8)
    labels[0, [0]] = 1
    labels[1, [0, 5]] = 1
    labels[2, [5, 27]] = 1  # labels[3]: no class
    freq = np.zeros(classes.NUM_CLASSES)
    freq[[0, 5, 27, 9]] = 0.5, 0.1, 0.2, 0.05  # class 9: in other samples of the union
    alpha = 0.5
    # Written out: 1/f^alpha of the rarest class; no class: that of the most common class.
    raw = np.array([0.5 ** -0.5, 0.1 ** -0.5, 0.1 ** -0.5, 0.5 ** -0.5])
    weights = sourcelib.oversample_weights(labels, freq, alpha)
    assert weights.dtype == np.float64
    np.testing.assert_allclose(weights, raw / raw.mean(), rtol=1e-12)
    np.testing.assert_allclose(weights.mean(), 1.0)
    np.testing.assert_array_equal(sourcelib.oversample_weights(labels, freq, 0.0), 1.0)
    # Any number of classes.
    few = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], np.uint8)
    raw = np.array([1 / 0.75, 1 / 0.25, 1 / 0.75])
    np.testing.assert_allclose(sourcelib.oversample_weights(few, [0.75, 0.25, 0], 1.0),
                               raw / raw.mean(), rtol=1e-12)


def test_oversample_weights_refusals():
    labels = np.zeros((2, classes.NUM_CLASSES), np.uint8)
    labels[:, 3] = 1
    freq = np.full(classes.NUM_CLASSES, 0.1)
    with pytest.raises(ValueError, match=r"classes \[3\] occur"):
        sourcelib.oversample_weights(labels, np.where(np.arange(28) == 3, 0.0, 0.1), 1.0)
    with pytest.raises(ValueError, match=r"one per class of labels \(2, 27\)"):
        sourcelib.oversample_weights(labels[:, :27], freq, 1.0)
    with pytest.raises(ValueError, match="labels must be"):
        sourcelib.oversample_weights(labels[0], freq, 1.0)
    with pytest.raises(ValueError, match="class_frequency"):
        sourcelib.oversample_weights(labels, np.full(classes.NUM_CLASSES, 1.5), 1.0)
    with pytest.raises(ValueError, match="all zero"):
        sourcelib.oversample_weights(labels * 0, freq * 0, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        sourcelib.oversample_weights(labels, freq, -1.0)
