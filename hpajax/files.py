"""Local paths from what users type, and atomic file writes (readers see the old content or
the new, never half of it).

Standard library only, so the NumPy-only report writer can use it too.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def local_path(location: str | os.PathLike, flag: str) -> pathlib.Path:
    """``location`` as a local path (``file://`` URLs too); ValueError naming ``flag`` for any
    other URL.

    ``pathlib`` would silently turn ``s3://bucket/x`` into a local folder
    ``s3:/bucket/x``; object storage (``s3://``, ``gs://``) is not supported
    yet, so such a location is refused before anything is created.
    """
    text = os.fspath(location)
    scheme = _SCHEME.match(text)
    if scheme is None:
        return pathlib.Path(text)
    if scheme[1].lower() == "file":
        return pathlib.Path(text[scheme.end():])
    raise ValueError(f"{flag}={text}: {scheme[1]}:// locations are not supported yet; use a "
                     "local path, or a bucket mounted as one (gcsfuse, mountpoint-s3)")


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
