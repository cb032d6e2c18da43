"""Uid parsing and uid files against DataComp's definition divmod(int(uid, 16), 2**64)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.uids import (
    UID_DTYPE,
    load_uid_file,
    parse_hex,
    save_uid_file,
    sorted_unique,
    to_hex,
)


def reference(hexes):
    return np.array([divmod(int(h, 16), 2**64) for h in hexes], dtype=UID_DTYPE)


@given(st.lists(st.integers(min_value=0, max_value=2**128 - 1), min_size=1, max_size=50))
def test_parse_matches_divmod(values):
    hexes = [f"{v:032x}" for v in values]
    assert (parse_hex(hexes) == reference(hexes)).all()
    assert [h.decode() for h in to_hex(parse_hex(hexes))] == hexes


def test_leading_zeros_and_uppercase():
    hexes = ["0000000000000000000000000000000f", "00ABCDEF0123456789abcdef01234567", "ff" * 16]
    assert (parse_hex(hexes) == reference(hexes)).all()


@pytest.mark.parametrize("bad,why", [("x" * 32, "not a hex digit"), ("xyz", "wrong length"), ("1", "wrong length"),
                                     ("f" * 33, "wrong length"),
                                     ("", "wrong length"), ("é" * 4, "not ASCII")])
def test_malformed_uid_names_source_and_row(bad, why):
    with pytest.raises(PluginError, match=rf"shard\.parquet: malformed uid .* at row 1 \({why}\)"):
        parse_hex(["00" * 16, bad], source="shard.parquet")


def test_save_sorts_dedups_and_leaves_no_temp(tmp_path):
    uids = reference(["3" * 32, "1" * 32, "2" * 32, "1" * 32])
    path = tmp_path / "out.npy"
    assert save_uid_file(str(path), uids) == 3
    saved = np.load(path)
    assert saved.dtype == np.dtype("u8,u8")
    assert saved.tolist() == sorted(set(uids.tolist()))
    assert os.listdir(tmp_path) == ["out.npy"]


def test_sorted_unique_orders_by_high_then_low():
    uids = np.array([(1, 5), (0, 9), (1, 2), (0, 9)], dtype=UID_DTYPE)
    assert sorted_unique(uids).tolist() == [(0, 9), (1, 2), (1, 5)]


def test_load_checks_contract(tmp_path):
    bad_dtype = tmp_path / "bad.npy"
    np.save(bad_dtype, np.arange(4))
    with pytest.raises(PluginError, match="bad.npy: expected a 1-D uid array"):
        load_uid_file(str(bad_dtype))
    unsorted = tmp_path / "unsorted.npy"
    np.save(unsorted, np.array([(2, 0), (1, 0), (1, 0)], dtype=UID_DTYPE))
    with pytest.raises(PluginError, match="not sorted"):
        load_uid_file(str(unsorted), fix=False)
    with pytest.warns(UserWarning, match="sorted and deduplicated"):
        assert load_uid_file(str(unsorted)).tolist() == [(1, 0), (2, 0)]
