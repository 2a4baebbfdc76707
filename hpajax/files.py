"""Locations from what users type (local paths, ``s3://``, ``gs://``), and atomic writes
(readers see the old content or the new, never half of it).

No JAX, so the NumPy-only report writer can use it too. Object-storage paths are
``etils.epath`` paths (fsspec: s3fs, gcsfs); ``pathlib`` must never see them: it
would silently turn ``s3://bucket/x`` into a local folder ``s3:/bucket/x``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any

from etils import epath

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
OBJECT_STORES = ("s3", "gs")  # schemes a store or run folder may use
# Each scheme's fsspec client, and the pip extra that installs it.
_CLIENTS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs")}


def scheme(location: str | os.PathLike) -> str:
    """``"s3"``, ``"gs"``, other URL schemes in lower case, or ``""`` for a local path."""
    match = _SCHEME.match(os.fspath(location))
    return "" if match is None else match[1].lower()


def is_remote(location: str | os.PathLike) -> bool:
    """Whether ``location`` is on object storage."""
    return scheme(location) in OBJECT_STORES


def location(text: str | os.PathLike, flag: str, schemes: tuple[str, ...] = OBJECT_STORES
             ) -> epath.Path:
    """A local path (``file://`` URLs too) or an object-storage URL in ``schemes``.

    Any other URL is a ValueError naming ``flag``, raised before anything is created.
    """
    text = os.fspath(text)
    kind = scheme(text)
    if kind == "file":
        return epath.Path(text[len("file://"):])
    if kind and kind not in schemes:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise ValueError(f"{flag}={text}: {kind}:// locations are not supported here (a local "
                         + (f"path or a {allowed} URL)" if schemes else "path only)"))
    if kind:
        _check_client(kind, flag, text)
        text = f"{kind}://{text[len(kind) + 3:]}"  # GS://b -> gs://b
    return epath.Path(text)


def _check_client(kind: str, flag: str, text: str) -> None:
    """Refuses a URL whose fsspec client (s3fs, gcsfs) is not installed, saying which extra."""
    module, extra = _CLIENTS[kind]
    try:
        __import__(module)
    except ImportError:
        raise ValueError(f"{flag}={text}: {kind}:// needs {module}: pip install "
                         f"'hpajax[{extra}]'") from None


def local_path(text: str | os.PathLike, flag: str) -> pathlib.Path:
    """``text`` as a local path (``file://`` URLs too); a ValueError naming ``flag`` for any
    URL, for inputs that must be on this machine."""
    return pathlib.Path(location(text, flag, schemes=()))


def storage_errors() -> tuple[type[BaseException], ...]:
    """What a failed read or write raises: OS errors, TensorStore's ValueErrors, and the
    object-storage clients' own (botocore's for s3fs, aiohttp's for s3fs and gcsfs).

    A ValueError is not always one: ``is_storage_error`` tells them apart."""
    errors: list[type[BaseException]] = [OSError, ValueError]
    for module, name in (("botocore.exceptions", "BotoCoreError"), ("aiohttp", "ClientError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except ImportError:
            pass
    return tuple(errors)


# The absl status codes TensorStore's ValueErrors start with ("NOT_FOUND: ..."); it drops
# only INVALID_ARGUMENT's, the code of a bad spec or index rather than of a failed I/O.
_TENSORSTORE_STATUS = re.compile(
    r"(CANCELLED|UNKNOWN|DEADLINE_EXCEEDED|NOT_FOUND|ALREADY_EXISTS|PERMISSION_DENIED|"
    r"RESOURCE_EXHAUSTED|FAILED_PRECONDITION|ABORTED|OUT_OF_RANGE|UNAVAILABLE|DATA_LOSS|"
    r"UNAUTHENTICATED|INTERNAL): ")


def is_storage_error(error: BaseException) -> bool:
    """Whether an error caught with ``storage_errors()`` is a failed read or write.

    Every one is but a ValueError that TensorStore did not raise: a ``StoreError``, a
    JSON decoding error or any other ValueError says what is wrong itself.
    """
    if isinstance(error, ValueError):
        return type(error) is ValueError and bool(_TENSORSTORE_STATUS.match(str(error)))
    return isinstance(error, storage_errors())


def make_folder(path: str | os.PathLike) -> None:
    """Creates a local folder and its parents; on object storage, where a folder is only
    a key prefix, nothing (and no bucket is ever created)."""
    if not is_remote(path):
        pathlib.Path(path).mkdir(parents=True, exist_ok=True)


def files_under(path: str | os.PathLike) -> Iterator[epath.Path]:
    """Every file below ``path`` (on object storage, every key under the prefix), sorted."""
    for child in sorted(epath.Path(path).iterdir()):
        if child.is_dir():
            yield from files_under(child)
        else:
            yield child


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes ``data`` whole: locally to a synced temporary file renamed over ``path``; on
    object storage as one upload, which replaces the object only once complete."""
    data = data.encode() if isinstance(data, str) else data
    if is_remote(path):
        epath.Path(path).write_bytes(data)
        return
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp")  # one writer per file: see workdir.py
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented JSON, atomically."""
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``: the fingerprints of stores, splits and exported files."""
    return hashlib.sha256(data).hexdigest()
