"""Object-storage URLs are refused by name until they are supported, never made local folders.

``pathlib`` turns ``s3://bucket/x`` into the local path ``s3:/bucket/x``: a
command given such a URL must say so and create nothing.
"""

import pathlib
import subprocess

import pytest
from conftest import PYTHON, REPO

from hpajax import workdir
from hpajax.data import open_store
from hpajax.files import local_path


def test_local_path_keeps_paths_strips_file_urls_and_refuses_the_rest(tmp_path):
    assert local_path("runs/x", "--workdir") == pathlib.Path("runs/x")
    assert local_path(tmp_path, "--workdir") == tmp_path
    assert local_path(f"file://{tmp_path}/store", "--store") == tmp_path / "store"
    for url in ("s3://bucket/store", "gs://bucket/run", "GS://bucket/run", "http://host/x"):
        with pytest.raises(ValueError, match=f"--flag={url}: .*not supported yet"):
            local_path(url, "--flag")


def test_the_library_refuses_urls_before_creating_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--workdir=gs://bucket/run"):
        workdir.prepare("gs://bucket/run")
    with pytest.raises(ValueError, match="store=s3://bucket/store"):
        open_store("s3://bucket/store")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, url", [
    ([str(REPO / "tools" / "convert.py"), "--format=kaggle", "--input_dir=in",
      "--output_dir=s3://b/store"], "--output_dir=s3://b/store"),
    (["-m", "hpajax.main", "train", f"--config={REPO / 'experiments' / 'configs' / 'tiny.py'}",
      "--workdir=s3://b/run"], "--workdir=s3://b/run"),
])
def test_commands_refuse_urls_and_leave_no_folder(tmp_path, command, url):
    r = subprocess.run([PYTHON, *command], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0 and url in r.stderr and "not supported yet" in r.stderr
    assert list(tmp_path.iterdir()) == []  # no "s3:" folder
