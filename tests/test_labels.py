"""Label-file parsing: every row-level problem is named with its line."""

import numpy as np
import pytest

from hpajax.data import labels


def _read(tmp_path, text):
    path = tmp_path / "train.csv"
    path.write_text(text)
    return labels.read_labels_csv(path)


def test_reads_ids_and_multi_hot_in_file_order(tmp_path):
    table, problems = _read(tmp_path, "Id,Target\nb,16 0\na,7 1 2 0\n\n")
    assert problems == []
    assert table.ids == ["b", "a"]
    assert table.labels.dtype == np.uint8
    assert np.flatnonzero(table.labels[0]).tolist() == [0, 16]
    assert np.flatnonzero(table.labels[1]).tolist() == [0, 1, 2, 7]
    assert table.where == ["train.csv:2", "train.csv:3"]


def test_id_only_file_gives_no_labels(tmp_path):
    table, problems = _read(tmp_path, "Id,Predicted\nx,0\ny,0\n")
    assert problems == [] and table.ids == ["x", "y"] and table.labels is None


@pytest.mark.parametrize("row, why", [
    ("a,28", "label 28 outside 0..27"),
    ("a,-1", "label -1 outside 0..27"),
    ("a,", "empty Target"),
    ("a,1 x", "label 'x' is not an integer"),
    ("a,1,2", "malformed row: 3 fields, expected 2"),
    ("a", "malformed row: 1 fields, expected 2"),
    ("../a,1", "path separator"),
    ("a\\b,1", "path separator"),
    (",1", "empty Id"),
])
def test_bad_rows_are_reported_with_line(tmp_path, row, why):
    table, problems = _read(tmp_path, f"Id,Target\ngood,3\n{row}\n")
    assert table.ids == ["good"]
    assert len(problems) == 1
    assert problems[0].where == "train.csv:3"
    assert why in problems[0].why


def test_duplicate_ids_are_all_rejected(tmp_path):
    table, problems = _read(tmp_path, "Id,Target\na,1\nb,2\na,3\n")
    assert table.ids == ["b"]
    assert [(p.where, p.why) for p in problems] == [
        ("train.csv:2", "duplicate Id (also on line 4)"),
        ("train.csv:4", "duplicate Id (also on line 2)"),
    ]


def test_unusable_file_raises(tmp_path):
    with pytest.raises(ValueError, match="header"):
        _read(tmp_path, "Name,Target\na,1\n")
    with pytest.raises(ValueError, match="cannot read"):
        labels.read_labels_csv(tmp_path / "missing.csv")
