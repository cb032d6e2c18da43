"""The one-line summary of a filter run (config.Summary.line), worked by hand."""

from __future__ import annotations

from dataclasses import fields

from datacomp_plugins.config import Summary


def test_a_fresh_summary_counts_nothing():
    summary = Summary("x")
    assert all(getattr(summary, f.name) == 0 for f in fields(summary) if f.name not in ("name", "notes"))
    assert summary.notes == []


def test_the_line_worked_by_hand():
    summary = Summary("negcliploss", pool_rows=31, pool_samples=30, duplicates=1, unscorable=2, after_quality=20,
                      kept=16, shards=3, shards_scored=1, seconds=1.26, notes=["a note"])
    assert summary.line() == ("negcliploss: kept 16 of 30 samples (53.3%) from 3 shards (1 scored, 2 from cache); "
                              "2 not scorable; 1 duplicate uids counted once; 20 after the quality stage; a note; "
                              "1.3 s")


def test_one_stage_says_nothing_of_a_second_and_an_empty_pool_is_zero_percent():
    summary = Summary("clip_score", pool_samples=8, after_quality=2, kept=2, shards=1)
    assert summary.line() == ("clip_score: kept 2 of 8 samples (25.0%) from 1 shards (0 scored, 1 from cache); "
                              "0 not scorable; 0 duplicate uids counted once; 0.0 s")
    assert "kept 0 of 0 samples (0.0%)" in Summary("s").line()
