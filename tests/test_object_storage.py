"""Stores on s3:// and gs://, and run folders on gs://, for real: TensorStore's s3 and
gcs drivers, s3fs, gcsfs and Orbax talk HTTP to local servers (moto's S3,
``s3_bucket``; gcp-storage-emulator, ``gcs_bucket``); nothing is mocked.

A store converted into a bucket must be byte for byte the store converted to a
local folder, however the conversion was interrupted; every command then reads it
as it reads a local one; a run trained from it (on gs:// with its workdir there
too), killed and resumed, matches a run on disk; and bad buckets, endpoints and
URLs fail fast and clearly, creating nothing locally.
"""

import io
import json
import shutil
import signal
import socket
import subprocess

import numpy as np
import pytest
from conftest import (CONVERT_KILLER, PYTHON, REPO, convert_and_split, run_records, store_tree,
                      synthetic_store, tiny_config, write_csv, write_quads)
from etils import epath

from hpajax import commands, train
from hpajax.data import open_store, split, summary
from hpajax.data.run_data import open_run_data
from hpajax.data import store as storelib

CONVERT = [PYTHON, str(REPO / "tools" / "convert.py"), "--image_size=32", "--shard_samples=4"]


@pytest.fixture(scope="module", params=["s3", "gs"])
def bucket(request) -> str:
    """Each test runs against each server: the URL of its bucket."""
    return request.getfixturevalue({"s3": "s3_bucket", "gs": "gcs_bucket"}[request.param])


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """40 labeled 32 px quads; 12 more, one corrupt (for --skip_bad); their label files."""
    root = tmp_path_factory.mktemp("raw")
    ids = [f"s{i:03d}" for i in range(40)]
    write_quads(root / "train", ids, seed=5)
    write_csv(root / "train.csv", [(i, f"{k % 28} {(k * 3) % 28}") for k, i in enumerate(ids)])
    write_quads(root / "bad", ids[:12], seed=6)
    (root / "bad" / f"{ids[3]}_green.png").write_bytes(b"not a png")
    write_csv(root / "bad.csv", [(i, "0") for i in ids[:12]])
    return root


def convert_args(raw, name: str, out) -> list[str]:
    return [f"--input_dir={raw / name}", f"--labels_csv={raw / f'{name}.csv'}",
            f"--output_dir={out}"]


