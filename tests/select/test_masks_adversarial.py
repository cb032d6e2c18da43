"""select/masks.py's uid lookups attacked with one uid, none, and several repeated uids, worked by hand.
"""

from __future__ import annotations

from uidvalues import A, B, C, arr

from datacomp_plugins.select import masks as select


def test_lookups_with_one_uid_and_with_none():
    one, empty = arr([A]), arr([])
    assert select.isin(one, one).tolist() == [True]
    assert select.isin(one, arr([B])).tolist() == [False]
    assert select.isin(one, empty).tolist() == [False] and select.isin(empty, one).tolist() == []
    assert select.index_in(one, one).tolist() == [0]
    assert select.index_in(one, arr([B, A])).tolist() == [1]
    assert select.index_in(arr([A, B]), empty).tolist() == [-1, -1]
    assert select.index_in(empty, one).tolist() == []


def test_first_occurrence_with_several_repeated_uids():
    uids = arr([A, B, A, B, C, A])
    assert select.first_occurrence(uids).tolist() == [True, True, False, False, True, False]
    assert select.first_occurrence(arr([B, A, A, B])).tolist() == [True, True, False, False]
    assert select.first_occurrence(arr([A])).tolist() == [True]
