"""config.validate's streaming check: ``--streaming`` selects a quality stage alone, in passes over the cache;
a second stage, a uid restriction or external scores need the whole pool in memory, so they are refused
before any work, with the flag named."""

from __future__ import annotations

import pytest
from conftest import make_pool

from datacomp_plugins.cli import main


def test_streaming_refuses_stages_it_cannot_do(tmp_path, cache_dir, capsys):
    make_pool(str(tmp_path / "pool"), [20])
    assert main(["filter", "--no_progress", "--name", "normsim_d", "--metadata_dir", str(tmp_path / "pool"),
                 "--fraction", "0.5", "--normsim_fraction", "0.2", "--streaming",
                 "--save_path", str(tmp_path / "o.npy")]) == 2
    assert "--streaming: only for a quality stage alone" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--given_uids", "given.npy"],
                                   ["--external_scores", "x.parquet", "--external_column", "s",
                                    "--external_fraction", "0.5"]])
def test_streaming_refuses_a_restricted_pool(tmp_path, cache_dir, capsys, extra):
    make_pool(str(tmp_path / "pool"), [20])
    code = main(["filter", "--no_progress", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                 "--fraction", "0.5", "--streaming", "--save_path", str(tmp_path / "o.npy"),
                 *[str(tmp_path / e) if e.endswith((".npy", ".parquet")) else e for e in extra]])
    assert code == 2
    assert "--streaming: only for a quality stage alone" in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()
