"""hpajax.models.vit: timm's ViT-S/16 and ViT-B/16, their logits, sizes, names, pooling,
position-embedding resize, remat, dropout and stochastic depth.

Counts, names and dtypes are traced only (``jax.eval_shape``); the golden
logits run both variants at 64 px (a 4x4 grid, 17 tokens); the other compiled
checks use a three-block ViT of width 32 at 32 px (a 2x2 grid).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from backbone_checks import (abstract_init, assert_draws_only_with_rng, assert_float32_state,
                             assert_logits_and_statistics, assert_same_training_step, count,
                             forward, images, initial_variables, remat_checkpoints)
from conftest import DATA
from test_weights import (assert_reference_logits, reference_param_count, seeded_state_dict,
                          torchvision_names_shapes, zero_variables)

from hpajax import models, steps
from hpajax.models import vit, weights

SIZE = 32  # a 2x2 grid: 5 tokens
TINY = dict(embed_dim=32, depth=3, num_heads=2)  # the blocks of ViT-S, narrow and shallow
RESAMPLE = DATA / "pos_embed_resample.npz"  # timm's resizes (experiments/pos_embed_reference.py)


@pytest.fixture(scope="module")
def tiny() -> tuple[vit.VisionTransformer, jax.Array, dict]:
    """The tiny model, 8 images and its initial variables."""
    net = vit.VisionTransformer(**TINY)
    x = images(8, SIZE)
    return net, x, initial_variables(net, x)


@pytest.mark.parametrize("name", sorted(vit.VARIANTS))
def test_param_counts_match_timm(name):
    """224 px, 3 channels, 1,000 classes: timm's count. 4 channels, 28 classes: the patch
    kernel gains a channel, the head loses 972 outputs. No batch_stats collection."""
    dim = vit.VARIANTS[name]["embed_dim"]
    variables = abstract_init(vit.VisionTransformer(**vit.VARIANTS[name], num_classes=1000),
                              (1, 224, 224, 3))
    assert set(variables) == {"params"}
    assert count(variables["params"]) == reference_param_count(name)
    params = abstract_init(vit.VisionTransformer(**vit.VARIANTS[name]), (1, 224, 224, 4))["params"]
    assert count(params) == (reference_param_count(name) + 16 * 16 * dim
                             + (28 - 1000) * (dim + 1))


@pytest.mark.parametrize("name", sorted(vit.VARIANTS))
def test_imported_weights_give_timms_logits(name):
    """timm's 224 px file (seeded) at 64 px: timm's logits, the 14x14 position grid resized
    to 4x4 by the rules' fit as timm's resample_abs_pos_embed; nothing skipped."""
    dim = vit.VARIANTS[name]["embed_dim"]
    net = vit.VisionTransformer(**vit.VARIANTS[name], num_classes=1000)
    imported = assert_reference_logits(name, net, vit.IMPORT_RULES)
    assert imported.skipped == []
    assert imported.fitted == {"pos_embed": f"[1, 197, {dim}] fitted to [1, 17, {dim}]"}


def test_names_follow_timm_state_dict():
    """Top-level names as timm's keys (blocks.i -> blocks_i), the run's position grid."""
    params = abstract_init(vit.VisionTransformer(), (1, 32, 48, 4))["params"]
    assert set(params) == {"patch_embed", "cls_token", "pos_embed",
                           *(f"blocks_{i}" for i in range(12)), "norm", "head"}
    assert params["pos_embed"].shape == (1, 1 + 2 * 3, 384)
    assert params["cls_token"].shape == (1, 1, 384)
    assert params["patch_embed"]["proj"]["kernel"].shape == (16, 16, 4, 384)
    block = params["blocks_11"]
    assert set(block) == {"norm1", "attn", "norm2", "mlp"}
    assert {k: v["kernel"].shape for k, v in block["attn"].items()} == {
        "qkv": (384, 3 * 384), "proj": (384, 384)}
    assert {k: v["kernel"].shape for k, v in block["mlp"].items()} == {
        "fc1": (384, 1536), "fc2": (1536, 384)}


def test_layer_depths_follow_timms_layer_decay_groups():
    """Embeddings at depth 0, block i at i + 1, the final norm with the head at 13."""
    params = abstract_init(vit.VisionTransformer(), (1, SIZE, SIZE, 4))["params"]
    depths = steps.layer_depths(params, vit.layer_key)
    assert depths == {"patch_embed": 0, "cls_token": 0, "pos_embed": 0, "norm": 13, "head": 13,
                      **{f"blocks_{i}": i + 1 for i in range(12)}}


def test_a_four_channel_run_at_another_size_imports_the_file():
    """The 224 px file into a 4-channel, 28-class model at 32 px: yellow filters are the
    mean of red's and green's, the grid shrinks 14x14 -> 2x2, the head is new."""
    state = seeded_state_dict(torchvision_names_shapes("vit_small_patch16"), seed=0)
    variables = zero_variables(vit.VisionTransformer(), 4, SIZE)
    imported = weights.import_state(state, variables, (0, 1, 2, 3), vit.IMPORT_RULES)
    rgb = state["patch_embed.proj.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_allclose(imported.params["patch_embed"]["proj"]["kernel"],
                               np.concatenate([rgb, rgb[:, :, :2].mean(2, keepdims=True)], 2),
                               rtol=1e-6)
    np.testing.assert_allclose(imported.params["pos_embed"],
                               vit.resample_pos_embed(state["pos_embed"], 2), rtol=1e-6)
    np.testing.assert_array_equal(imported.params["blocks_3"]["attn"]["qkv"]["kernel"],
                                  state["blocks.3.attn.qkv.weight"].T)
    assert [key for key, _ in imported.skipped] == ["head.weight", "head.bias"]


@pytest.mark.parametrize("n, g", [(4, 6), (4, 3), (7, 12)])
def test_resample_pos_embed_matches_timm(n, g):
    """Enlarging and shrinking: timm's output (float32 torch) to 1e-6 of its largest value;
    the class token is kept as it was."""
    with np.load(RESAMPLE) as ref:
        posemb, expected = ref[f"grid{n}"], ref[f"grid{n}_to{g}"]
    got = vit.resample_pos_embed(posemb, g)
    assert got.shape == expected.shape == (1, 1 + g * g, 8)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got[:, 0], posemb[:, 0])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def test_antialiased_weights():
    """Rows sum to 1; the same grid is the identity; shrinking by 2 spreads each output over
    8 inputs (support 2 stretched by 2), enlarging over at most 4."""
    for n_in, n_out in ((5, 5), (8, 4), (4, 9)):
        w = vit.antialiased_bicubic_weights(n_in, n_out)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(vit.antialiased_bicubic_weights(5, 5), np.eye(5), atol=1e-15)
    assert (vit.antialiased_bicubic_weights(16, 8)[4] != 0).sum() == 8
    assert ((vit.antialiased_bicubic_weights(8, 16) != 0).sum(axis=1) <= 4).all()


def test_fit_resizes_only_square_position_grids():
    posemb = np.zeros((1, 1 + 4 * 4, 8), np.float32)
    assert vit.fit_pos_embed("pos_embed", posemb, (1, 1 + 3 * 3, 8)).shape == (1, 10, 8)
    other = np.zeros((8, 24), np.float32)
    assert vit.fit_pos_embed("blocks.0.mlp.fc1.weight", other, (8, 32)) is other
    with pytest.raises(ValueError, match="6 patch tokens are no square grid"):
        vit.fit_pos_embed("pos_embed", posemb, (1, 1 + 2 * 3, 8))
    with pytest.raises(ValueError, match="not a class token and a square grid"):
        vit.fit_pos_embed("pos_embed", posemb[:, :-1], (1, 1 + 3 * 3, 8))


def test_input_sides_must_be_multiples_of_the_patch():
    with pytest.raises(ValueError, match="multiples of its patch, 16 px: got 40x40 px"):
        abstract_init(vit.VisionTransformer(), (1, 40, 40, 4))


@pytest.mark.parametrize("train", [False, True])
def test_output_shape_and_dtype(tiny, train):
    """4 channels at 32 px (a 2x2 grid): float32 [8, 28], finite, in both modes; no
    statistics to update."""
    net, x, variables = tiny
    logits, updates = forward(net, variables, x, train, {"dropout": jax.random.key(1)})
    assert logits.shape == (8, 28)
    assert_logits_and_statistics(logits, updates, variables, train)


def test_bfloat16_keeps_float32_params():
    """ViT-S in bfloat16, 4 channels at 32 px: float32 params, bfloat16 blocks, float32
    logits [2, 28] (traced)."""
    variables = assert_float32_state(vit.VisionTransformer(dtype=jnp.bfloat16),
                                     (2, SIZE, SIZE, 4), False, {"blocks_11": jnp.bfloat16})
    assert set(variables) == {"params"}


def test_init_follows_timm(tiny):
    """Position embeddings N(0, .02), class token N(0, 1e-6), linear kernels N(0, .02)
    with zero bias, LayerNorms 1 and 0."""
    params = tiny[2]["params"]
    assert abs(np.std(params["pos_embed"]) / 0.02 - 1) < 0.2
    assert 0 < np.abs(params["cls_token"]).max() < 1e-5
    fc1 = params["blocks_2"]["mlp"]["fc1"]
    assert abs(np.std(fc1["kernel"]) / 0.02 - 1) < 0.05
    np.testing.assert_array_equal(fc1["bias"], 0.0)
    np.testing.assert_array_equal(params["norm"]["scale"], 1.0)
    np.testing.assert_array_equal(params["blocks_0"]["norm1"]["bias"], 0.0)


def test_pooling_against_numpy(tiny):
    """``token``: the class token, ``avg``: the patch tokens' mean, each through ``norm``
    (epsilon 1e-6) and ``head``; the two differ."""
    net, x, variables = tiny
    params = variables["params"]

    def logits_and_last_block(pool):
        model = net.clone(pool=pool)
        return jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                                                mutable=["intermediates"]))(variables, x)

    results = {}
    for pool, pooled in (("token", lambda t: t[:, 0]), ("avg", lambda t: t[:, 1:].mean(1))):
        logits, state = logits_and_last_block(pool)
        tokens = np.asarray(state["intermediates"]["blocks_2"]["__call__"][0], np.float64)
        y = pooled(tokens)
        y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-6)
        y = y * params["norm"]["scale"] + params["norm"]["bias"]
        expected = y @ params["head"]["kernel"] + params["head"]["bias"]
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
        results[pool] = logits
    assert np.abs(results["token"] - results["avg"]).max() > 1e-3


def test_remat_same_values_and_gradients(tiny):
    """``remat=True``: one checkpoint per block, the same loss (to 1e-6), logits and
    gradients (to 1e-5 of each array's largest magnitude) in a training step."""
    net, x, variables = tiny
    remat = net.clone(remat=True)
    assert [remat_checkpoints(model, variables, x) for model in (remat, net)] == [3, 0]
    remat_step, plain_step = assert_same_training_step(net, remat, variables, x, rtol=1e-5)
    np.testing.assert_allclose(remat_step.loss, plain_step.loss, rtol=1e-6)


def test_drop_path_ramps_linearly_as_timm():
    assert vit.drop_path_rates(0.0, 12) == [0.0] * 12
    np.testing.assert_allclose(vit.drop_path_rates(0.1, 12), np.arange(12) * 0.1 / 11)
    assert vit.drop_path_rates(0.5, 3) == [0.0, 0.25, 0.5]


@pytest.mark.parametrize("field", ["dropout", "drop_path"])
def test_dropout_and_drop_path_draw_only_in_training_with_an_rng(tiny, field):
    """Rate 0.5: eval (with a dropout rng or without) and training without one give the
    rate-0 model's eval logits, bit for bit; training with an rng differs from them, and
    between two rngs."""
    net, x, variables = tiny
    assert_draws_only_with_rng(net, net.clone(**{field: 0.5}), variables, x)


def test_from_config():
    """``from_config`` builds each variant with the block's dropout, drop_path, pool, remat."""
    for name, sizes in vit.VARIANTS.items():
        net = vit.from_config(ml_collections.ConfigDict({"name": name}), jnp.bfloat16)
        assert (net.embed_dim, net.depth, net.num_heads) == (
            sizes["embed_dim"], sizes["depth"], sizes["num_heads"])
        assert (net.dropout, net.drop_path, net.pool, net.remat, net.dtype, net.num_classes) == (
            0.0, 0.0, "token", False, jnp.bfloat16, 28)
    cfg = ml_collections.ConfigDict({"name": "vit_base_patch16", "dropout": 0.25,
                                     "drop_path": 0.1, "pool": "avg", "remat": True})
    net = vit.from_config(cfg, jnp.float32)
    assert (net.embed_dim, net.dropout, net.drop_path, net.pool, net.remat) == (
        768, 0.25, 0.1, "avg", True)
    with pytest.raises(ValueError, match="config.model.pool='max'"):
        vit.from_config(ml_collections.ConfigDict({"name": "vit_small_patch16", "pool": "max"}),
                        jnp.float32)
    with pytest.raises(ValueError, match="vit_small_patch16"):
        vit.from_config(ml_collections.ConfigDict({"name": "vit_large_patch16"}), jnp.float32)


def test_models_create_reads_the_config_block():
    """``models.create`` with the config's own ViT block: the variant and its fields."""
    from hpajax import config as config_lib

    cfg = config_lib.model_config("vit_small_patch16")
    net = models.create(cfg)
    assert isinstance(net, vit.VisionTransformer) and net.pool == "token"
