"""Flag values at and just past their boundaries: refused before any work, exit status 2, the flag and its range
named, no output and no cache.
"""

from __future__ import annotations

import os

import pytest

from datacomp_plugins.cli import main

BOUNDARY_FLAGS = {
    "fraction 0": (["--fraction", "0"], "--fraction 0.0: must be in (0, 1]"),
    "fraction above 1": (["--fraction", "1.0000001"], "must be in (0, 1]"),
    "fraction nan": (["--fraction", "nan"], "--fraction nan: must be in (0, 1]"),
    "fraction negative": (["--fraction", "-0.5"], "must be in (0, 1]"),
    "threshold nan": (["--threshold", "nan"], "--threshold nan: must be a finite number"),
    "threshold inf": (["--threshold", "inf"], "must be a finite number"),
    "zero batches": (["--fraction", "0.5", "--num_batches", "0"], "--num_batches 0: must be an integer in [1, "),
    "zero batch size": (["--fraction", "0.5", "--negcliploss_batch_size", "0"],
                        "--negcliploss_batch_size 0: must be an integer in [1, "),
    "negative block": (["--fraction", "0.5", "--batch_size", "-1"], "--batch_size -1"),
    "zero temperature": (["--fraction", "0.5", "--temperature", "0"], "--temperature 0.0: must be in [0.0001, "),
    "nan temperature": (["--fraction", "0.5", "--temperature", "nan"], "--temperature nan"),
    "inf temperature": (["--fraction", "0.5", "--temperature", "inf"], "--temperature inf"),
    "zero iterations": (["--name", "normsim_d", "--fraction", "0.5", "--normsim_fraction", "0.2",
                         "--normsim_d_iters", "0"], "--normsim_d_iters 0: must be an integer in [1, "),
    "normsim above fraction": (["--name", "normsim_d", "--fraction", "0.5", "--normsim_fraction", "0.5000001"],
                               "is larger than --fraction"),
    "normsim fraction 0": (["--name", "normsim_d", "--fraction", "0.5", "--normsim_fraction", "0"],
                           "--relevance_fraction 0.0: must be in (0, 1]"),
    "external fraction 0": (["--fraction", "0.5", "--external_scores", "x.parquet", "--external_column", "s",
                             "--external_fraction", "0"], "--external_fraction 0.0: must be in (0, 1]"),
}


@pytest.mark.parametrize("case", sorted(BOUNDARY_FLAGS))
def test_flag_boundaries_are_refused_before_any_work(tmp_path, cache_dir, capsys, case):
    extra, message = BOUNDARY_FLAGS[case]
    name = [] if "--name" in extra else ["--name", "negcliploss"]
    out = tmp_path / "out.npy"
    code = main(["filter", "--no_progress", *name, "--metadata_dir", str(tmp_path / "no-pool"),
                 "--save_path", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not out.exists() and not os.path.exists(cache_dir)
