"""The configs are plain data: loading one imports no JAX, and none lacks a field."""

import json
import runpy
import subprocess

import pytest
from conftest import PYTHON, REPO

from hpajax import config as config_lib

CONFIG_FILES = sorted((REPO / "experiments" / "configs").glob("*.py"))
HEAVY = ("jax", "jaxlib", "tensorstore", "PIL")
_REPORT_HEAVY = f"import sys; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"


def heavy_modules_after(code: str) -> list[str]:
    """The modules of ``HEAVY`` that a fresh Python holds after running ``code``."""
    r = subprocess.run([PYTHON, "-c", f"import json\n{code}\n{_REPORT_HEAVY}"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


def flat_fields(tree: dict, prefix: str = "") -> set[str]:
    return {name for key, value in tree.items()
            for name in (flat_fields(value, f"{prefix}{key}.") if isinstance(value, dict)
                         else {f"{prefix}{key}"})}


def test_there_are_config_files():
    assert {"default", "paper", "tiny", "input_size", "kernel_size"} <= {
        path.stem for path in CONFIG_FILES}


def test_importing_hpajax_config_imports_no_jax():
    assert heavy_modules_after("import hpajax.config") == []


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_loading_a_config_file_imports_no_jax(path):
    """As ``--config=FILE`` loads it, through ml_collections' config flag."""
    code = ("from absl import flags\n"
            "from ml_collections import config_flags\n"
            "config = config_flags.DEFINE_config_file('config')\n"
            f"flags.FLAGS(['load', '--config={path}'])\n"
            "assert config.value.model.name")
    assert heavy_modules_after(code) == []


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_file_has_every_base_field_and_its_models_fields(path):
    config = runpy.run_path(str(path))["get_config"]()
    missing = flat_fields(config_lib.base_config().to_dict()) - flat_fields(config.to_dict())
    assert not {name for name in missing if not name.startswith("model.")}
    model_fields = flat_fields(config_lib.model_config(config.model.name).to_dict())
    assert flat_fields(config.model.to_dict()) == model_fields


def test_base_config_names_the_model():
    assert config_lib.base_config().model.name == "seed_cnn"


def test_model_config_has_each_models_fields_and_refuses_others():
    assert set(config_lib.model_config("seed_cnn")) == {"name", "dtype", "kernel_size",
                                                        "filters", "head"}
    common = {"name", "dtype", "dropout", "remat", "init_from", "normalize", "yellow_init"}
    for name in config_lib.BACKBONES:
        extra = {"drop_path"} if name in config_lib.DROP_PATH else set()
        extra |= {"pool"} if name.startswith("vit_") else set()
        assert set(config_lib.model_config(name)) == common | extra, name
    assert config_lib.model_config("efficientnet_b4").drop_path == 0.2  # torchvision's
    assert config_lib.model_config("convnext_tiny").drop_path == 0.1
    with pytest.raises(ValueError, match="config.model.name='vgg16'"):
        config_lib.model_config("vgg16")


def today_demo_config():
    """The demo's config written out field by field (issue 21: half width, 1,200 steps)."""
    c = config_lib.base_config()
    c.batch_size = 16
    c.total_steps = 1200
    c.log_every = 50
    c.eval_every = c.checkpoint_every = 200
    c.bn_recalibration_batches = 10
    c.model.filters = (16, 32, 64, 128)
    c.model.head = (256, 128)
    return c


def test_demo_config_is_unchanged(tmp_path):
    from hpajax import demo

    assert config_lib.demo_config().to_dict() == today_demo_config().to_dict()
    expected = today_demo_config()
    expected.data.store = str(tmp_path)
    assert demo.demo_config(tmp_path, None).to_dict() == expected.to_dict()
    expected.total_steps = 7
    assert demo.demo_config(tmp_path, 7).to_dict() == expected.to_dict()


def test_the_model_block_of_another_name_keeps_the_fields_both_have():
    seed = config_lib.model_config("seed_cnn")
    seed.dtype = "bfloat16"
    block = config_lib.model_block_for(seed, "resnet18")
    want = config_lib.model_config("resnet18")
    want.dtype = "bfloat16"
    assert block.to_dict() == want.to_dict()
    densenet = config_lib.model_config("densenet121")
    densenet.update(dropout=0.25, init_from="w.safetensors")
    assert config_lib.model_block_for(densenet, "resnet50").to_dict() == {
        **densenet.to_dict(), "name": "resnet50"}


def test_a_missing_field_is_named_with_the_models_that_have_it():
    config = config_lib.base_config()
    assert config_lib.missing_field(config, "model.filters") == ""
    assert config_lib.missing_field(config, "data.channels") == ""
    assert config_lib.missing_field(config, "model.init_from") == (
        "not a field of the seed_cnn model block, but of resnet18, resnet34, resnet50, "
        "densenet121, densenet169, inception_v3, seresnext50_32x4d, xception, efficientnet_b0, "
        "efficientnet_b4, convnext_tiny, vit_small_patch16, vit_base_patch16's: add "
        "--config.model.name=resnet18")
    assert config_lib.missing_field(config, "model.pool") == (
        "not a field of the seed_cnn model block, but of vit_small_patch16, "
        "vit_base_patch16's: add --config.model.name=vit_small_patch16")
    assert config_lib.missing_field(config, "model.foo").startswith(
        "no model block has a field 'foo' (the seed_cnn block's: dtype, filters,")
    assert config_lib.missing_field(config, "optimizer.lr").startswith(
        "config.optimizer has no field 'lr' (its fields: b1, b2, decay,")
    assert config_lib.missing_field(config, "batchsize").startswith(
        "the config has no field 'batchsize' (its fields: augment, batch_size,")


def test_a_backbone_run_saved_with_the_seed_block_resumes_with_its_own_block(tmp_path):
    """Before ``--config.model.name`` brought its block, a backbone named on a seed-CNN
    config saved the seed's fields (which it ignores): resuming with the backbone's block
    compares only the fields the backbone uses, at their defaults where absent."""
    from etils import epath

    from hpajax import workdir

    config = config_lib.base_config()
    config.model.name = "resnet18"  # the old way: the seed block, renamed
    workdir.save_config(config, epath.Path(tmp_path), resuming=False)
    config.model = config_lib.model_config("resnet18")
    workdir.save_config(config, epath.Path(tmp_path), resuming=True)
    config.model.dropout = 0.5  # a field the backbone uses
    with pytest.raises(ValueError, match=r"config.model.dropout=0.5 does not match .* 0.0"):
        workdir.save_config(config, epath.Path(tmp_path), resuming=True)
    seed = config_lib.base_config()
    seed.model.filters = (8, 16, 32, 64)
    with pytest.raises(ValueError, match=r"config.model.name='seed_cnn' does not match"):
        workdir.save_config(seed, epath.Path(tmp_path), resuming=True)

