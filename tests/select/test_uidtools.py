"""``datacomp-plugins uids``: every command against Python ints and sets on small random files."""

from __future__ import annotations

import bisect
import itertools
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_pool

from datacomp_plugins.cli import main
from datacomp_plugins.core.uids import UID_DTYPE, sort_uids, sorted_unique
from datacomp_plugins.select import hexfiles, uidtools

LOW = 2**64


def tricky_values(rng: random.Random, n: int) -> list[int]:
    """Uniform uids mixed with leading zeros, low halves at 0 / 2**64-1, shared high halves, the maximum."""
    out = []
    for _ in range(n):
        kind = rng.randrange(6)
        if kind == 0:
            out.append(rng.getrandbits(128))
        elif kind == 1:
            out.append(rng.getrandbits(rng.choice([4, 40, 64])))  # high half 0: many leading zeros
        elif kind == 2:
            out.append(rng.getrandbits(2) * LOW + LOW - 1 - rng.getrandbits(2))  # low half near 2**64
        elif kind == 3:
            out.append(rng.getrandbits(2) * LOW + rng.getrandbits(2))  # low half near 0
        elif kind == 4:
            out.append(2**128 - 1 - rng.getrandbits(3))
        else:
            out.append((rng.getrandbits(64) | 1) * LOW + 2**63 + rng.choice([-1, 0, 1]))
    return out


def as_array(values: list[int]) -> np.ndarray:
    return np.array([divmod(v, LOW) for v in values], dtype=UID_DTYPE)


def as_ints(uids: np.ndarray) -> list[int]:
    return [int(hi) * LOW + int(lo) for hi, lo in uids.tolist()]


def save(path, values: list[int], sort: bool = True) -> str:
    np.save(path, as_array(sorted(set(values)) if sort else values))
    return str(path)


def load(path) -> list[int]:
    uids = np.load(path)
    assert uids.dtype == UID_DTYPE and uids.ndim == 1
    return as_ints(uids)


def expect_refusal(capsys, argv: list[str], *fragments: str) -> None:
    """Exit code 2, one 'error:' line naming what is wrong, no traceback, no output or temporary file."""
    folder = os.path.dirname(argv[argv.index("-o") + 1]) if "-o" in argv else None
    before = set(os.listdir(folder)) if folder and os.path.isdir(folder) else set()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    if folder and os.path.isdir(folder):
        assert set(os.listdir(folder)) == before


# --- set operations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("count", [2, 3])
def test_set_operations_match_python_sets(tmp_path, capsys, seed, count):
    rng = random.Random(seed)
    shared = tricky_values(rng, 30)
    sets = [set(tricky_values(rng, rng.randrange(0, 80)) + rng.sample(shared, rng.randrange(0, 30)))
            for _ in range(count)]
    paths = [save(tmp_path / f"in{i}.npy", list(s)) for i, s in enumerate(sets)]
    expected = {
        "intersect": set.intersection(*sets),
        "union": set.union(*sets),
        "difference": sets[0].difference(*sets[1:]),
    }
    for operation, want in expected.items():
        out = tmp_path / f"{operation}.npy"
        assert main(["uids", operation, *paths, "-o", str(out)]) == 0
        assert load(out) == sorted(want)
        summary = capsys.readouterr().out.strip().splitlines()
        assert len(summary) == 1 and summary[0].startswith(f"{operation}: {len(want):,} uids")


def test_set_operations_on_empty_and_identical_files(tmp_path):
    values = tricky_values(random.Random(7), 50)
    a, empty = save(tmp_path / "a.npy", values), save(tmp_path / "empty.npy", [])
    for operation, others, want in [("intersect", [a], set(values)), ("union", [a], set(values)),
                                    ("difference", [a], set()), ("intersect", [empty], set()),
                                    ("union", [empty], set(values)), ("difference", [empty], set(values))]:
        out = tmp_path / "out.npy"
        assert main(["uids", operation, a, *others, "-o", str(out)]) == 0
        assert load(out) == sorted(want), operation


