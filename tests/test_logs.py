"""hpajax.logs: metrics.jsonl and TensorBoard events, and a start-up without torch."""

import json
import struct
import subprocess

from conftest import PYTHON, REPO

from hpajax.logs import MetricsLog


def _events(directory):
    """Every Event in a TensorBoard directory, read from its TFRecord framing."""
    # Imported once MetricsLog has loaded tensorboardX without torch: at the top of this
    # module it would import torch (3.6 s, where installed) in every worker's collection.
    from tensorboardX.proto import event_pb2  # noqa: PLC0415

    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            start = offset + 12  # length, then its masked CRC
            events.append(event_pb2.Event.FromString(data[start:start + length]))
            offset = start + length + 4  # the payload's masked CRC
    return events


def test_numbers_reach_tensorboard_and_every_value_the_jsonl(tmp_path):
    log = MetricsLog(tmp_path, start_step=0)
    log.write(2, "train", {"loss": 0.5, "note": "text"})
    log.write(4, "val", {"macro_f1": 0.25})
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 2, "split": "train", "loss": 0.5, "note": "text"},
                     {"step": 4, "split": "val", "macro_f1": 0.25}]
    scalars = [(e.step, v.tag, v.simple_value)
               for e in _events(tmp_path / "tensorboard") for v in e.summary.value]
    assert scalars == [(2, "train/loss", 0.5), (4, "val/macro_f1", 0.25)]


def test_a_command_starts_without_importing_torch(tmp_path):
    """tensorboardX imports torch where it is installed (as in CI), seconds of every
    command's start; hpajax keeps it out, TensorBoard writer included."""
    code = ("import sys; import hpajax.main; from hpajax.logs import MetricsLog; "
            f"MetricsLog({str(tmp_path)!r}, 0).close(); print('torch' in sys.modules)")
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"
