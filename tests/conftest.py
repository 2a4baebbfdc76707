"""Shared test helpers: repository paths and tiny Kaggle-layout data sets."""

import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

# gcsfs against the local GCS emulator (``gcs_bucket``): anonymous, and without its
# gRPC bucket-type lookup, which the emulator cannot answer; both are read when fsspec
# and gcsfs are imported, so they are set before anything imports them.
os.environ.update(FSSPEC_GCS_TOKEN="anon", GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")

from hpajax import xla_defaults  # noqa: E402

# The XLA:CPU flags main() applies: in-process results then match the
# command-line runs bit for bit, and the suite runs at the users' speed.
xla_defaults.apply_cpu_defaults()
# Compilation is most of the suite's time. The tests (and the commands they start, which
# inherit the environment) compile their elementwise fusions with XLA:CPU's loop emitters
# instead of its newer MLIR fusion emitters, and with JAX's "disable most optimizations"
# (LLVM's optimization level 0, no expensive passes): programs that then run a few tiny
# steps compile in less than half the time (BENCHMARKS.md, "Test suite"). The tests whose
# steps cost more than their compilation (ResNet-18's) or whose tolerances were measured
# at level 1 run at level 1 (the ``optimized`` fixture, or the variable set to false in a
# command's environment). Results differ from the users' defaults within
# rounding, as on another CPU; runs on one machine stay bitwise equal, which is all the
# tests compare bitwise.
SUITE_XLA_FLAGS = "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SUITE_XLA_FLAGS}".strip()
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"


@pytest.fixture(scope="module")
def optimized():
    """LLVM's level 1 for the module's programs, in-process and in the commands it starts."""
    import jax  # noqa: PLC0415  (imported by the tests anyway; conftest stays JAX-free)

    jax.config.update("jax_disable_most_optimizations", False)
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "false"
    yield
    jax.config.update("jax_disable_most_optimizations", True)
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"


# One JAX persistent compilation cache for the whole session, empty at its
# start: the tests and every `python -m hpajax.main` they start compile the
# same few tiny programs, and XLA:CPU compilation is most of their time. Set
# in the environment before anything imports JAX, so subprocesses inherit it;
# pytest-xdist's workers inherit the controller's (HPAJAX_TEST_JAX_CACHE).
_WORKER = "PYTEST_XDIST_WORKER" in os.environ
JAX_CACHE = (os.environ["HPAJAX_TEST_JAX_CACHE"] if _WORKER
             else tempfile.mkdtemp(prefix="hpajax-tests-jax-cache-"))
os.environ.update(HPAJAX_TEST_JAX_CACHE=JAX_CACHE, JAX_COMPILATION_CACHE_DIR=JAX_CACHE,
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def pytest_unconfigure(config) -> None:
    if not _WORKER:
        shutil.rmtree(JAX_CACHE, ignore_errors=True)


REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # the real files the tests read; see its SOURCES.md
# The team's folder beside the checkout; a user's clone has none, so no test may read it.
SIBLING_SHARED = REPO.parent / "shared"
PYTHON = sys.executable
CHANNELS = ("red", "green", "blue", "yellow")


# The slowest files first (from `pytest --durations=0`): pytest-xdist hands
# files to its workers in collection order, so starting with these keeps a
# worker from picking up a long file near the end while the other idles.
_SLOWEST_FIRST = ("test_backbone_runs.py", "test_object_storage.py", "test_multihost.py",
                  "test_backbones.py", "test_faults.py", "test_demo.py", "test_cv.py",
                  "test_export.py", "test_commands.py", "test_gpu_check.py",
                  "test_compare_backbones.py", "test_split.py", "test_ensemble.py",
                  "test_recipes.py", "test_sweep.py", "test_train.py",
                  "test_efficientnet.py", "test_inception.py", "test_resnet.py",
                  "test_vit.py", "test_seresnext.py", "test_xception.py", "test_convnext.py",
                  "test_model.py", "test_report.py", "test_convert.py", "test_augment.py",
                  "test_ingredients.py", "test_densenet.py", "test_weights.py")


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        name = item.path.name
        return _SLOWEST_FIRST.index(name) if name in _SLOWEST_FIRST else len(_SLOWEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order


def _refuse_sibling_shared(event: str, args: tuple) -> None:
    """Audit hook: opening or listing anything under ``SIBLING_SHARED`` fails the test."""
    if event not in ("open", "os.listdir", "os.scandir") or not args:
        return
    if isinstance(args[0], (str, pathlib.PurePath)):
        path = os.path.abspath(args[0])
        if path == str(SIBLING_SHARED) or path.startswith(f"{SIBLING_SHARED}{os.sep}"):
            raise PermissionError(f"{path}: outside the repository; tests read tests/data/")


sys.addaudithook(_refuse_sibling_shared)


def write_quads(directory: pathlib.Path, ids, size: int = 32, seed: int = 0) -> dict:
    """Writes random 8-bit PNG quads; returns {id: uint8 [size, size, 4]}."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for sample_id in ids:
        arr = rng.integers(0, 80, (size, size, 4), dtype=np.uint8)
        for c, name in enumerate(CHANNELS):
            Image.fromarray(arr[..., c]).save(directory / f"{sample_id}_{name}.png")
        arrays[sample_id] = arr
    return arrays


# tools/convert.py, SIGKILLed at the N-th call of a hook: python -c CONVERT_KILLER HOOK N ARGS
CONVERT_KILLER = r"""
import os, runpy, signal, sys
from hpajax.data import convert, store
hook, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def killing(fn):
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapped
if hook == "shard":     # workers writing shards, the progress not yet recorded
    store.write_json = killing(store.write_json)
elif hook == "replace": # a progress file written but not yet renamed into place
    os.replace = killing(os.replace)
else:                   # compacted images written, not yet copied back
    store.create_images = killing(store.create_images)
sys.argv = ["convert"] + sys.argv[3:]
runpy.run_path("tools/convert.py", run_name="__main__")  # the tool, as a script
"""


def store_tree(location) -> dict:
    """Every file's (object's) bytes under a store (local or in a bucket), keyed by its
    path in the store; the metadata less the command line that made it."""
    import json

    from hpajax.files import files_under

    out = {}
    for f in files_under(location):
        data = f.read_bytes()
        if f.name == "metadata.json":
            meta = {k: v for k, v in json.loads(data).items() if k != "command"}
            data = json.dumps(meta, sort_keys=True).encode()
        out[str(f.relative_to(location))] = data
    return out


def run_records(workdir) -> list[dict]:
    """A run's metrics.jsonl (local or in a bucket) less the wall-clock speed, every line
    parsed: a torn line fails the comparison instead of being dropped."""
    import json

    from etils import epath

    lines = epath.Path(f"{workdir}/metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
            for line in lines]


def records(workdir, split: str) -> list[dict]:
    """``run_records``' lines of one split: "train", "val" or "checkpoint"."""
    return [r for r in run_records(workdir) if r["split"] == split]


def write_csv(path: pathlib.Path, rows) -> pathlib.Path:
    """Writes an Id,Target file from (id, target-string) rows."""
    path.write_text("Id,Target\n" + "".join(f"{i},{t}\n" for i, t in rows))
    return path


def synthetic_store(root: pathlib.Path, num_samples: int, size: int, seed: int = 0,
                    **split_kw) -> pathlib.Path:
    """A synthetic Kaggle-layout set in ``root/raw``, converted to ``root/store`` and split."""
    from hpajax import synthetic

    synthetic.generate(root / "raw", num_samples, image_size=size, seed=seed, workers=1)
    return convert_and_split(root / "raw", root / "store", size, **split_kw)


def convert_and_split(raw: pathlib.Path, out, size: int, **split_kw):
    """The Kaggle-layout set in ``raw`` converted in-process to ``out`` (a folder or a
    bucket URL) and split; returns ``out``."""
    from hpajax.data import convert, split

    convert.convert(convert.Options(format="kaggle", input_dir=raw / "train", output_dir=out,
                                    labels_csv=raw / "train.csv", image_size=size, workers=1))
    split.split_store(out, **split_kw)
    return out


# tiny_config overrides that turn the geometric augmentation (bilinear resampling, flips)
# off: a steadier loss, and programs the tests that use them compile once per suite.
RESAMPLING_OFF = {f"augment.{op}": False for op in ("rotate", "zoom", "hflip", "vflip")}


def tiny_config(store: pathlib.Path, **overrides):
    """experiments/configs/tiny.py on ``store``, with flattened overrides."""
    import runpy

    config = runpy.run_path(str(REPO / "experiments" / "configs" / "tiny.py"))["get_config"]()
    config.data.store = str(store)
    config.update_from_flattened_dict(overrides)
    return config


@pytest.fixture
def kaggle_set(tmp_path):
    """24 labeled 32 px samples in the Kaggle layout."""
    ids = [f"s{i:03d}" for i in range(24)]
    arrays = write_quads(tmp_path / "train", ids)
    rows = [(i, f"{k % 28} {(k * 5) % 28}") for k, i in enumerate(ids)]
    return tmp_path / "train", write_csv(tmp_path / "train.csv", rows), arrays


@pytest.fixture(scope="module")
def s3_bucket():
    """A fresh bucket on a local S3-compatible server (moto, on 127.0.0.1), with the
    standard AWS variables pointing at it for this process and its subprocesses;
    yields its URL, ``s3://hpajax-tests``."""
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}",
                            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_REGION": "us-east-1"}.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches clients with their endpoint
        boto3.client("s3").create_bucket(Bucket="hpajax-tests")
        yield "s3://hpajax-tests"
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture(scope="module")
def gcs_bucket():
    """A fresh bucket on a local GCS emulator (gcp-storage-emulator, on 127.0.0.1), with
    the endpoint overrides TensorStore (``TENSORSTORE_GCS_HTTP_URL``) and gcsfs and
    google-cloud-storage (``STORAGE_EMULATOR_HOST``) document for emulators set for this
    process and its subprocesses; yields its URL, ``gs://hpajax-tests``.

    The emulator serves ``bytes=START-END`` ranges only and sends no
    ``x-goog-generation`` header: it is taught the suffix ranges (``bytes=-N``, RFC
    9110) with which TensorStore reads shard indices, and the header, which
    TensorStore's ranged reads require.
    """
    import gcsfs
    from gcp_storage_emulator.handlers import objects
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket="hpajax-tests")
    server.start()
    url = f"http://127.0.0.1:{server._api._httpd.server_address[1]}"
    with pytest.MonkeyPatch.context() as env:
        env.setattr(objects, "download", _with_suffix_ranges(objects.download))
        env.setenv("TENSORSTORE_GCS_HTTP_URL", url)
        env.setenv("STORAGE_EMULATOR_HOST", url)
        env.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # TensorStore: no credentials
        gcsfs.GCSFileSystem.clear_instance_cache()
        yield "gs://hpajax-tests"
    gcsfs.GCSFileSystem.clear_instance_cache()
    server.stop()