def test_unsorted_duplicated_input_is_fixed_with_warning(tmp_path, capsys):
    rng = random.Random(3)
    a_values, b_values = tricky_values(rng, 60), tricky_values(rng, 60)
    a_raw = a_values + a_values[:10]
    rng.shuffle(a_raw)
    a = save(tmp_path / "a.npy", a_raw, sort=False)
    b = save(tmp_path / "b.npy", b_values)
    out = tmp_path / "u.npy"
    assert main(["uids", "union", a, b, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {a}: uids are not sorted and unique" in err
    assert f"{len(a_raw) - len(set(a_raw))} duplicates" in err
    assert b not in err
    assert load(out) == sorted(set(a_values) | set(b_values))


@pytest.mark.parametrize("seed", range(3))
def test_locate_matches_bisect(seed):
    rng = random.Random(seed)
    haystack = sorted(set(tricky_values(rng, 300)))
    queries = tricky_values(rng, 200) + rng.sample(haystack, 100)
    pos, found = uidtools.SortedIndex(as_array(haystack)).locate(as_array(queries))
    assert pos.tolist() == [bisect.bisect_left(haystack, q) for q in queries]
    assert found.tolist() == [q in set(haystack) for q in queries]


def test_sort_handles_shared_high_halves():
    """All high halves equal: every uid ties on the sort key's prefix and must be ordered by its low half."""
    rng = random.Random(5)
    values = [rng.getrandbits(64) for _ in range(500)] + [LOW - 1, 0, 0, LOW - 1]
    assert as_ints(sorted_unique(as_array(values))) == sorted(set(values))
    values = tricky_values(rng, 2000) * 2
    assert as_ints(sort_uids(as_array(values))) == sorted(values)


# --- hex conversions --------------------------------------------------------------------------------------


def test_from_hex_text_matches_divmod(tmp_path, capsys):
    rng = random.Random(11)
    values = tricky_values(rng, 200)
    lines = []
    for i, v in enumerate(values + values[:7]):
        text = f"{v:032x}" if i % 3 else f"\t{v:032x}  "  # whitespace around every third line
        lines.append(text.upper() if i % 5 == 0 else text)
        if i % 17 == 0:
            lines.append("   " if i % 2 else "")  # blank lines are skipped
    source = tmp_path / "uids.txt"
    source.write_text("\r\n".join(f"  {line}" if i % 11 == 0 else line for i, line in enumerate(lines)))
    out = tmp_path / "out.npy"
    assert main(["uids", "from-hex", str(source), "-o", str(out)]) == 0
    filled = [h for h in lines if h.strip()]
    want = sorted({divmod(int(h, 16), LOW) for h in filled})
    assert np.load(out).tolist() == want
    assert f"({len(filled) - len(want)} duplicates dropped)" in capsys.readouterr().out


def test_from_hex_text_across_blocks(tmp_path, monkeypatch):
    """Lines split between read blocks, and a last line without newline, still parse."""
    monkeypatch.setattr(hexfiles, "TEXT_BLOCK_BYTES", 50)
    values = tricky_values(random.Random(12), 40)
    source = tmp_path / "uids.txt"
    source.write_text("\n\n".join(f"{v:032x}" for v in values))
    out = tmp_path / "out.npy"
    assert main(["uids", "from-hex", str(source), "-o", str(out)]) == 0
    assert load(out) == sorted(set(values))


def test_to_hex_and_round_trip(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hexfiles, "CHUNK_ROWS", 7)  # several chunks
    values = tricky_values(random.Random(13), 100)
    source = save(tmp_path / "a.npy", values)
    text = tmp_path / "a.txt"
    assert main(["uids", "to-hex", source, "-o", str(text)]) == 0
    lines = text.read_text().split("\n")
    assert lines[-1] == "" and lines[:-1] == [f"{v:032x}" for v in sorted(set(values))]
    back = tmp_path / "back.npy"
    assert main(["uids", "from-hex", str(text), "-o", str(back)]) == 0
    assert np.array_equal(np.load(back), np.load(source))
    text.write_text(text.read_text().upper())  # fixed-width upper case takes the same fast path
    assert main(["uids", "from-hex", str(text), "-o", str(back)]) == 0
    assert np.array_equal(np.load(back), np.load(source))
    assert capsys.readouterr().out.startswith(f"to-hex: {len(set(values)):,} uids")


def test_from_hex_parquet_column(tmp_path, monkeypatch):
    monkeypatch.setattr(hexfiles, "CHUNK_ROWS", 16)
    values = tricky_values(random.Random(14), 90)
    source = tmp_path / "uids.parquet"
    hexes = [f"{v:032X}" if i % 2 else f"{v:032x}" for i, v in enumerate(values)]
    pq.write_table(pa.table({"key": hexes, "n": range(len(values))}), source)
    out = tmp_path / "out.npy"
    assert main(["uids", "from-hex", str(source), "--column", "key", "-o", str(out)]) == 0
    assert load(out) == sorted(set(values))


# --- info -------------------------------------------------------------------------------------------------


def info_fields(capsys) -> dict[str, str]:
    out = capsys.readouterr().out
    return dict(line.split(": ", 1) for line in out.strip().splitlines())


def test_info_counts_and_pool_overlap(tmp_path, capsys):
    written = make_pool(str(tmp_path / "pool"), [13, 9, 20], dim=8)
    pool_hex = [h for shard in written.values() for h in shard["uids"]]
    rng = random.Random(15)
    chosen = rng.sample(pool_hex, 17)
    outside = tricky_values(rng, 11)
    values = [int(h, 16) for h in chosen] + outside
    path = save(tmp_path / "sel.npy", values)
    assert main(["uids", "info", path, "--metadata_dir", str(tmp_path / "pool")]) == 0
    fields = info_fields(capsys)
    ordered = sorted(set(values))
    assert fields["count"] == f"{len(ordered):,}"
    assert fields["sorted unique"] == "yes"
    assert fields["first"] == f"{ordered[0]:032x}" and fields["last"] == f"{ordered[-1]:032x}"
    assert fields["pool"].startswith(f"{len(pool_hex):,} rows in 3 shards")
    in_pool = len({int(h, 16) for h in pool_hex} & set(values))
    assert fields["file uids in pool"].startswith(f"{in_pool:,} of {len(ordered):,}")
    assert fields["pool rows in file"] == f"{sum(int(h, 16) in set(values) for h in pool_hex):,} of {len(pool_hex):,}"


def test_info_reports_disorder_and_duplicates(tmp_path, capsys):
    rng = random.Random(16)
    values = tricky_values(rng, 80)
    values += rng.sample(values, 9)
    rng.shuffle(values)
    path = save(tmp_path / "raw.npy", values, sort=False)
    assert main(["uids", "info", path]) == 0
    fields = info_fields(capsys)
    descents = sum(b < a for a, b in itertools.pairwise(values))
    duplicates = len(values) - len(set(values))
    assert fields["count"] == f"{len(values):,}"
    assert fields["sorted unique"].startswith(f"no ({descents:,} out of order, {duplicates:,} duplicates")
    assert fields["first"] == f"{values[0]:032x}" and fields["last"] == f"{values[-1]:032x}"
    assert uidtools.check_order(as_array(sorted(values))) == uidtools.OrderCheck(len(values), 0, duplicates)


# --- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("array,dtype_text", [
    (np.arange(4, dtype=np.int64), "int64"),
    (np.zeros(3, dtype="u4,u4"), "('f0', '<u4')"),
    (np.zeros(3, dtype=">u8,>u8"), "('f0', '>u8')"),
    (np.zeros((2, 2), dtype="u8,u8"), "shape (2, 2)"),
])
@pytest.mark.parametrize("command", ["intersect", "to-hex", "info"])
def test_wrong_dtype_is_refused(tmp_path, capsys, array, dtype_text, command):
    bad = tmp_path / "bad.npy"
    np.save(bad, array)
    good = save(tmp_path / "good.npy", [1, 2])
    out = str(tmp_path / "out.npy")
    argv = {"intersect": ["uids", "intersect", good, str(bad), "-o", out],
            "to-hex": ["uids", "to-hex", str(bad), "-o", out], "info": ["uids", "info", str(bad)]}[command]
    expect_refusal(capsys, argv, f"{bad}: expected a 1-D uid array of dtype", dtype_text)