def run(command: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def local_store(raw):
    r = run([*CONVERT, *convert_args(raw, "train", raw / "local")])
    assert r.returncode == 0, r.stderr
    return raw / "local"


def test_a_store_converted_into_a_bucket_is_the_local_store_and_reads_the_same(
        raw, local_store, bucket):
    url = f"{bucket}/stores/train"
    r = run([*CONVERT, "--workers=2", *convert_args(raw, "train", url)])
    assert r.returncode == 0 and f"wrote 40 samples to {url}" in r.stdout, r.stderr
    assert store_tree(url) == store_tree(local_store)
    assert not any(p.name.endswith(":") for p in REPO.iterdir())  # no local "s3:" folder
    remote, local = open_store(url), open_store(local_store)
    assert str(remote.path) == url and remote.ids == local.ids
    np.testing.assert_array_equal(remote.labels, local.labels)
    np.testing.assert_array_equal(remote.images[:].read().result(),
                                  local.images[:].read().result())
    assert "already converted 40 samples" in run([*CONVERT, *convert_args(raw, "train", url)]
                                                 ).stdout
    assert f"store      {url}" in summary.describe(remote)


def test_sigkill_mid_conversion_into_a_bucket_then_resume_gives_the_same_store(
        raw, local_store, bucket):
    url = f"{bucket}/stores/killed"
    args = ["--image_size=32", "--shard_samples=4", *convert_args(raw, "train", url)]
    killed = run([PYTHON, "-c", CONVERT_KILLER, "shard", "3", *args])  # after the 2nd shard
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with pytest.raises(storelib.StoreError, match="unfinished conversion"):
        open_store(url)
    r = run([*CONVERT, *convert_args(raw, "train", url)])
    assert r.returncode == 0 and "Resuming the conversion" in r.stdout, r.stderr
    assert store_tree(url) == store_tree(local_store)


def test_bad_samples_are_compacted_away_in_a_bucket_as_locally(raw, bucket, tmp_path):
    url = f"{bucket}/stores/bad"
    for out in (tmp_path / "bad", url):
        r = run([*CONVERT, "--skip_bad", *convert_args(raw, "bad", out)])
        assert r.returncode == 0 and "1 bad sample(s) skipped" in r.stdout, r.stderr
    assert store_tree(url) == store_tree(tmp_path / "bad")
    assert len(open_store(url)) == 11 and "s003" not in open_store(url).ids


def test_a_split_of_a_bucket_store_is_the_split_of_the_local_one(raw, local_store, bucket,
                                                                 tmp_path):
    url = f"{bucket}/stores/split"
    assert run([*CONVERT, *convert_args(raw, "train", url)]).returncode == 0
    r = run([PYTHON, str(REPO / "tools" / "split.py"), f"--store={url}"])
    assert r.returncode == 0, r.stderr
    local_copy = shutil.copytree(local_store, tmp_path / "local")  # others compare the store
    split.split_store(local_copy)
    assert open_store(url).split_names() == ["default"]
    remote, local = open_store(url).split(), open_store(local_copy).split()
    assert remote.keys() == local.keys()
    for part in local:
        np.testing.assert_array_equal(remote[part], local[part])


def test_a_missing_bucket_is_a_clear_error_naming_the_url(raw, bucket):
    scheme = bucket.split("://")[0]
    with pytest.raises(storelib.StoreError, match=f"{scheme}://no-such-bucket/store"):
        open_store(f"{scheme}://no-such-bucket/store")
    r = run([*CONVERT, *convert_args(raw, "train", f"{scheme}://no-such-bucket/st")],
            timeout=120)
    assert r.returncode != 0 and f"--output_dir={scheme}://no-such-bucket/st" in r.stderr, \
        r.stderr[-2000:]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_s3_endpoint_fails_naming_the_url(monkeypatch, s3_bucket):
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(storelib.StoreError, match=f"{s3_bucket}/anything"):
            open_store(f"{s3_bucket}/anything")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_tensorstore_gives_up_on_an_unreachable_endpoint_after_bounded_retries(monkeypatch,
                                                                              s3_bucket):
    """TensorStore's defaults (32 retries, backoff up to 32 s) would stall for minutes."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ValueError, match="anything.*All 4 retry attempts failed"):
        storelib.open_images(f"{s3_bucket}/anything")


def test_training_sources_may_name_bucket_stores(raw, local_store, bucket):
    url = f"{bucket}/stores/sources"
    assert run([*CONVERT, *convert_args(raw, "train", url)]).returncode == 0
    local_copy = shutil.copytree(local_store, raw / f"sources_{bucket[:2]}")
    split.split_store(local_copy)
    config = tiny_config(local_copy)
    config.data.sources = (f"{url}:all:1", f"{local_copy}:train:2")
    data = open_run_data(config.data)
    assert [str(s.store.path) for s in data.sources] == [url, str(local_copy)]
    assert [s.weight for s in data.sources] == [1.0, 2.0] and len(data.sources[0].rows) == 40
    assert data.fingerprint()["sources"][0]["store"] == url


@pytest.mark.parametrize("url", ["http://host/store", "ftp://host/store", "hdfs://nn/store"])
def test_other_schemes_are_refused_by_name_and_create_nothing(tmp_path, url):
    r = subprocess.run([PYTHON, str(REPO / "tools" / "convert.py"), f"--input_dir={tmp_path}",
                        f"--output_dir={url}"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and f"--output_dir={url}" in r.stderr
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------- training


SIZE = 32  # the tiny seed CNN's two VALID blocks of kernel 3 need 16 px
STEPS = {"total_steps": 12, "log_every": 2, "eval_every": 6, "checkpoint_every": 3}


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    """The reference: a synthetic store on disk and a run trained on it in one go."""
    store = synthetic_store(tmp_path_factory.mktemp("synthetic"), 48, SIZE)
    workdir = tmp_path_factory.mktemp("disk_run")
    train.train_and_evaluate(tiny_config(store, **STEPS), str(workdir))
    return store, workdir


def train_command(store, workdir) -> list[str]:
    return [PYTHON, "-m", "hpajax.main", "train", "--config=experiments/configs/tiny.py",
            f"--config.data.store={store}", f"--workdir={workdir}",
            *(f"--config.{k}={v}".replace(" ", "") for k, v in STEPS.items())]


def test_a_run_from_a_bucket_killed_and_resumed_matches_the_run_on_disk(on_disk, bucket,
                                                                         tmp_path, capsys):
    """The store in the bucket; the workdir there too on gs:// (Orbax cannot write s3://)."""
    store, disk_run = on_disk
    url = f"{bucket}/stores/synthetic"
    raw = store.parent / "raw"
    # As synthetic_store made the local one (the tools' command lines into buckets are
    # tested above).
    convert_and_split(raw, url, SIZE)
    in_bucket = bucket.startswith("gs")
    workdir = epath.Path(f"{bucket}/runs/tiny" if in_bucket else tmp_path / "run")
    killed = subprocess.Popen(train_command(url, workdir), cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for line in killed.stdout:
        if "step 8/12" in line:
            killed.kill()
            break
    assert killed.wait() == -signal.SIGKILL
    capsys.readouterr()
    train.train_and_evaluate(tiny_config(url, **STEPS), str(workdir))  # as the command does
    assert "resumed from" in capsys.readouterr().out
    assert run_records(workdir) == run_records(disk_run)  # same shas, losses, metrics
    assert json.loads((workdir / "data.json").read_text())["store"] == url

    # evaluate and predict, called as the commands call them (their command lines are
    # tested on disk): the run and its store in the bucket
    commands.evaluate_command(workdir, draw_figures=in_bucket)  # figures: written by epath
    assert f"on {url}" in capsys.readouterr().out
    assert (workdir / "report" / "metrics.json").is_file()
    assert (workdir / "report" / "roc.png").is_file() == in_bucket
    for name, data in (("from_bucket", url), ("from_disk", store)):
        commands.predict_command(workdir, data, workdir / name)
    probs = [np.load(io.BytesIO((workdir / name / "probabilities.npy").read_bytes()))
             for name in ("from_bucket", "from_disk")]
    np.testing.assert_array_equal(*probs)
