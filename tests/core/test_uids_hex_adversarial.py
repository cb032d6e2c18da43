"""Hex uid parsing attacked with whitespace, prefixes, signs and wrong lengths: accepted only as 32 hex digits,
against DataComp's divmod(int(uid, 16), 2**64).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import expect_exit_2, random_hex_uids

from datacomp_plugins.cli import main


def test_from_hex_strips_whitespace_and_matches_divmod(tmp_path, capsys):
    uids = random_hex_uids(6, seed=8)
    source = tmp_path / "uids.txt"
    source.write_text(f"  {uids[0]}\t\n{uids[1].upper()}\r\n\n   \n{uids[2]}   \n" + "\n".join(uids[3:]) + "\n")
    out = tmp_path / "out.npy"
    assert main(["uids", "from-hex", str(source), "-o", str(out)]) == 0
    assert np.load(out).tolist() == sorted(divmod(int(h, 16), 2**64) for h in uids)


@pytest.mark.parametrize("bad", ["1f", "0x" + "a" * 30, "a" * 16 + " " + "b" * 16, "a" * 31, "a" * 33, "+" + "a" * 31])
def test_from_hex_refuses_anything_but_32_hex_digits(tmp_path, capsys, bad):
    uids = random_hex_uids(3, seed=9)
    source = tmp_path / "uids.txt"
    source.write_text("\n".join([uids[0], uids[1], f" {bad} ", uids[2]]) + "\n")
    out = tmp_path / "out.npy"
    expect_exit_2(capsys, ["uids", "from-hex", str(source), "-o", str(out)], out,
                  f"{source} line 3: malformed uid", "32 hex digits")