@pytest.mark.parametrize("kind", ["npz", "text"])
def test_unreadable_uid_file_is_refused(tmp_path, capsys, kind):
    bad = tmp_path / "bad.npy"
    if kind == "npz":
        with open(bad, "wb") as handle:
            np.savez(handle, uids=as_array([1, 2]))
    else:
        bad.write_text("0123\n")
    expect_refusal(capsys, ["uids", "to-hex", str(bad), "-o", str(tmp_path / "out.txt")], f"{bad}: ",
                   ".npz archive" if kind == "npz" else "not a readable .npy uid file")


@pytest.mark.parametrize("command", ["union", "to-hex", "from-hex", "info"])
def test_missing_input_is_named(tmp_path, capsys, command):
    missing = str(tmp_path / "nowhere.npy")
    good = save(tmp_path / "good.npy", [1])
    out = str(tmp_path / "out.npy")
    argv = {"union": ["uids", "union", good, missing, "-o", out], "to-hex": ["uids", "to-hex", missing, "-o", out],
            "from-hex": ["uids", "from-hex", missing, "-o", out], "info": ["uids", "info", missing]}[command]
    expect_refusal(capsys, argv, f"{missing}: ", "not found")


@pytest.mark.parametrize("bad", ["12g4", "f" * 33, "12 34", "ab€", "0" * 31 + "g", "0" * 31 + "\x00", "1\x00"])
@pytest.mark.parametrize("block_bytes", [64, 1 << 20])
def test_malformed_hex_line_is_named(tmp_path, capsys, monkeypatch, bad, block_bytes):
    """Letters, too long, inner space, non-ASCII, and a bad digit in a fixed-width 32-character file."""
    monkeypatch.setattr(hexfiles, "TEXT_BLOCK_BYTES", block_bytes)  # 64: the bad line sits in a later block
    source = tmp_path / "uids.txt"
    good = [f"{v:032x}" for v in range(1, 6)]
    blank = [] if len(bad) == 32 else ["", ""]
    source.write_text("\n".join(good[:2] + blank + good[2:] + [bad] + good) + "\n", encoding="utf-8")
    line = good.index(good[-1]) + len(blank) + 2
    expect_refusal(capsys, ["uids", "from-hex", str(source), "-o", str(tmp_path / "out.npy")],
                   f"{source} line {line}: malformed uid {bad!r}")


