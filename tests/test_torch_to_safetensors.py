"""tools/torch_to_safetensors.py: PyTorch checkpoints to safetensors (torch-free where it can).

The tests of the ``.pth`` path need torch, which is optional: they skip
without it, except in CI (``CI=true``), whose ``.ci/run`` installs torch's
CPU build, so that the path cannot go untested there.
"""

import importlib.util
import os
import subprocess
from collections import OrderedDict

import numpy as np
import pytest
from conftest import PYTHON, REPO
from safetensors import SafetensorError

from hpajax.models import weights

SCRIPT = REPO / "tools" / "torch_to_safetensors.py"
# Runs the tool with ``import torch`` failing, as where torch is not installed.
WITHOUT_TORCH = ("import runpy, sys; sys.modules['torch'] = None; sys.argv[0] = {!r}; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")


def load_module():
    """The tool as a module (its top level needs no torch)."""
    spec = importlib.util.spec_from_file_location("torch_to_safetensors", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = load_module()


def import_torch():
    """torch; a skip where it is not installed, a failure in CI (where .ci/run installs it)."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but torch is not installed: .ci/run installs its CPU build "
                        "so that CI tests the .pth path")
        pytest.skip("torch is not installed (optional: pip install -e '.[torch]')")
    return torch


def run(*args, cwd, torch: bool = True) -> subprocess.CompletedProcess:
    command = [str(SCRIPT)] if torch else ["-c", WITHOUT_TORCH.format(str(SCRIPT))]
    return subprocess.run([PYTHON, *command, *args], capture_output=True, text=True, cwd=cwd)


def test_without_torch_it_says_how_to_install_it(tmp_path):
    (tmp_path / "resnet18.pth").write_bytes(b"anything")
    r = run("--input=resnet18.pth", "--output=resnet18.safetensors", cwd=tmp_path, torch=False)
    assert r.returncode != 0
    assert "needs torch" in r.stderr and "pip install -e '.[torch]'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet18.pth"]


@pytest.mark.parametrize("args, named", [
    (["--output=w.safetensors"], "--input"),                               # required
    (["--input=w.pth"], "--output"),                                       # required
    (["--input=w.pth", "--output=w.pt"], "--output must end with .safetensors"),
    (["--input=w.pth", "--output=w.safetensors", "stray"], "unexpected arguments: stray"),
    (["--input=w.pth", "--output=w.safetensors"], "--input=w.pth: no such file"),
])
def test_a_missing_or_bad_flag_is_named(tmp_path, args, named):
    r = run(*args, cwd=tmp_path)
    assert r.returncode != 0 and named in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())


def test_a_nested_state_dict_becomes_plain_arrays_and_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    state = {"module.conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float16),
             "module.bn1.running_mean": rng.standard_normal(4).astype(np.float32),
             "module.bn1.num_batches_tracked": np.array(7, np.int64),
             "module.fc.weight": rng.standard_normal((3, 5)).T,  # float64, not contiguous
             "module.note": "not a tensor"}
    arrays, skipped = tool.clean_state({"epoch": 3, "state_dict": state})
    assert list(arrays) == ["conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked",
                            "fc.weight"]
    assert skipped == ["skipped module.note: str, not a tensor"]
    assert arrays["conv1.weight"].dtype == np.float32
    assert arrays["bn1.num_batches_tracked"].dtype == np.int64
    assert arrays["fc.weight"].dtype == np.float64 and arrays["fc.weight"].flags.c_contiguous
    path = tmp_path / "w.safetensors"
    tool.write_atomically(arrays, str(path))
    back = weights.read_safetensors(path)
    assert sorted(back) == sorted(arrays)
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            name = key.removeprefix("module.")
            assert back[name].dtype == arrays[name].dtype
            np.testing.assert_array_equal(back[name], value.astype(arrays[name].dtype))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_unwrapping_and_prefixes():
    weight = np.ones((2, 2), np.float32)
    assert list(tool.clean_state({"model": {"state_dict": {"a.weight": weight}}})[0]) == \
        ["a.weight"]
    # A prefix only some keys have is a layer's name, kept.
    assert list(tool.clean_state({"module.a": weight, "b": weight})[0]) == ["module.a", "b"]
    with pytest.raises(ValueError, match="no tensors found"):
        tool.clean_state({"state_dict": {"epoch": 3}})
    with pytest.raises(ValueError, match="holds a list, not a dict of tensors"):
        tool.clean_state([weight])
    assert tool.count_parameters({"bn.running_var": weight, "bn.weight": weight}) == 4


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(SafetensorError):
        tool.write_atomically({"a": np.array([1 + 2j])}, str(tmp_path / "w.safetensors"))
    assert not list(tmp_path.iterdir())


def test_a_torch_checkpoint_converts_exactly(tmp_path):
    torch = import_torch()
    generator = torch.Generator().manual_seed(0)
    state = OrderedDict([
        ("module.conv1.weight", torch.randn(4, 3, 3, 3, generator=generator)),
        ("module.bn1.weight", torch.randn(4, generator=generator).half()),
        ("module.bn1.bias", torch.randn(4, generator=generator).bfloat16()),
        ("module.bn1.num_batches_tracked", torch.tensor(12, dtype=torch.int64)),
        ("module.fc.weight", torch.randn(5, 3, generator=generator).t()),  # not contiguous
        ("module.extra", 3)])
    torch.save({"epoch": 2, "state_dict": state}, tmp_path / "ckpt.pth")
    r = run("--input=ckpt.pth", "--output=w.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "wrote 5 tensors, 131 parameters to w.safetensors\n"
    assert "skipped module.extra: int, not a tensor" in r.stderr
    back = weights.read_safetensors(tmp_path / "w.safetensors")
    assert sorted(back) == sorted(k.removeprefix("module.") for k in state if k != "module.extra")
    for key, tensor in state.items():
        if isinstance(tensor, torch.Tensor):
            expected = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
            got = back[key.removeprefix("module.")]
            assert got.dtype == expected.dtype, key
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind, why", [
    ("junk", "cannot read it as a torch checkpoint"),
    ("no tensors", "no tensors found in it"),
    ("a whole model", "it pickles a torch.nn.modules.linear.Linear, not just tensors"),
])
def test_a_bad_checkpoint_is_a_clear_error(tmp_path, kind, why):
    torch = import_torch()
    path = tmp_path / "bad.pth"
    if kind == "junk":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save({"no tensors": {"state_dict": {"epoch": 1}},
                    "a whole model": torch.nn.Linear(2, 2)}[kind], path)
    r = run("--input=bad.pth", "--output=w.safetensors", cwd=tmp_path)
    assert r.returncode != 0
    assert f"--input=bad.pth: {why}" in r.stderr, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["bad.pth"]
