"""The Kaggle HPA 2019 ingredients together through train, resume, evaluate and predict.

Two stores (a split "kaggle" one and an "external" one) mixed per sample,
an exclusion list, rare-class oversampling, random crops, focal + Lovász,
a moving average of the weights and 2-view test-time augmentation: one
tiny run with all of them resumes to the uninterrupted run's weights; the
EMA and the TTA evaluation are checked against formulas written out.
"""

import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_store, tiny_config

from hpajax import checkpointing, commands, inference, train
from hpajax import steps as steps_lib
from hpajax.data import open_store, sources
from hpajax.data.run_data import open_run_data

SIZE = 32  # stored side; the tiny seed CNN's input is a 28 px crop of it
CROP = 28


def ingredients_config(kaggle: pathlib.Path, external: pathlib.Path, exclude: pathlib.Path,
                       **overrides):
    return tiny_config(kaggle, **{
        "data.sources": (f"{kaggle}:train:1", f"{external}:all:2"),
        "data.exclude": str(exclude), "data.oversample": 0.5, "data.input_size": CROP,
        "augment.crop": True, "loss": "focal+0.5*lovasz", "ema_decay": 0.9, "tta": 2,
        **overrides})


def records(workdir: pathlib.Path, split: str) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The run uninterrupted to step 6, and stopped at 3 then resumed to 6."""
    root = tmp_path_factory.mktemp("ingredients")
    kaggle = synthetic_store(root / "kaggle", 64, SIZE, seed=1, fractions=(0.5, 0.25, 0.25))
    external = synthetic_store(root / "external", 24, SIZE, seed=2)
    external_ids = open_store(external).ids
    exclude = root / "dups.csv"
    exclude.write_text("Id,duplicate_of,score\n" + "".join(
        f"{i},x,0.99\n" for i in external_ids[:4]))
    config = ingredients_config(kaggle, external, exclude)
    train.train_and_evaluate(config, str(root / "full"))
    train.train_and_evaluate(ingredients_config(kaggle, external, exclude, total_steps=3),
                             str(root / "split"))
    train.train_and_evaluate(config, str(root / "split"))
    return root, config


def test_all_ingredients_resume_to_the_uninterrupted_weights(runs):
    root, _ = runs
    shas = [[r["params_sha256"] for r in records(root / d, "checkpoint")]
            for d in ("full", "split")]
    assert len(shas[0]) == 2 and shas[0] == shas[1]
    assert records(root / "full", "val") == records(root / "split", "val")
    data = json.loads((root / "full" / "data.json").read_text())
    assert [s["weight"] for s in data["sources"]] == [1.0, 2.0] and data["oversample"] == 0.5


def test_the_log_compares_drawn_class_frequencies_with_the_stores(runs):
    """The logged first epoch is the oversampled draw plan's (the weights written out here,
    not taken from the library), not the uniform plan's; over many epochs, that plan draws
    the rarest class more often than the uniform one, as its one sample's weight says."""
    root, config = runs
    [drawn] = records(root / "full", "data")
    mixed = open_run_data(config.data).sources  # the stores' rows, exclusions, weights
    labels = [s.store.labels[s.rows].astype(bool) for s in mixed]
    frequency = np.concatenate(labels).mean(0)
    # A sample weighs (1 / frequency of its rarest class) ** alpha, alpha = 0.5.
    weighted = [dataclasses.replace(s, draw_weights=np.where(
        y, frequency, frequency.max()).min(1) ** -0.5) for s, y in zip(mixed, labels)]
    uniform = [dataclasses.replace(s, draw_weights=None) for s in mixed]
    epoch = sum(len(s.rows) for s in mixed)
    want, plain = (sources.drawn_label_frequency(plan, config.seed, epoch)
                   for plan in (weighted, uniform))
    np.testing.assert_array_equal(drawn["store_frequency"], frequency)
    np.testing.assert_array_equal(drawn["drawn_frequency"], want)
    assert not np.array_equal(want, plain)
    rare = int(np.argmin(np.where(frequency > 0, frequency, 1.0)))  # 1 of the 52 samples
    want, plain = (sources.drawn_label_frequency(plan, config.seed, 100 * epoch)
                   for plan in (weighted, uniform))
    assert want[rare] > 1.5 * plain[rare]  # 102 against 53 draws: its weight is 1.9x the mean


def test_a_changed_mixing_weight_is_refused_on_resume(runs, tmp_path):
    root, config = runs
    shutil.copytree(root / "full", tmp_path / "run")
    changed = config.copy_and_resolve_references()
    changed.data.sources = (changed.data.sources[0], changed.data.sources[1][:-1] + "1")
    with pytest.raises(ValueError, match="config.data.sources"):
        train.train_and_evaluate(changed, str(tmp_path / "run"))


