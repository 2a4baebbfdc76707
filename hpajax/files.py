"""Atomic file writes: readers see the old content or the new, never half of it.

Standard library only, so the NumPy-only report writer can use it too.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes ``data`` to a temporary file, syncs it, then renames it over ``path``."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")  # one writer per file: see workdir.py
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON, atomically."""
    write_atomic(path, json.dumps(obj, indent=1) + "\n")
