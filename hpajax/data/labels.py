"""Reading and checking Kaggle-style label files (``Id,Target``).

Every problem is reported with the file and line it comes from, so a user can
fix the CSV; rows with problems are left out of the table, never guessed.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib

import numpy as np

from hpajax import classes


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why one sample cannot be trusted, and where that was found."""

    where: str  # "train.csv:17" or a file path
    sample_id: str
    why: str


@dataclasses.dataclass(frozen=True)
class LabelTable:
    """The good rows of a label file, in file order."""

    ids: list[str]
    labels: np.ndarray | None  # multi-hot uint8 [N, 28]; None without a Target column
    where: list[str]  # "file:line" of each row


def check_id(sample_id: str) -> str | None:
    """Returns why an Id cannot name files safely, or None if it can."""
    if not sample_id:
        return "empty Id"
    if any(sep in sample_id for sep in ("/", "\\", os.sep)):
        return f"Id {sample_id!r} contains a path separator"
    if sample_id.startswith(".") or sample_id != sample_id.strip():
        return f"Id {sample_id!r} starts with '.' or has surrounding spaces"
    if any(ord(ch) < 32 for ch in sample_id):
        return f"Id {sample_id!r} contains a control character"
    return None


def parse_target(text: str) -> tuple[np.ndarray | None, str | None]:
    """Parses a space-separated class list into multi-hot; returns (row, problem)."""
    tokens = text.split()
    if not tokens:
        return None, "empty Target"
    row = np.zeros(classes.NUM_CLASSES, np.uint8)
    for tok in tokens:
        try:
            label = int(tok)
        except ValueError:
            return None, f"label {tok!r} is not an integer"
        if not 0 <= label < classes.NUM_CLASSES:
            return None, f"label {label} outside 0..{classes.NUM_CLASSES - 1}"
        row[label] = 1
    return row, None


def read_csv_rows(path: str | os.PathLike, what: str) -> list[list[str]]:
    """Every row of a CSV file, header first; a ValueError naming the file and ``what`` it
    was read as if it cannot be read (missing, not UTF-8, malformed)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{path}: cannot read {what}: {e}") from None


def read_labels_csv(path: str | os.PathLike) -> tuple[LabelTable, list[Problem]]:
    """Reads an ``Id,Target`` file (extra columns ignored; ``Id`` alone gives no labels).

    Raises ValueError if the file itself is unusable (missing, no ``Id`` header);
    row-level problems are returned, one per bad row.
    """
    path = pathlib.Path(path)
    rows = read_csv_rows(path, "label file")
    if not rows or "Id" not in rows[0]:
        raise ValueError(f"{path}:1: header must start with 'Id,Target' (got {rows[:1]})")
    header = rows[0]
    id_col = header.index("Id")
    target_col = header.index("Target") if "Target" in header else None
    ids, labels, where, problems = [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue  # blank line
        loc = f"{path.name}:{line}"
        sample_id, target, problem = _parse_row(row, len(header), id_col, target_col)
        if problem is None:
            problem = check_id(sample_id)
        if problem is not None:
            problems.append(Problem(loc, sample_id, problem))
            continue
        ids.append(sample_id)
        labels.append(target)
        where.append(loc)
    multi_hot = None
    if target_col is not None:
        multi_hot = np.zeros((len(ids), classes.NUM_CLASSES), np.uint8)
        if labels:
            multi_hot = np.stack(labels)
    return _drop_duplicates(LabelTable(ids, multi_hot, where), problems)


def _parse_row(row, width, id_col, target_col):
    """Returns (id, multi-hot or None, problem or None) for one CSV row."""
    sample_id = row[id_col] if id_col < len(row) else ""
    if len(row) != width:
        return sample_id, None, f"malformed row: {len(row)} fields, expected {width}"
    if target_col is None:
        return sample_id, None, None
    target, problem = parse_target(row[target_col])
    return sample_id, target, problem


def _drop_duplicates(
    table: LabelTable, problems: list[Problem]
) -> tuple[LabelTable, list[Problem]]:
    """Removes every row whose Id occurs more than once: which one is right is unknowable."""
    seen: dict[str, list[int]] = {}
    for i, sample_id in enumerate(table.ids):
        seen.setdefault(sample_id, []).append(i)
    dups = {i for rows in seen.values() if len(rows) > 1 for i in rows}
    if not dups:
        return table, problems
    for i in sorted(dups):
        others = [table.where[j].rsplit(":", 1)[1] for j in seen[table.ids[i]] if j != i]
        problems.append(Problem(table.where[i], table.ids[i],
                                f"duplicate Id (also on line {', '.join(others)})"))
    keep = [i for i in range(len(table.ids)) if i not in dups]
    labels = None if table.labels is None else table.labels[keep]
    return LabelTable([table.ids[i] for i in keep], labels,
                      [table.where[i] for i in keep]), problems
