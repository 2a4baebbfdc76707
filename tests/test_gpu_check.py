"""experiments/gpu_check.py: its --smoke run on the CPU prints every figure of the GPU check."""

import importlib.util
import json
import os
import subprocess

import pytest

from conftest import PYTHON, REPO

from hpajax import config as config_lib

SCRIPT = REPO / "experiments" / "gpu_check.py"
RATES = {"train": "img_per_s", "eval": "img_per_s", "pipeline": "samples_per_s"}


def load_module():
    """experiments/gpu_check.py as a module (its top level imports the standard library only)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lines(tmp_path_factory) -> list[dict]:
    workdir = tmp_path_factory.mktemp("gpu_check")
    # Without the PyTorch reference (--torch=no), which would time torch's CPU build
    # (installed by .ci/run for the weight converter) and double the run.
    proc = subprocess.run([PYTHON, str(SCRIPT), "--smoke", "--time_limit=240", "--torch=no",
                           f"--workdir={workdir}"], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def find(lines: list[dict], figure: str, **fields) -> list[dict]:
    return [r for r in lines if r["figure"] == figure
            and all(r.get(k) == v for k, v in fields.items())]


def test_the_first_line_gives_the_versions_and_devices(lines):
    first = lines[0]
    assert first["figure"] == "versions"
    for name in ("python", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
                 "tensorstore", "ml-collections", "tensorboardX"):
        assert first[name], name
    assert first["device_kind"] == "cpu" and first["device_count"] >= 1
    assert ("torch" in first) == (importlib.util.find_spec("torch") is not None)


def test_every_figure_is_there_with_positive_numbers_and_no_device_memory_on_cpu(lines):
    assert not find(lines, "error") and not find(lines, "skip")
    assert find(lines, "store")[0]["samples"] == 24
    seed = {"model": "seed_cnn", "dtype": "float32", "batch": 8}
    for path in ("device", "loop"):
        for figure in ("train", "eval"):
            (rate,) = find(lines, figure, impl="jax", path=path, **seed)
            assert rate["img_per_s"] > 0 and rate["size"] == 80
    for what in ("train", "eval"):
        (compile_,) = find(lines, "compile", what=what, **seed)
        assert compile_["seconds"] > 0
    assert len(find(lines, "host_overhead", **seed)) == 1
    memory = find(lines, "memory", **seed)
    assert [m["after"] for m in memory] == ["eval", "train", "loop"]
    assert all(m["peak_bytes"] is None for m in memory)
    assert sorted(p["workers"] for p in find(lines, "pipeline")) == [0, 2]
    assert all(p["samples_per_s"] > 0 for p in find(lines, "pipeline"))
    assert lines[-1]["figure"] == "done" and lines[-1]["failed"] is False


def test_the_smoke_run_times_resnet18_on_the_device_path_only(lines):
    backbone = {"model": "resnet18", "dtype": "float32", "batch": 8, "size": 80}
    for figure in ("train", "eval"):
        (rate,) = find(lines, figure, impl="jax", **backbone)
        assert rate["img_per_s"] > 0 and rate["path"] == "device"
        (compile_,) = find(lines, "compile", what=figure, **backbone)
        assert compile_["seconds"] > 0
    assert [m["after"] for m in find(lines, "memory", **backbone)] == ["eval", "train"]
    config = [r["config"] for r in lines if r.get("model") == "resnet18"]
    assert set(config) == {"jax:resnet18:float32:8"}
    seed = [r for r in lines if r.get("config", "").startswith("jax:seed_cnn")]
    assert seed and all(r["model"] == "seed_cnn" for r in seed)
    assert lines.index(seed[-1]) < lines.index(find(lines, "eval", model="resnet18")[0])


def test_every_line_says_what_it_is_and_where_it_ran(lines):
    for record in lines:
        assert record["bench"] == "gpu_check"
        assert record["device_kind"] == "cpu" and record["jax"] == lines[0]["jax"]
        if record["figure"] in RATES:
            assert record[RATES[record["figure"]]] > 0 and record["batch"] > 0
        if record["figure"] in ("train", "eval"):
            assert record["dtype"] in ("float32", "bfloat16") and record["impl"]


def test_the_full_run_covers_both_dtypes_both_batches_the_backbones_and_the_pipeline_workers():
    gpu_check = load_module()
    args = gpu_check.parse_args([])
    names = gpu_check.configurations(args)
    assert args.size == 512 and args.time_limit <= 8 * 60
    seed = [f"jax:seed_cnn:{dtype}:{batch}" for batch in (64, 256)
            for dtype in ("bfloat16", "float32")]
    assert sorted(gpu_check.BACKBONE_ORDER) == sorted(config_lib.BACKBONES)  # every one
    assert gpu_check.BACKBONE_ORDER[:3] == ("densenet121", "seresnext50_32x4d", "inception_v3")
    backbones = [f"jax:{name}:bfloat16:64" for name in gpu_check.BACKBONE_ORDER]
    jax = [name for name in names if name.startswith("jax:")]
    assert jax == seed + backbones  # the seed's first, the backbones in bfloat16 at batch 64
    assert names[0] == "store" and f"pipeline:{os.cpu_count()}" in names
    assert "pipeline:0" in names
    assert ("torch:bfloat16:256" in names) == (importlib.util.find_spec("torch") is not None)
    one = gpu_check.configurations(gpu_check.parse_args(["--model=resnet50"]))
    assert [name for name in one if name.startswith("jax:")] == ["jax:resnet50:bfloat16:64"]


def test_a_failed_or_hung_configuration_becomes_an_error_line(tmp_path):
    gpu_check = load_module()
    lines, error = gpu_check.run_child(["--smoke"], "nonsense", 60, str(tmp_path))
    assert lines == [] and error["reason"] == "exit status 1"
    assert "unknown configuration 'nonsense'" in error["tail"]
    lines, error = gpu_check.run_child(["--smoke"], "versions", 0.01, str(tmp_path))
    assert error["reason"].startswith("timed out")


def test_out_of_memory_errors_are_told_apart():
    gpu_check = load_module()
    assert gpu_check.is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory while "
                                                   "trying to allocate 1.0GiB"))
    assert gpu_check.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not gpu_check.is_out_of_memory(ValueError("shapes do not match"))
