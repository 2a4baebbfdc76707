"""What users type as a location: local paths, ``file://``, ``s3://`` and ``gs://`` where
supported, and a clear refusal (never a local folder named after a URL) elsewhere.

``pathlib`` turns ``s3://bucket/x`` into the local path ``s3:/bucket/x``: a
command given a URL it cannot use must say so and create nothing.
"""

import json
import os
import pathlib
import subprocess

import pytest
import tensorstore as ts
from conftest import PYTHON, REPO

from hpajax import files, workdir
from hpajax.data.store import StoreError


def test_local_path_keeps_paths_strips_file_urls_and_refuses_every_other_url(tmp_path):
    assert files.local_path("runs/x", "--input_dir") == pathlib.Path("runs/x")
    assert files.local_path(tmp_path, "--input_dir") == tmp_path
    assert files.local_path(f"file://{tmp_path}/raw", "--input_dir") == tmp_path / "raw"
    for url in ("s3://bucket/raw", "gs://bucket/raw", "http://host/x"):
        with pytest.raises(ValueError, match=f"--flag={url}: .*not supported here"):
            files.local_path(url, "--flag")


def test_object_storage_urls_stay_urls_and_other_schemes_are_refused():
    assert os.fspath(files.location("s3://bucket/a/store", "--store")) == "s3://bucket/a/store"
    assert os.fspath(files.location("GS://bucket/run", "--store")) == "gs://bucket/run"
    assert files.is_remote("s3://b/x") and files.is_remote("gs://b/x")
    assert not files.is_remote("/data/store") and not files.is_remote("file:///data")
    for url in ("http://host/store", "hdfs://nn/store", "az://c/store"):
        with pytest.raises(ValueError, match=f"--store={url}: .*not supported here"):
            files.location(url, "--store")


def test_storage_errors_are_failed_io_not_every_value_error():
    """TensorStore reports I/O failures as ValueErrors starting with a status code; a
    StoreError, a JSON error or another ValueError is no failure to read or write."""
    with pytest.raises(ValueError) as tensorstore_error:
        ts.open({"driver": "zarr3", "kvstore": {"driver": "memory"}}).result()
    assert files.is_storage_error(tensorstore_error.value)
    assert files.is_storage_error(PermissionError("read-only"))
    for error in (StoreError("labels.npy: shape (5, 28)"), json.JSONDecodeError("x", "", 0),
                  ValueError("rows out of range [0, 4)")):
        assert isinstance(error, files.storage_errors())
        assert not files.is_storage_error(error), error


def test_an_s3_workdir_is_refused_naming_the_orbax_issue(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--workdir=s3://bucket/run: .*google/orbax#359"):
        workdir.prepare("s3://bucket/run")
    with pytest.raises(ValueError, match="--workdir=s3://bucket/run"):
        workdir.load_config("s3://bucket/run")
    assert list(tmp_path.iterdir()) == []


TINY = f"--config={REPO / 'experiments' / 'configs' / 'tiny.py'}"


@pytest.mark.parametrize("command, refused, why", [
    ([str(REPO / "tools" / "convert.py"), "--format=kaggle", "--input_dir=in",
      "--output_dir=http://host/store"], "--output_dir=http://host/store", "not supported"),
    ([str(REPO / "tools" / "convert.py"), "--format=kaggle", "--input_dir=s3://b/raw",
      "--output_dir=store"], "--input_dir=s3://b/raw", "not supported"),
    (["-m", "hpajax.main", "train", TINY, "--workdir=s3://b/run"], "--workdir=s3://b/run",
     "google/orbax#359"),
    (["-m", "hpajax.main", "train", TINY, "--workdir=ftp://h/run"], "--workdir=ftp://h/run",
     "not supported"),
])
def test_commands_refuse_urls_and_leave_no_folder(tmp_path, command, refused, why):
    r = subprocess.run([PYTHON, *command], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and refused in r.stderr and why in r.stderr, r.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no "s3:" folder
