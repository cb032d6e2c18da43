"""core/fileio.py's one JSON writer: the bytes it promises, and nothing half-written when the value fails."""

from __future__ import annotations

import os

import pytest

from datacomp_plugins.core.fileio import write_json


def test_write_json_bytes_are_sorted_indented_and_end_in_a_newline(tmp_path):
    path = tmp_path / "m.json"
    write_json(str(path), {"b": [1, 2], "a": {"d": None, "c": "x"}})
    assert path.read_text() == '{\n  "a": {\n    "c": "x",\n    "d": null\n  },\n  "b": [\n    1,\n    2\n  ]\n}\n'
    write_json(str(path), {"b": 1, "a": 2}, indent=1, sort_keys=False)
    assert path.read_text() == '{\n "b": 1,\n "a": 2\n}\n'
    write_json(str(path), {"s": {3}}, default=sorted)
    assert path.read_text() == '{\n  "s": [\n    3\n  ]\n}\n'


def test_a_value_json_cannot_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("old\n")
    with pytest.raises(TypeError):
        write_json(str(path), {"a": 1, "z": object()})
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["m.json"]