def test_evaluate_and_predict_use_the_average_with_tta_and_rate_thresholds(runs, tmp_path):
    root, config = runs
    metrics = commands.evaluate_command(root / "full", draw_figures=False, tta=4)
    assert {"tuned_on_val", "guarded", "rate"} <= set(metrics["test"])
    out = commands.predict_command(root / "full", config.data.store, tmp_path, tta=4,
                                   thresholds="rate")
    probs = np.load(out / "probabilities.npy")
    restored = inference.restore(root / "full", tta=4)
    assert restored.config.tta == 4
    # Both used the checkpoint's moving average over every view: 4 flips of each of the
    # 2 x 2 crops; evaluate for val (whose thresholds it tunes) as for test.
    images = np.asarray(open_store(config.data.store).images.read().result())
    saved = saved_state(root / "full", restored)
    want = views_mean(restored.steps, saved.ema, images, 4)
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
    for part in ("val", "test"):
        scored = np.load(root / "full" / "report" / f"predictions_{part}.npz")
        np.testing.assert_allclose(scored["probs"], want[scored["rows"]], rtol=1e-5, atol=1e-6)
    # ... which the raw weights, or the crops without flips, would not have given.
    raw = {"params": saved.params, "batch_stats": saved.batch_stats}
    assert np.abs(views_mean(restored.steps, raw, images, 4) - want).max() > 1e-3
    assert np.abs(views_mean(restored.steps, saved.ema, images, 1) - want).max() > 1e-3
    saved = json.loads((root / "full" / "report" / "thresholds.json").read_text())
    frequency = np.asarray(saved["class_frequency"])
    predicted = [row.split(",")[1].split() for row in
                 (out / "submission.csv").read_text().splitlines()[1:]]
    counts = np.bincount([int(c) for row in predicted for c in row], minlength=28)
    # Rate matching: each class predicted for its training share of the images (ties aside).
    want = np.round(frequency * len(probs))
    distinct = np.array([len(np.unique(probs[:, c])) == len(probs) for c in range(28)])
    np.testing.assert_array_equal(counts[distinct], want[distinct])


def views_mean(steps: steps_lib.Steps, variables: dict, images: np.ndarray,
               flips: int) -> np.ndarray:
    """The model's probabilities averaged over the first ``flips`` of identity, left-right,
    top-bottom and both flips of each 28 px crop at (0 or 4, 0 or 4) of 32 px images."""
    def probs(views: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(steps.model.apply(variables, steps_lib.model_input(views, CROP),
                                                train=False))

    crops = [images[:, r:r + CROP, c:c + CROP] for r in (0, SIZE - CROP)
             for c in (0, SIZE - CROP)]
    flipped = [f(crop) for crop in crops for f in (
        lambda x: x, lambda x: x[:, :, ::-1], lambda x: x[:, ::-1], lambda x: x[:, ::-1, ::-1]
    )[:flips]]
    return np.mean([probs(jnp.asarray(np.ascontiguousarray(v))) for v in flipped], axis=0)


def saved_state(workdir: pathlib.Path, restored: inference.Restored) -> steps_lib.TrainState:
    """The restored checkpoint as saved: the raw weights, beside their moving average (with
    the BatchNorm statistics recalibrated for it at the checkpoint's evaluation)."""
    ckpt = checkpointing.Checkpointer.of_run(workdir, restored.config)
    try:
        state, _ = ckpt.restore(restored.step, steps_lib.abstract_state(restored.steps))
    finally:
        ckpt.close()
    return state


@pytest.fixture(scope="module")
def averaged(runs):
    """The runs' steps (every ingredient, with an EMA of decay 0.9: the training step compiled
    for the runs) and a training batch of 8 of the kaggle store's 32 px images."""
    _, config = runs
    steps = steps_lib.build(config, steps_lib.make_mesh(config.batch_size), (CROP, CROP, 4))
    batch = {"image": np.asarray(open_store(config.data.store).images[:8].read().result()),
             "label": np.zeros((8, 28), np.uint8)}
    return steps, batch


def test_the_moving_average_follows_the_formula(averaged):
    steps, batch = averaged
    assert steps.config.ema_decay == 0.9
    state = steps_lib.init_state(steps)
    before = initial = jax.device_get(state.params)
    assert steps_lib.served(state).params is state.ema["params"]
    for t in range(3):
        state, _ = steps.train(state, steps_lib.to_device(steps, batch),
                               steps_lib.zero_sums(steps))
        decay = min(0.9, (1 + t) / (10 + t))
        after = jax.device_get(state.params)
        before = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, before, after)
    jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7),
                 jax.device_get(state.ema["params"]), before)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), after, initial))
    assert max(moved) > 1e-4  # the steps moved the weights: not an average of a constant


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The model's steps with an EMA of decay 0.9 and 4-view TTA, on a 28 px store: the runs'
    model input side, so that the model's initialization is the one compiled for them."""
    store = synthetic_store(tmp_path_factory.mktemp("built"), 24, CROP, seed=3)
    config = tiny_config(store, ema_decay=0.9, tta=4)
    steps = steps_lib.build(config, steps_lib.make_mesh(config.batch_size), (CROP, CROP, 4))
    batch = {"image": np.asarray(open_store(store).images[:8].read().result()),
             "label": np.zeros((8, 28), np.uint8), "mask": np.ones(8, bool)}
    return steps, batch


def test_tta_evaluation_is_the_mean_over_the_views_one_by_one(built):
    steps, batch = built
    state = steps_lib.served(steps_lib.init_state(steps))
    got = np.asarray(steps.eval(state, steps_lib.to_device(steps, batch))["probs"])
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    views = [batch["image"], batch["image"][:, :, ::-1], batch["image"][:, ::-1],
             batch["image"][:, ::-1, ::-1]]  # identity, left-right, top-bottom, both
    want = np.mean([jax.nn.sigmoid(steps.model.apply(
        variables, steps_lib.model_input(jnp.asarray(np.ascontiguousarray(v)), CROP),
        train=False)) for v in views], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
