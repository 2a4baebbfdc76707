"""Stores on S3, for real: TensorStore's s3 driver and s3fs talk HTTP to a local
S3-compatible server (moto, ``s3_bucket``); nothing is mocked.

A store converted into the bucket must be byte for byte the store converted to
a local folder, however the conversion was interrupted; every command then reads
it as it reads a local one, and bad buckets, endpoints and URLs fail fast and
clearly, creating nothing locally.
"""

import json
import signal
import subprocess

import numpy as np
import pytest
from conftest import PYTHON, REPO, synthetic_store, tiny_config, write_csv, write_quads

from hpajax import train
from hpajax.data import open_store, split, summary
from hpajax.data import store as storelib
from hpajax.files import files_under
from hpajax.records import read_records

pytestmark = pytest.mark.usefixtures("s3_bucket")

CONVERT = [PYTHON, str(REPO / "tools" / "convert.py"), "--image_size=32", "--shard_samples=4"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """40 labeled 32 px quads, one corrupt (for --skip_bad), and their label file."""
    root = tmp_path_factory.mktemp("raw")
    ids = [f"s{i:03d}" for i in range(40)]
    write_quads(root / "train", ids, seed=5)
    csv = write_csv(root / "train.csv", [(i, f"{k % 28} {(k * 3) % 28}")
                                         for k, i in enumerate(ids)])
    bad = root / "bad"
    write_quads(bad, ids[:12], seed=6)
    (bad / f"{ids[3]}_green.png").write_bytes(b"not a png")
    write_csv(root / "bad.csv", [(i, "0") for i in ids[:12]])
    return root


def tree(location) -> dict:
    """Every file's (object's) bytes under a store, its metadata less the command line."""
    out = {}
    for f in files_under(location):
        data = f.read_bytes()
        if f.name == storelib.METADATA:
            meta = {k: v for k, v in json.loads(data).items() if k != "command"}
            data = json.dumps(meta, sort_keys=True).encode()
        out[str(f.relative_to(location))] = data
    return out


def convert_args(raw, name: str, out: str) -> list[str]:
    return [f"--input_dir={raw / name}", f"--labels_csv={raw / f'{name}.csv'}",
            f"--output_dir={out}"]


@pytest.fixture(scope="module")
def local_store(raw):
    r = subprocess.run([*CONVERT, *convert_args(raw, "train", raw / "local")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return raw / "local"


def test_a_store_converted_into_s3_is_the_local_store_and_reads_the_same(raw, local_store,
                                                                         s3_bucket):
    url = f"{s3_bucket}/stores/train"
    r = subprocess.run([*CONVERT, "--workers=2", *convert_args(raw, "train", url)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"wrote 40 samples to {url}" in r.stdout
    assert tree(url) == tree(local_store)
    assert not any(p.name.startswith("s3") for p in REPO.iterdir())  # no local "s3:" folder
    remote, local = open_store(url), open_store(local_store)
    assert str(remote.path) == url and remote.ids == local.ids
    np.testing.assert_array_equal(remote.labels, local.labels)
    np.testing.assert_array_equal(remote.images[:].read().result(),
                                  local.images[:].read().result())
    assert "already converted 40 samples" in subprocess.run(
        [*CONVERT, *convert_args(raw, "train", url)], capture_output=True, text=True).stdout
    assert f"store      {url}" in summary.describe(remote)


KILL_AT_THIRD_SHARD = r"""
import os, runpy, signal, sys
from hpajax.data import store
calls = [0]
def killing(fn):
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapped
store.write_json = killing(store.write_json)  # the progress object after the 2nd shard
sys.argv = ["convert"] + sys.argv[1:]
runpy.run_path("tools/convert.py", run_name="__main__")
"""


def test_sigkill_mid_conversion_into_s3_then_resume_gives_the_same_store(raw, local_store,
                                                                          s3_bucket):
    url = f"{s3_bucket}/stores/killed"
    args = ["--image_size=32", "--shard_samples=4", *convert_args(raw, "train", url)]
    proc = subprocess.run([PYTHON, "-c", KILL_AT_THIRD_SHARD, *args], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with pytest.raises(storelib.StoreError, match="unfinished conversion"):
        open_store(url)
    r = subprocess.run([*CONVERT, *convert_args(raw, "train", url)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "Resuming the conversion" in r.stdout, r.stderr
    assert tree(url) == tree(local_store)


def test_bad_samples_are_compacted_away_on_s3_as_locally(raw, s3_bucket):
    url = f"{s3_bucket}/stores/bad"
    for out in (raw / "bad_local", url):
        r = subprocess.run([*CONVERT, "--skip_bad", *convert_args(raw, "bad", out)],
                           capture_output=True, text=True)
        assert r.returncode == 0 and "1 bad sample(s) skipped" in r.stdout, r.stderr
    assert tree(url) == tree(raw / "bad_local")
    assert len(open_store(url)) == 11 and "s003" not in open_store(url).ids


def test_a_split_of_an_s3_store_is_the_split_of_the_local_one(raw, local_store, s3_bucket):
    url = f"{s3_bucket}/stores/split"
    assert subprocess.run([*CONVERT, *convert_args(raw, "train", url)]).returncode == 0
    r = subprocess.run([PYTHON, str(REPO / "tools" / "split.py"), f"--store={url}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    split.split_store(local_store)
    assert open_store(url).split_names() == ["default"]
    remote, local = open_store(url).split(), open_store(local_store).split()
    assert remote.keys() == local.keys()
    for part in local:
        np.testing.assert_array_equal(remote[part], local[part])


# ----------------------------------------------------------- failures


def test_a_missing_bucket_is_a_clear_error_naming_the_url(raw, s3_bucket):
    with pytest.raises(storelib.StoreError, match="s3://no-such-bucket/store"):
        open_store("s3://no-such-bucket/store")
    r = subprocess.run([*CONVERT, *convert_args(raw, "train", "s3://no-such-bucket/st")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "s3://no-such-bucket/st" in r.stderr, r.stderr[-2000:]


def test_an_unreachable_endpoint_fails_within_bounded_retries(monkeypatch, local_store):
    import socket

    import s3fs
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(storelib.StoreError, match="s3://hpajax-tests/anything"):
            open_store("s3://hpajax-tests/anything")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("url", ["http://host/store", "ftp://host/store", "hdfs://nn/store"])
def test_other_schemes_are_refused_by_name_and_create_nothing(tmp_path, url):
    r = subprocess.run([PYTHON, str(REPO / "tools" / "convert.py"), f"--input_dir={tmp_path}",
                        f"--output_dir={url}"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and f"--output_dir={url}" in r.stderr
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------- training from S3

STEPS = {"total_steps": 12, "log_every": 2, "eval_every": 6, "checkpoint_every": 3}


@pytest.fixture(scope="module")
def synthetic_stores(tmp_path_factory, s3_bucket):
    """One synthetic set converted to a local folder and into the bucket, split alike."""
    local = synthetic_store(tmp_path_factory.mktemp("synthetic"), 48, 80)
    url = f"{s3_bucket}/stores/synthetic"
    raw = local.parent / "raw"
    r = subprocess.run([PYTHON, str(REPO / "tools" / "convert.py"), "--image_size=80",
                        f"--input_dir={raw / 'train'}", f"--labels_csv={raw / 'train.csv'}",
                        f"--output_dir={url}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert subprocess.run([PYTHON, str(REPO / "tools" / "split.py"),
                           f"--store={url}"]).returncode == 0
    return local, url


def train_command(store, workdir) -> list[str]:
    return [PYTHON, "-m", "hpajax.main", "train", "--config=experiments/configs/tiny.py",
            f"--config.data.store={store}", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in STEPS.items())]


def records(workdir) -> list[dict]:
    """metrics.jsonl less the wall-clock speed."""
    return [{k: v for k, v in r.items() if k != "images_per_s"}
            for r in read_records(workdir / "metrics.jsonl")]


def test_training_from_s3_killed_and_resumed_matches_training_from_disk(synthetic_stores,
                                                                        tmp_path):
    local, url = synthetic_stores
    train.train_and_evaluate(tiny_config(local, **STEPS), str(tmp_path / "disk"))
    killed = subprocess.Popen(train_command(url, tmp_path / "s3"), cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for line in killed.stdout:
        if "step 8/12" in line:
            killed.kill()
            break
    assert killed.wait() == -signal.SIGKILL
    r = subprocess.run(train_command(url, tmp_path / "s3"), cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-3000:]
    assert records(tmp_path / "s3") == records(tmp_path / "disk")  # same shas, losses, metrics
    assert json.loads((tmp_path / "s3" / "data.json").read_text())["store"] == url

    # evaluate and predict read the run's store from the bucket
    main = [PYTHON, "-m", "hpajax.main"]
    r = subprocess.run([*main, "evaluate", f"--workdir={tmp_path / 's3'}"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and url in r.stdout, r.stderr[-3000:]
    for name, store in (("from_s3", url), ("from_disk", local)):
        r = subprocess.run([*main, "predict", f"--workdir={tmp_path / 's3'}", f"--input={store}",
                            f"--output_dir={tmp_path / name}"], cwd=REPO, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "from_s3" / "probabilities.npy"),
                                  np.load(tmp_path / "from_disk" / "probabilities.npy"))
