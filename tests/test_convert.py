"""The converter: content, formats, parallelism, bad input, resume after SIGKILL."""

import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import (CHANNELS, CONVERT_KILLER, DATA, PYTHON, REPO, store_tree, write_csv,
                      write_quads)
from PIL import Image

from hpajax.data import convert, open_store
from hpajax.data import store as storelib


def _opts(input_dir, output_dir, labels_csv=None, **kw):
    kw.setdefault("image_size", 32)
    kw.setdefault("shard_samples", 4)
    return convert.Options(format=kw.pop("format", "kaggle"), input_dir=pathlib.Path(input_dir),
                           output_dir=pathlib.Path(output_dir),
                           labels_csv=None if labels_csv is None else pathlib.Path(labels_csv),
                           **kw)


def _tool(*args, **kw):
    return subprocess.run([PYTHON, str(REPO / "tools" / "convert.py"), *args],
                          capture_output=True, text=True, **kw)


def test_kaggle_store_holds_the_pixels_ids_and_labels(kaggle_set, tmp_path):
    train, csv_path, arrays = kaggle_set
    result = convert.convert(_opts(train, tmp_path / "st", csv_path))
    s = open_store(result.path)
    assert len(s) == 24 and s.ids == sorted(arrays)
    images = s.images.read().result()
    assert images.dtype == np.uint8 and images.shape == (24, 32, 32, 4)
    for k, sample_id in enumerate(s.ids):
        np.testing.assert_array_equal(images[k], arrays[sample_id])
    assert np.flatnonzero(s.labels[3]).tolist() == [3, 15]
    assert s.metadata["channels"] == list(CHANNELS)
    assert s.metadata["format"] == "kaggle" and s.metadata["image_size"] == 32
    assert storelib.shard_samples_of(s.images) == 4
    assert len(list(pathlib.Path(result.path, "images").rglob("c/*/0/0/0"))) == 6  # 24 / 4 shards


def test_resize_uses_an_area_filter(kaggle_set, tmp_path):
    train, csv_path, arrays = kaggle_set
    s = open_store(convert.convert(_opts(train, tmp_path / "st", csv_path, image_size=16)).path)
    box = arrays["s005"][:, :, 2].reshape(16, 2, 16, 2).astype(float).mean(axis=(1, 3))
    got = s.images[5, :, :, 2].read().result()
    assert np.abs(got - box).max() <= 1  # Pillow's BOX filter rounds


def test_two_workers_give_identical_bytes(kaggle_set, tmp_path):
    train, csv_path, _ = kaggle_set
    one = convert.convert(_opts(train, tmp_path / "w1", csv_path, workers=1)).path
    two = convert.convert(_opts(train, tmp_path / "w2", csv_path, workers=2)).path
    assert store_tree(one) == store_tree(two)


def test_without_labels_ids_come_from_files(kaggle_set, tmp_path):
    train, _, arrays = kaggle_set
    s = open_store(convert.convert(_opts(train, tmp_path / "st")).path)
    assert s.labels is None and s.ids == sorted(arrays)
    assert not (tmp_path / "st" / storelib.LABELS).exists()


def test_submission_file_orders_an_unlabeled_test_set(kaggle_set, tmp_path):
    train, _, arrays = kaggle_set
    sub = tmp_path / "sample_submission.csv"
    order = sorted(arrays, reverse=True)
    sub.write_text("Id,Predicted\n" + "".join(f"{i},0\n" for i in order))
    s = open_store(convert.convert(_opts(train, tmp_path / "st", sub)).path)
    assert s.ids == order and s.labels is None


def test_rerun_is_a_noop_and_other_inputs_are_refused(kaggle_set, tmp_path):
    train, csv_path, _ = kaggle_set
    out = tmp_path / "st"
    convert.convert(_opts(train, out, csv_path))
    before = {f: f.stat().st_mtime_ns for f in out.rglob("*") if f.is_file()}
    again = convert.convert(_opts(train, out, csv_path))
    assert again.already_done and again.num_samples == 24
    assert before == {f: f.stat().st_mtime_ns for f in out.rglob("*") if f.is_file()}
    with pytest.raises(convert.ConversionError, match="other inputs or options"):
        convert.convert(_opts(train, out, csv_path, image_size=16))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(convert.ConversionError, match="not empty"):
        convert.convert(_opts(train, foreign, csv_path))
    assert (foreign / "notes.txt").read_text() == "mine"


