"""The demo's comparison on a small example pool: counts add up and the planted effect shows."""

from __future__ import annotations

import pytest

from datacomp_plugins.apps.demo_table import default_entries, kept_by_kind, render
from datacomp_plugins.apps.toy import KINDS, write_toy_pool
from datacomp_plugins.cli import main


@pytest.mark.slow  # builds the example pool and runs every baseline on it
def test_compare_counts_are_consistent(tmp_path):
    write_toy_pool(str(tmp_path), shards=2, rows=2500)
    rows, totals, relevant = kept_by_kind(str(tmp_path), default_entries(str(tmp_path), 0.3, 0.2))
    n = sum(totals.values())
    assert [r.label.split()[0] for r in rows] == ["clip_score", "negcliploss", "normsiminf", "normsim2",
                                                   "normsim_d"]
    for row in rows:
        # clip_score follows DataComp's rule (the (n+1)-th best score is the cut-off): one more, no ties here
        assert row.kept == int(n * (0.3 if row.label.startswith(("clip", "neg")) else 0.2)) + (
            row.label.startswith("clip"))
        assert sum(row.by_kind.values()) == row.kept
        assert all(row.by_kind[k] <= totals[k] for k in KINDS)
        assert row.target_relevant <= relevant
    clip, neg, inf, two, _ = rows
    assert neg.by_kind["generic"] < clip.by_kind["generic"]
    # with the target, NormSim keeps every target-relevant survivor of the negCLIPLoss stage it has room for
    assert 0 < neg.target_relevant < inf.kept
    assert inf.target_relevant == two.target_relevant == neg.target_relevant
    table = render(rows, totals, relevant)
    assert table.count("\n") == 6 and "| negcliploss 30% |" in table


def test_demo_command_rejects_bad_fraction(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "d"), "--fraction", "2"]) == 2
    assert "--fraction 2.0: must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
