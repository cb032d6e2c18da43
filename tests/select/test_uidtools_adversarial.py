"""uid files that are sorted but hold a repeat (how a list makes the resharder upsample a sample).

Every reader, set operation and writer is checked against Python sets, down to a two-element file [a, a],
and must say what it did (a warning naming the file and the repeats dropped)."""

from __future__ import annotations

import bisect
import random

import numpy as np
import pytest
from conftest import make_pool
from uidvalues import A, B, C, arr, ints, repeated_sorted, save_raw

from datacomp_plugins.cli import main
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.uids import (
    dedup_sorted,
    is_sorted_unique,
    load_uid_file,
    read_uid_file,
    sort_uids,
    sorted_unique,
)
from datacomp_plugins.select import masks as select
from datacomp_plugins.select import uidtools


def test_two_element_file_with_a_repeat_through_every_reader(tmp_path, capsys):
    path = save_raw(tmp_path / "aa.npy", [A, A])
    assert ints(read_uid_file(path)) == [A, A]  # as stored
    assert not is_sorted_unique(read_uid_file(path))
    assert uidtools.check_order(read_uid_file(path)) == uidtools.OrderCheck(2, 0, 1)
    with pytest.raises(PluginError, match="aa.npy: uids are not sorted ascending and unique"):
        load_uid_file(path, fix=False)
    with pytest.warns(UserWarning, match=r"aa\.npy: .*sorted and deduplicated them \(2 uids, 1 duplicates dropped\)"):
        assert ints(load_uid_file(path)) == [A]
    told: list[str] = []
    assert ints(uidtools.load_sorted(path, told.append)) == [A]
    assert told == [f"{path}: uids are not sorted and unique (0 out of order, 1 duplicates); "
                    "sorted and deduplicated them"]
    assert main(["uids", "info", path]) == 0
    out = capsys.readouterr().out
    assert "count: 2" in out and "sorted unique: no (0 out of order, 1 duplicates;" in out


def test_two_element_file_through_every_command(tmp_path, capsys):
    aa = save_raw(tmp_path / "aa.npy", [A, A])
    a = save_raw(tmp_path / "a.npy", [A])
    b = save_raw(tmp_path / "b.npy", [B])
    cases = {("intersect", aa, a): [A], ("intersect", a, aa): [A], ("intersect", aa, b): [],
             ("union", aa, a): [A], ("union", aa, b): [A, B], ("union", b, aa): [A, B],
             ("difference", aa, a): [], ("difference", aa, b): [A], ("difference", b, aa): [B]}
    for (operation, *paths), want in cases.items():
        out = tmp_path / "out.npy"
        assert main(["uids", operation, *paths, "-o", str(out)]) == 0
        assert ints(np.load(out)) == want, (operation, paths)
        assert is_sorted_unique(np.load(out))
        err = capsys.readouterr().err
        assert f"warning: {aa}: uids are not sorted and unique (0 out of order, 1 duplicates)" in err
    assert main(["uids", "to-hex", aa, "-o", str(tmp_path / "aa.txt")]) == 0
    assert (tmp_path / "aa.txt").read_text() == f"{A:032x}\n"
    assert "1 duplicates" in capsys.readouterr().err
    (tmp_path / "aa-hex.txt").write_text(f"{A:032x}\n{A:032X}\n")
    assert main(["uids", "from-hex", str(tmp_path / "aa-hex.txt"), "-o", str(tmp_path / "back.npy")]) == 0
    assert ints(np.load(tmp_path / "back.npy")) == [A]
    assert "2 hex uids" in (said := capsys.readouterr().out) and "1 duplicates dropped" in said


def test_two_element_arrays_through_the_library():
    aa = arr([A, A])
    assert ints(sort_uids(aa)) == [A, A]
    assert ints(dedup_sorted(aa)) == [A] and ints(sorted_unique(aa)) == [A]
    assert ints(dedup_sorted(arr([A, B]))) == [A, B]
    assert ints(uidtools.intersect([aa, arr([A])])) == [A]
    assert ints(uidtools.intersect([arr([A]), aa])) == [A]
    assert ints(uidtools.union([aa, arr([B])])) == [A, B]
    assert ints(uidtools.union([aa])) == [A]
    assert ints(uidtools.difference(aa, [arr([A])])) == []
    assert ints(uidtools.difference(arr([A]), [aa])) == []
    assert select.first_occurrence(aa).tolist() == [True, False]
    assert select.isin(arr([A, B]), aa).tolist() == [True, False]
    assert select.index_in(arr([B, A]), arr([C, A, A])).tolist() == [-1, 1]