def test_upscaling_is_refused_naming_the_flag(kaggle_set, tmp_path):
    train, csv_path, _ = kaggle_set
    r = _tool(f"--input_dir={train}", f"--labels_csv={csv_path}",
              f"--output_dir={tmp_path / 'st'}", "--image_size=64")
    assert r.returncode != 0
    assert "--image_size=64 is larger than the source images (32x32)" in r.stderr


@pytest.mark.parametrize("args, named", [
    (["--input_dir=in"], "--output_dir"),                                    # required
    (["--input_dir=in", "--output_dir=out", "--format=png"], "--format"),    # not an enum value
    (["--input_dir=in", "--output_dir=out", "--workers=two"], "--workers"),  # not an integer
    (["--input_dir=in", "--output_dir=out", "stray"], "unexpected arguments: ['stray']"),
])
def test_tool_names_a_missing_or_bad_flag(tmp_path, args, named):
    r = _tool(*args, cwd=tmp_path)
    assert r.returncode != 0 and named in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------- real samples


def test_real_hpav18_jpegs(tmp_path):
    """The two real HPA v18 sets: colour-coded RGB JPEGs, 1728 and 2048 px."""
    src = DATA / "hpa-samples" / "hpav18_jpg"
    names = {"89_B5_1": "11088_89_B5_1", "800_A6_1": "30741_800_A6_1"}
    raw = tmp_path / "hpav18"
    raw.mkdir()
    for short, full in names.items():
        for c in CHANNELS:
            shutil.copy(src / f"{short}_{c}.jpg", raw / f"{full}_{c}.jpg")
    listing = DATA / "hpa2019" / "HPAv18RBGY_wodpl.rows.csv"
    rows = [line for line in listing.read_text().splitlines()
            if line.split(",")[0] in names.values()]
    csv_path = tmp_path / "hpav18.csv"
    csv_path.write_text("Id,Target\n" + "\n".join(rows) + "\n")
    s = open_store(convert.convert(_opts(raw, tmp_path / "st", csv_path, format="hpav18",
                                         image_size=256)).path)
    assert s.ids == [r.split(",")[0] for r in rows]
    by_id = dict(zip(s.ids, s.labels))
    assert np.flatnonzero(by_id["11088_89_B5_1"]).tolist() == [6]
    assert np.flatnonzero(by_id["30741_800_A6_1"]).tolist() == [25]
    images = s.images.read().result()
    k = s.ids.index("11088_89_B5_1")
    for c, plane in enumerate(("R", "G", "B")):
        rgb = Image.open(raw / f"11088_89_B5_1_{CHANNELS[c]}.jpg")
        rgb.draft("RGB", (256, 256))
        want = rgb.getchannel(plane).resize((256, 256), Image.Resampling.BOX)
        np.testing.assert_array_equal(images[k, :, :, c], np.asarray(want))
    for k, sample_id in enumerate(s.ids):  # 1728 px (drafted to 432) and 2048 px (to 256)
        # Yellow: the mean of the yellow JPEG's R and G planes, rounded half up, at the
        # libjpeg draft scale, then the box filter to 256 px.
        rgb = Image.open(raw / f"{sample_id}_yellow.jpg")
        rgb.draft("RGB", (256, 256))
        planes = np.asarray(rgb.convert("RGB"), np.float64)
        mean = np.floor((planes[..., 0] + planes[..., 1]) / 2 + 0.5).astype(np.uint8)
        want = Image.fromarray(mean).resize((256, 256), Image.Resampling.BOX)
        np.testing.assert_array_equal(images[k, :, :, 3], np.asarray(want), err_msg=sample_id)
        assert images[k, :, :, 3].mean() > 1  # yellow carries signal, never zeros


