"""core/uids.py on inputs of every shape it accepts, worked by hand or against Python's own ints: dictionary-
encoded hex columns, one uid, order checks that look at every neighbour, and files that are not .npy uid files
named for what they are."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest
from uidvalues import A, B, C, arr, ints

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.uids import is_sorted_unique, parse_hex, read_uid_file, sort_uids


def test_a_dictionary_encoded_hex_column_reads_as_its_values():
    hexes = [f"{C:032x}", f"{A:032X}", f"{C:032x}"]
    column = pa.array(hexes).dictionary_encode()
    assert pa.types.is_dictionary(column.type)
    assert ints(parse_hex(column)) == [C, A, C]
    assert ints(parse_hex(pa.chunked_array([column.slice(0, 1), column.slice(1)]))) == [C, A, C]


def test_sorting_one_uid_and_none():
    assert ints(sort_uids(arr([B]))) == [B]
    assert ints(sort_uids(arr([]))) == []
    assert ints(sort_uids(arr([C, A, B]))) == [A, B, C]


@pytest.mark.parametrize(("values", "want"), [
    ([], True), ([A], True), ([A, B], True), ([A, A], False), ([B, A], False),
    ([A, C, B], False),  # every neighbour counts, not only the first: C > A and B > A, yet C > B
    ([A, B, C], True), ([A, B, B, C], False), ([1, 2, 2**64], True), ([2**64, 1, 2**64 + 1], False),
])
def test_sorted_unique_checks_every_neighbour(values, want):
    assert is_sorted_unique(arr(values)) is want


@pytest.mark.parametrize("seed", range(4))
def test_sorted_unique_matches_python(seed):
    rng = np.random.default_rng(seed)
    values = [int(v) for v in rng.integers(0, 6, 12)]
    values = [v * 2**64 + int(lo) for v, lo in zip(values, rng.integers(0, 3, 12), strict=True)]
    for cut in range(len(values) + 1):
        part = values[:cut]
        assert is_sorted_unique(arr(part)) == all(a < b for a, b in zip(part, part[1:], strict=False))


@pytest.mark.parametrize(("content", "said"), [
    (pickle.dumps([1, 2, 3]), "it is a Python pickle (never loaded here)"),
    (b"0123456789abcdef0123456789abcdef\n", "it is a text file (hex uids in it?"),
    (b"uid\r\n\tabc\n", "it is a text file"),
    (b"PAR1" + b"\0" * 40, "it is a parquet file"),
])
def test_a_file_that_is_not_a_uid_file_is_named_for_what_it_is(tmp_path, content, said):
    path = tmp_path / "uids.npy"
    path.write_bytes(content)
    with pytest.raises(PluginError, match="not a readable .npy uid file") as caught:
        read_uid_file(str(path))
    assert said in str(caught.value)


def test_binary_garbage_is_not_called_text(tmp_path):
    path = tmp_path / "uids.npy"
    path.write_bytes(bytes(range(1, 60)))
    with pytest.raises(PluginError, match="not a readable .npy uid file") as caught:
        read_uid_file(str(path))
    assert "it is" not in str(caught.value)
