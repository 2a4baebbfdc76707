"""Reading a run's ``metrics.jsonl``: one JSON record per line, each with its ``step``.

No JAX, so the report rebuilds its training curves without it; ``logs.MetricsLog``
writes the file.
"""

from __future__ import annotations

import json
import os

from etils import epath


def read_records(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` (none if it is absent).

    A kill or a full disk in the middle of an append leaves a torn last line:
    it is dropped with a warning. A bad line before it is an error naming it.
    """
    path = epath.Path(path)
    if not path.exists():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), start=1)
             if line.strip()]
    records = []
    for n, line in lines:
        record, why = _parse_record(line)
        if why is None:
            records.append(record)
        elif n == lines[-1][0]:
            print(f"warning: {path}:{n}: incomplete last line dropped ({why}); "
                  "a kill or a full disk cut its write short", flush=True)
        else:
            raise ValueError(f"{path}:{n}: corrupt metrics record ({why}); "
                             "fix or delete that line")
    return records


def _parse_record(line: str) -> tuple[dict | None, str | None]:
    """(record, None) for a good line, else (None, why not)."""
    try:
        record = json.loads(line)
    except ValueError as e:
        return None, f"not JSON: {e}"
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return None, "not an object with an integer 'step'"
    return record, None
