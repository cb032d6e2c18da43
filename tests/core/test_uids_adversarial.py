"""core/uids.py's readers and writers attacked with repeats, empty arrays, other field names and no hex uids at
all; every result against Python ints and sets.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from uidvalues import LOW, A, B, C, arr, ints, repeated_sorted

from datacomp_plugins.cli import main
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.uids import (
    UID_DTYPE,
    dedup_sorted,
    is_sorted_unique,
    load_uid_file,
    save_uid_file,
    sort_uids,
    sorted_unique,
)
from datacomp_plugins.select import hexfiles, uidtools


def test_writer_of_a_repeat_writes_it_once(tmp_path):
    assert save_uid_file(str(tmp_path / "s.npy"), arr([A, A])) == 1
    assert ints(np.load(tmp_path / "s.npy")) == [A]
    told: list[str] = []
    hexfiles.write_hex(str(tmp_path / "h.txt"), arr([B, B, C]), told.append)
    assert (tmp_path / "h.txt").read_text() == f"{B:032x}\n{C:032x}\n"
    assert len(told) == 1 and "1 duplicates" in told[0]


@pytest.mark.parametrize("seed", range(4))
def test_sort_and_dedup_keep_every_distinct_uid_once(seed):
    rng = random.Random(300 + seed)
    values = repeated_sorted(rng, 60)
    shuffled = values[:]
    rng.shuffle(shuffled)
    assert ints(sort_uids(arr(shuffled))) == values
    assert ints(dedup_sorted(arr(values))) == sorted(set(values))
    assert ints(sorted_unique(arr(shuffled))) == sorted(set(values))
    assert uidtools.check_order(arr(values)) == uidtools.OrderCheck(len(values), 0, len(values) - len(set(values)))


def test_empty_uid_arrays_are_written_as_empty_files(tmp_path):
    assert len(sort_uids(arr([]))) == 0 and len(sorted_unique(arr([]))) == 0
    assert save_uid_file(str(tmp_path / "e.npy"), arr([])) == 0
    assert np.load(tmp_path / "e.npy").dtype == UID_DTYPE and len(np.load(tmp_path / "e.npy")) == 0
    assert is_sorted_unique(arr([])) and is_sorted_unique(arr([A]))


def test_uid_arrays_with_other_field_names_are_read_as_uids(tmp_path):
    other = np.array([(5, 9), (5, 9), (1, 2)], dtype=[("hi", "<u8"), ("lo", "<u8")])
    assert save_uid_file(str(tmp_path / "o.npy"), other) == 2
    assert ints(np.load(tmp_path / "o.npy")) == [1 * LOW + 2, A]
    np.save(tmp_path / "o2.npy", other)
    with pytest.warns(UserWarning, match="1 duplicates dropped"):
        assert ints(load_uid_file(str(tmp_path / "o2.npy"))) == [1 * LOW + 2, A]
    with pytest.raises(PluginError, match="expected a 1-D uid array"):
        save_uid_file(str(tmp_path / "b.npy"), other.astype([("hi", ">u8"), ("lo", ">u8")]))


def test_no_hex_uids_at_all(tmp_path, capsys):
    from datacomp_plugins.core.uids import parse_hex

    for empty in ([], np.array([], dtype=object)):
        parsed = parse_hex(empty)
        assert parsed.dtype == UID_DTYPE and len(parsed) == 0
    (tmp_path / "blank.txt").write_text("\n  \n")
    assert main(["uids", "from-hex", str(tmp_path / "blank.txt"), "-o", str(tmp_path / "e.npy")]) == 0
    assert len(np.load(tmp_path / "e.npy")) == 0 and "0 uids" in capsys.readouterr().out