def _with_suffix_ranges(download):
    """The emulator's object download, also serving ``Range: bytes=-N`` (the last N bytes)
    and sending the object's generation."""
    import re

    def serve(request, response, storage, *args, **kwargs):
        headers = request._request_handler.headers
        suffix = re.fullmatch(r"\s*bytes=-(\d+)\s*", headers.get("range", ""))
        where = request.params["bucket_name"], request.params["object_id"]
        try:
            if suffix:
                size = len(storage.get_file(*where))
                headers.replace_header("range", f"bytes={max(size - int(suffix[1]), 0)}-")
            response["x-goog-generation"] = str(storage.get_file_obj(*where)["generation"])
        except Exception:  # noqa: BLE001  a missing object: the download says so
            pass
        return download(request, response, storage, *args, **kwargs)

    return serve


def predict_outside(images: np.ndarray, folders: dict[str, pathlib.Path],
                    tmp: pathlib.Path) -> dict[str, np.ndarray]:
    """Exported models' probabilities of ``images`` in a process that can import only jax,
    numpy, onnxruntime and their dependencies (tests/exported_outside.py), compiled at
    LLVM's level 0 (the suite's default): "NAME/ENGINE/BATCH" -> [N, 28]."""
    import subprocess

    np.save(tmp / "images.npy", images)
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "true"}
    r = subprocess.run([PYTHON, str(REPO / "tests" / "exported_outside.py"),
                        str(tmp / "images.npy"), str(tmp / "outside.npz"),
                        *(f"{name}={folder}" for name, folder in folders.items())],
                       capture_output=True, text=True, cwd=tmp, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(tmp / "outside.npz"))