@pytest.mark.parametrize("bad,shown,width", [("xyz", "'xyz'", 1), (None, "missing value (null)", 1),
                                             ("0" * 31 + "g", "'" + "0" * 31 + "g'", 32)])
def test_malformed_parquet_row_is_named(tmp_path, capsys, monkeypatch, bad, shown, width):
    """Row numbers count across read batches; a bad value of width 32 takes the fixed-width fast path."""
    monkeypatch.setattr(hexfiles, "CHUNK_ROWS", 4)
    source = tmp_path / "uids.parquet"
    pq.write_table(pa.table({"uid": [f"{v:032x}" for v in range(9)] + [bad, "1" * 32]}), source)
    expect_refusal(capsys, ["uids", "from-hex", str(source), "-o", str(tmp_path / "out.npy")],
                   f"{source} column 'uid' row 9: malformed uid", shown)


def test_parquet_without_column_lists_columns(tmp_path, capsys):
    source = tmp_path / "uids.parquet"
    pq.write_table(pa.table({"key": ["1"], "url": ["x"]}), source)
    expect_refusal(capsys, ["uids", "from-hex", str(source), "-o", str(tmp_path / "out.npy")],
                   f"{source}: no column 'uid'", "['key', 'url']")
    pq.write_table(pa.table({"uid": [1, 2]}), source)
    expect_refusal(capsys, ["uids", "from-hex", str(source), "-o", str(tmp_path / "out.npy")],
                   "column 'uid' has type int64")


def test_unwritable_output_is_refused_before_reading(tmp_path, capsys):
    a = save(tmp_path / "a.npy", [1, 2])
    target = tmp_path / "no_such_folder" / "out.npy"
    expect_refusal(capsys, ["uids", "union", a, a, "-o", str(target)], "-o", "does not exist")
    assert not target.parent.exists()


def test_failed_write_leaves_no_output(tmp_path, capsys, monkeypatch):
    """An error while writing removes the temporary file and leaves the target untouched."""
    a = save(tmp_path / "a.npy", [1, 2, 3])

    def broken(uids, chunk_rows=1):
        yield b"00000000000000000000000000000001\n"
        raise OSError("disk full")

    monkeypatch.setattr(hexfiles, "hex_blocks", broken)
    assert main(["uids", "to-hex", a, "-o", str(tmp_path / "a.txt")]) == 2
    assert "a.txt: writing failed (disk full)" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["a.npy"]


def test_help_states_the_policy(capsys):
    with pytest.raises(SystemExit):
        main(["uids", "intersect", "--help"])
    out = capsys.readouterr().out
    assert "bad input policy" in out and "sorted and deduplicated" in out and "exit with code 2" in out