def test_real_kaggle_pngs_decode_and_report_missing_channels(tmp_path):
    """Real Kaggle PNGs: each Id has one channel; used as a full quad they convert."""
    src = DATA / "hpa-samples" / "kaggle_train_png_single"
    files = sorted(src.glob("*.png"))
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in files:
        shutil.copy(f, partial / f.name)
    with pytest.raises(convert.ConversionError) as err:
        convert.convert(_opts(partial, tmp_path / "bad", image_size=512))
    assert str(err.value).count("missing channel file") == len(files)
    quad = tmp_path / "quad"
    quad.mkdir()
    for c in CHANNELS:
        shutil.copy(files[0], quad / f"real_{c}.png")
    s = open_store(convert.convert(_opts(quad, tmp_path / "st", image_size=128)).path)
    got = s.images.read().result()[0]
    assert got.shape == (128, 128, 4) and got.mean() > 1
    want = Image.open(files[0]).resize((128, 128), Image.Resampling.BOX)
    np.testing.assert_array_equal(got[..., 0], np.asarray(want))


def test_real_16bit_hpa_field_is_refused_as_a_kaggle_channel(tmp_path):
    """The raw 2048 px 16-bit HPA field where an 8-bit Kaggle PNG belongs."""
    raw16 = DATA / "hpa-samples" / "hpa_raw_png" / "1000_A12_2_green.png"
    quad = tmp_path / "quad"
    write_quads(quad, ["a", "b"], size=512)
    shutil.copy(raw16, quad / "b_green.png")
    with pytest.raises(convert.ConversionError) as err:
        convert.convert(_opts(quad, tmp_path / "st", image_size=128))
    assert f"{quad / 'b_green.png'}: b: 16-bit image, expected 8-bit grayscale" in str(err.value)


# ----------------------------------------------------------- bad input


def _damage(kind: str, train: pathlib.Path, csv_path: pathlib.Path) -> str:
    """Introduces one defect of ``kind``; returns the text the report must hold."""
    png = train / "s007_green.png"
    rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]]
    if kind == "missing channel":
        png.unlink()
        return f"{png}: s007: missing channel file"
    if kind == "truncated":
        png.write_bytes(png.read_bytes()[:200])
        return f"{png}: s007: cannot decode"
    if kind == "corrupt":
        png.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
        return f"{png}: s007: cannot decode"
    if kind == "wrong size":
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(png)
        return f"{png}: s007: wrong size 40x40, expected 32x32"
    if kind == "RGB mode":
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(png)
        return f"{png}: s007: RGB image, expected 8-bit grayscale"
    if kind == "16-bit mode":
        Image.fromarray(np.zeros((32, 32), np.uint16)).save(png)
        return f"{png}: s007: 16-bit image, expected 8-bit grayscale"
    line, text = {
        "label out of range": (12, "label 31 outside 0..27"),
        "empty Target": (12, "empty Target"),
        "duplicate Id": (12, "duplicate Id (also on line 2)"),
        "malformed row": (12, "malformed row: 3 fields, expected 2"),
        "path separator": (12, "Id '../s010' contains a path separator"),
    }[kind]
    row = rows[line - 2]
    row[1:] = {"label out of range": ["31"], "empty Target": [""],
               "duplicate Id": [row[1]], "malformed row": ["1", "2"],
               "path separator": [row[1]]}[kind]
    if kind == "duplicate Id":
        row[0] = rows[0][0]
    if kind == "path separator":
        row[0] = "../s010"
    write_csv(csv_path, [(r[0], ",".join(r[1:])) for r in rows])
    return f"train.csv:{line}: {row[0]}: {text}"


