"""Training logs: a progress line, ``metrics.jsonl`` and TensorBoard events.

On resume, records past the restored step are dropped from ``metrics.jsonl``
and from TensorBoard (``purge_step``): the run redoes those steps, so the
logs hold each step once, as the resumed run computed it. Object storage has
no append, so ``metrics.jsonl`` is rewritten whole at each record there (one
upload of a few hundred kB at most); a local file is appended to.
"""

from __future__ import annotations

import json
import os
import sys

import jax
from absl import flags, logging
from etils import epath

from hpajax.files import is_remote, write_atomic
from hpajax.records import read_records


def _summary_writer_class() -> type:
    """tensorboardX's ``SummaryWriter``, imported without torch.

    tensorboardX imports torch, where installed, only to accept torch tensors,
    which hpajax never passes; that import takes seconds of every command's
    start. Unless torch is already loaded, ``import torch`` fails during it.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """Appends metrics records (JSONL) and TensorBoard scalars, process 0 only.

    In a multi-process run every process makes one and calls ``write`` alike,
    but only process 0 touches the files: the others neither truncate nor
    write ``metrics.jsonl`` and create no TensorBoard writer.
    """

    def __init__(self, workdir: str | os.PathLike, start_step: int):
        workdir = epath.Path(workdir)
        self.path = workdir / "metrics.jsonl"
        self.tensorboard_dir = workdir / "tensorboard"
        self.primary = jax.process_index() == 0
        self._file = self._tb = None
        if not self.primary:
            return
        self._lines = _truncate_after(self.path, start_step)
        if not is_remote(self.path):
            self._file = open(self.path, "a", encoding="utf-8")
        self._tb = _summary_writer_class()(os.fspath(self.tensorboard_dir),
                                           purge_step=start_step + 1)

    def write(self, step: int, split: str, values: dict) -> None:
        """Records one event; numbers also go to TensorBoard as ``split/name``."""
        if not self.primary:
            return
        line = json.dumps({"step": step, "split": split, **values}) + "\n"
        if self._file is None:
            self._lines.append(line)
            write_atomic(self.path, "".join(self._lines))
        else:
            self._file.write(line)
            self._file.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self._tb.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self.primary:
            if self._file is not None:
                self._file.close()
            self._tb.close()


def _truncate_after(path: epath.Path, step: int) -> list[str]:
    """Keeps only the records of steps <= ``step`` (atomically); returns their lines."""
    if not path.exists():
        return []
    kept = [json.dumps(r) + "\n" for r in read_records(path) if r["step"] <= step]
    write_atomic(path, "".join(kept))
    return kept


def progress_line(step: int, total: int, epoch: float, loss: float, lr: float,
                  images_per_s: float | None, batch_size: int) -> str:
    """``step 120/600 (epoch 2.7) loss 0.1834 lr 1.0e-03 31.2 img/s ETA 4m12s``."""
    line = f"step {step}/{total} (epoch {epoch:.1f}) loss {loss:.4f} lr {lr:.1e}"
    if not images_per_s:
        return line
    eta = (total - step) * batch_size / images_per_s
    return f"{line} {images_per_s:.1f} img/s ETA {int(eta // 60)}m{int(eta % 60):02d}s"


def quiet_library_logs() -> None:
    """Absl logging at WARNING unless ``--verbosity`` was given: Orbax logs every save at INFO."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