@pytest.mark.parametrize("seed", range(6))
def test_set_operations_on_sorted_arrays_with_repeats_match_sets(seed):
    rng = random.Random(seed)
    inputs = [repeated_sorted(rng, rng.randrange(1, 40)) for _ in range(rng.randrange(2, 5))]
    if seed % 2:  # overlapping inputs
        inputs[1] = sorted(inputs[1] + rng.sample(inputs[0], max(1, len(inputs[0]) // 2)))
    arrays = [arr(v) for v in inputs]
    sets = [set(v) for v in inputs]
    told: list[str] = []
    assert ints(uidtools.intersect(arrays, told.append)) == sorted(set.intersection(*sets))
    assert ints(uidtools.union(arrays, told.append)) == sorted(set.union(*sets))
    assert ints(uidtools.difference(arrays[0], arrays[1:], told.append)) == sorted(sets[0].difference(*sets[1:]))
    repeats = sum(len(v) > len(set(v)) for v in inputs)
    assert len(told) == 3 * repeats  # each operation names every input it had to fix
    assert all("(0 out of order, " in message for message in told)


@pytest.mark.parametrize("seed", range(4))
def test_set_commands_on_files_with_repeats(tmp_path, capsys, seed):
    rng = random.Random(100 + seed)
    inputs = [repeated_sorted(rng, rng.randrange(1, 30)) for _ in range(3)]
    inputs[2] = sorted(inputs[2] + inputs[0][: len(inputs[0]) // 2])
    paths = [save_raw(tmp_path / f"in{i}.npy", v) for i, v in enumerate(inputs)]
    sets = [set(v) for v in inputs]
    expected = {"intersect": set.intersection(*sets), "union": set.union(*sets),
                "difference": sets[0].difference(*sets[1:])}
    for operation, want in expected.items():
        out = tmp_path / f"{operation}.npy"
        assert main(["uids", operation, *paths, "-o", str(out)]) == 0
        assert ints(np.load(out)) == sorted(want)
        said = capsys.readouterr()
        for path, values in zip(paths, inputs, strict=True):
            dropped = len(values) - len(set(values))
            if dropped:
                assert f"{path}: uids are not sorted and unique (0 out of order, {dropped:,} duplicates)" in said.err
        assert f"{operation}: {len(want):,} uids" in said.out


@pytest.mark.parametrize("seed", range(4))
def test_locate_with_repeated_queries_matches_bisect(seed):
    rng = random.Random(200 + seed)
    index = sorted(set(repeated_sorted(rng, 50)))
    queries = repeated_sorted(rng, 30) + rng.sample(index, 10)
    rng.shuffle(queries)
    pos, found = uidtools.SortedIndex(arr(index)).locate(arr(queries))
    assert pos.tolist() == [bisect.bisect_left(index, q) for q in queries]
    assert found.tolist() == [q in set(index) for q in queries]


def test_info_counts_a_repeated_uid_once_against_the_pool(tmp_path, capsys):
    written = make_pool(str(tmp_path / "pool"), [6])
    hexes = written["00000000"]["uids"]
    values = sorted([int(hexes[0], 16)] * 2 + [int(hexes[1], 16)] * 3)
    path = save_raw(tmp_path / "r.npy", values)
    assert main(["uids", "info", path, "--metadata_dir", str(tmp_path / "pool")]) == 0
    out = capsys.readouterr().out
    assert "count: 5" in out and "sorted unique: no (0 out of order, 3 duplicates;" in out
    assert "file uids in pool: 2 of 2" in out and "pool rows in file: 2 of 6" in out


def test_pool_overlap_of_an_array_with_repeats_counts_distinct_uids(tmp_path):
    from datacomp_plugins.core.pool import Pool

    written = make_pool(str(tmp_path / "pool"), [5])
    hexes = written["00000000"]["uids"]
    values = sorted([int(hexes[0], 16)] * 3 + [int(hexes[2], 16)] + [A] * 2)
    overlap = uidtools.pool_overlap(arr(values), Pool(str(tmp_path / "pool")))
    assert (overlap.pool_rows, overlap.pool_rows_in_file, overlap.file_uids_in_pool) == (5, 2, 2)
