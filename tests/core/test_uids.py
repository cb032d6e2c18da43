"""Uid parsing and uid files against DataComp's definition divmod(int(uid, 16), 2**64)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.uids import (
    UID_DTYPE,
    decode_fixed,
    encode_lines,
    load_uid_file,
    parse_hex,
    save_uid_file,
    sorted_unique,
    to_hex,
)


def reference(hexes):
    return np.array([divmod(int(h, 16), 2**64) for h in hexes], dtype=UID_DTYPE)


NOT_HEX = sorted(set(range(256)) - set(b"0123456789abcdefABCDEF"))
EDGES = [0, 1, 2**64 - 1, 2**64, 2**127, 2**128 - 1]  # leading zeros, a low half at its ends, the maximum


@settings(deadline=None)  # a first pyarrow regex call can pass 200 ms on a busy machine; speed is not tested here
@example(values=EDGES, position=31, bad=ord("g"))
@example(values=EDGES, position=0, bad=ord("G"))
@example(values=EDGES, position=40, bad=ord("/"))  # just below "0"
@example(values=EDGES, position=73, bad=ord(":"))  # just above "9"
@example(values=EDGES, position=100, bad=ord("@"))  # just below "A"
@example(values=EDGES, position=150, bad=ord("`"))  # just below "a"
@example(values=EDGES, position=191, bad=0)
@example(values=EDGES, position=5, bad=ord(" "))
@example(values=EDGES, position=6, bad=0xE9)  # not ASCII
@given(st.lists(st.integers(min_value=0, max_value=2**128 - 1), min_size=1, max_size=50),
       st.integers(min_value=0, max_value=32 * 50), st.sampled_from(NOT_HEX))
def test_hex_codec_matches_python_formatting(values, position, bad):
    """Every hex path agrees with DataComp's per-uid ``int(uid, 16)`` and refuses a non-hex byte anywhere."""
    expected = [f"{v:032x}" for v in values]
    halves = [divmod(v, 2**64) for v in values]
    uids = np.array(halves, dtype=UID_DTYPE)
    assert to_hex(uids).tolist() == [h.encode() for h in expected]
    lines = encode_lines(uids)
    assert lines.shape == (len(values), 33)
    assert lines.tobytes() == "".join(f"{h}\n" for h in expected).encode()
    assert decode_fixed(lines[:, :32]).tolist() == halves  # rows cut from text, not contiguous
    for text in (expected, [h.upper() for h in expected]):
        assert parse_hex(text).tolist() == halves
        chars = np.frombuffer("".join(text).encode(), dtype=np.uint8).reshape(-1, 32).copy()
        assert decode_fixed(chars).tolist() == halves

    row, col = position // 32 % len(values), position % 32
    chars[row, col] = bad
    assert decode_fixed(chars) is None
    text = list(expected)
    text[row] = text[row][:col] + chr(bad) + text[row][col + 1 :]
    why = "not ASCII" if bad >= 128 else "not a hex digit"
    message = (f"uids: malformed uid {text[row]!r} at row {row} ({why}); expected a 32-character hex string "
               "(DataComp's uid)")
    with pytest.raises(PluginError, match=re.escape(message)):
        parse_hex(text)


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