BAD_KINDS = ["missing channel", "truncated", "corrupt", "wrong size", "RGB mode",
             "16-bit mode", "label out of range", "empty Target", "duplicate Id",
             "malformed row", "path separator"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_bad_input_stops_the_conversion_with_a_report(kind, kaggle_set, tmp_path):
    train, csv_path, _ = kaggle_set
    expected = _damage(kind, train, csv_path)
    out = tmp_path / "st"
    with pytest.raises(convert.ConversionError) as err:
        convert.convert(_opts(train, out, csv_path))
    assert expected in str(err.value)
    assert not (out / storelib.METADATA).exists()
    with pytest.raises(storelib.StoreError, match="unfinished conversion"):
        open_store(out)
    assert expected.split(": ")[-1] in (out / storelib.BAD_SAMPLES).read_text()


def test_cli_lists_every_bad_sample_then_skip_bad_converts_the_rest(kaggle_set, tmp_path):
    train, csv_path, arrays = kaggle_set
    expected = [_damage(kind, train, csv_path)
                for kind in ("truncated", "label out of range")]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(train / "s020_blue.png")
    expected.append(f"{train / 's020_blue.png'}: s020: RGB image")
    out = tmp_path / "st"
    args = [f"--input_dir={train}", f"--labels_csv={csv_path}", f"--output_dir={out}",
            "--image_size=32", "--shard_samples=4", "--workers=2"]
    r = _tool(*args)
    assert r.returncode == 1
    for text in expected:
        assert text in r.stderr
    assert not (out / storelib.METADATA).exists()
    r = _tool(*args, "--skip_bad")
    assert r.returncode == 0, r.stderr
    assert "3 bad sample(s) skipped" in r.stdout
    s = open_store(out)
    assert len(s) == 21 and {"s007", "s020"}.isdisjoint(s.ids)
    images = s.images.read().result()
    for k, sample_id in enumerate(s.ids):
        np.testing.assert_array_equal(images[k], arrays[sample_id])
    report = (out / storelib.BAD_SAMPLES).read_text().splitlines()
    assert report[0] == "where,id,problem" and len(report) == 4


def test_ids_from_file_names_get_the_csv_id_checks(tmp_path):
    """Without --labels_csv the Ids come from file names, and are checked like CSV Ids."""
    raw = tmp_path / "raw"
    write_quads(raw, ["a", ".x", "b\\c", "d\x01"], size=8)
    with pytest.raises(convert.ConversionError) as err:
        convert.convert(_opts(raw, tmp_path / "st", image_size=8))
    for bad, why in [(".x", "starts with '.'"), ("b\\c", "contains a path separator"),
                     ("d\x01", "contains a control character")]:
        assert f"{raw / (bad + '_blue.png')}: {bad}: Id {bad!r} {why}" in str(err.value)
    s = open_store(convert.convert(_opts(raw, tmp_path / "st", image_size=8,
                                         skip_bad=True)).path)
    assert s.ids == ["a"]


# labels.npy defects open_store must name: (change to good labels, message after the path)
LABEL_DEFECTS = {
    "value 2": (lambda y: np.where(np.arange(y.size).reshape(y.shape) == 5 * 28 + 3, 2, y),
                "values other than 0/1 (found 2 at row 5, class 3"),
    "negative": (lambda y: -y.astype(np.int8), "values other than 0/1 (found -1 at row"),
    "classes": (lambda y: y[:, :27], "shape (6, 27), expected (6, 28)"),
    "rows": (lambda y: y[:5], "shape (5, 28), expected (6, 28)"),
    "1-D": (lambda y: y.ravel(), "shape (168,), expected (6, 28)"),
    "float": (lambda y: y.astype(np.float32), "dtype float32, expected integers or bool"),
}


@pytest.mark.parametrize("defect", sorted(LABEL_DEFECTS))
def test_open_store_checks_labels_npy(defect, tmp_path):
    y = np.zeros((6, 28), np.uint8)
    y[:, 0] = 1
    storelib.write_store(tmp_path / "st", np.zeros((6, 8, 8, 4), np.uint8),
                         [f"s{i}" for i in range(6)], y)
    np.save(tmp_path / "st" / storelib.LABELS, y.astype(bool))  # bool is fine: read as uint8
    np.testing.assert_array_equal(open_store(tmp_path / "st").labels, y)
    assert open_store(tmp_path / "st").labels.dtype == np.uint8
    change, expected = LABEL_DEFECTS[defect]
    np.save(tmp_path / "st" / storelib.LABELS, change(y))
    with pytest.raises(storelib.StoreError) as err:
        open_store(tmp_path / "st")
    assert f"{tmp_path / 'st' / storelib.LABELS}: {expected}" in str(err.value)


def test_a_store_error_inside_a_conversion_keeps_its_own_message(kaggle_set, tmp_path):
    """Rerunning a finished conversion reopens its store: a damaged labels.npy is named as
    such, not taken for a failure to write the store."""
    train, csv_path, _ = kaggle_set
    out = tmp_path / "st"
    convert.convert(_opts(train, out, csv_path))
    np.save(out / storelib.LABELS, np.full((24, 28), 2, np.uint8))
    with pytest.raises(storelib.StoreError) as err:
        convert.convert(_opts(train, out, csv_path))
    assert str(err.value).startswith(f"{out / storelib.LABELS}: values other than 0/1")
    assert "cannot write the store" not in str(err.value)


def test_a_storage_failure_says_it_cannot_write_the_store(kaggle_set, tmp_path):
    """TensorStore's error (a plain ValueError) opening an image array that is not one."""
    train, csv_path, _ = kaggle_set
    out = tmp_path / "st"
    opts = _opts(train, out, csv_path)
    out.mkdir()
    (out / convert.PROGRESS).write_text(json.dumps(
        {"fingerprint": convert.make_plan(opts).fingerprint, "shards": 0, "bad": []}))
    (out / storelib.IMAGES).write_text("not an array")
    with pytest.raises(convert.ConversionError,
                       match=rf"^--output_dir={out}: cannot write the store: [A-Z_]+: "):
        convert.convert(opts)


# ----------------------------------------------------------- resume



def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """Kills at three hooks and at a random moment mid-conversion (the store shown
    unfinished); the resumed store is bit-identical to an uninterrupted one."""
    ids = [f"r{i:03d}" for i in range(60)]
    write_quads(tmp_path / "train", ids, size=32, seed=3)
    csv_path = write_csv(tmp_path / "train.csv", [(i, str(k % 28)) for k, i in enumerate(ids)])
    args = [f"--input_dir={tmp_path / 'train'}", f"--labels_csv={csv_path}",
            "--image_size=32", "--shard_samples=4", "--workers=2"]
    reference = convert.convert(_opts(tmp_path / "train", tmp_path / "ref", csv_path)).path
    out = tmp_path / "st"
    kills = [("shard", 3), ("replace", 4), ("shard", 3)]
    for hook, n in kills:
        proc = subprocess.run([PYTHON, "-c", CONVERT_KILLER, hook, str(n), *args, f"--output_dir={out}"],
                              cwd=REPO, capture_output=True, start_new_session=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
        assert not (out / storelib.METADATA).exists()
    # And once more at a random moment while the workers write shards: after this run
    # has recorded a random number of new shards (a ~10 ms step; polled within a
    # deadline), leaving over half of the rest and the finalizing still to do.
    def shards_done():
        try:
            return json.loads((out / convert.PROGRESS).read_text())["shards"]
        except (FileNotFoundError, json.JSONDecodeError):
            return -1
    before, total = shards_done(), len(ids) // 4
    assert 0 <= before < total - 1
    target = before + random.randint(1, (total - before) // 2)
    proc = subprocess.Popen([PYTHON, str(REPO / "tools" / "convert.py"), *args,
                             f"--output_dir={out}"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while shards_done() < target and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    running = proc.poll() is None
    if running:
        os.killpg(proc.pid, signal.SIGKILL)  # the converter and its spawned workers
    proc.wait()
    killed_at = shards_done()
    assert running and proc.returncode == -signal.SIGKILL, (
        f"the conversion exited ({proc.returncode}) before the kill at {target} shards")
    assert target <= killed_at < total, (before, target, killed_at)
    assert not (out / storelib.METADATA).exists()  # killed unfinished
    r = _tool(*args, f"--output_dir={out}")
    assert r.returncode == 0, r.stderr
    assert store_tree(out) == store_tree(reference)
    assert "already converted" in _tool(*args, f"--output_dir={out}").stdout


def test_sigkill_while_compacting_out_bad_samples_then_resume(kaggle_set, tmp_path):
    train, csv_path, _ = kaggle_set
    _damage("corrupt", train, csv_path)
    reference = convert.convert(_opts(train, tmp_path / "ref", csv_path, skip_bad=True)).path
    out = tmp_path / "st"
    args = [f"--input_dir={train}", f"--labels_csv={csv_path}", "--image_size=32",
            "--shard_samples=4", "--workers=2", "--skip_bad", f"--output_dir={out}"]
    # create_images: 1 the array, 2 the compacted copy, 3 the copy back (killed)
    proc = subprocess.run([PYTHON, "-c", CONVERT_KILLER, "compact", "3", *args],
                          cwd=REPO, capture_output=True, start_new_session=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert (out / convert.COMPACT).is_dir() and not (out / storelib.METADATA).exists()
    assert _tool(*args).returncode == 0
    assert store_tree(out) == store_tree(reference)
    assert len(open_store(out)) == 23
    assert "already converted 23 samples" in (rerun := _tool(*args)).stdout
    assert "1 bad sample(s) skipped" in rerun.stdout
