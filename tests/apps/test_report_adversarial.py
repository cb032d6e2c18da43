"""The report attacked with unreadable JSON lines, huge integer metrics and a failure mid-write: exit status 2,
the file and line named, and no report left half-written.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import expect_exit_2


def _results(tmp_path, lines: list[str]) -> str:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "eval_results.jsonl").write_text("\n".join(lines) + "\n")
    return str(run)


GOOD_LINE = json.dumps({"key": "imagenet1k", "metrics": {"main_metric": 0.5}})


@pytest.mark.parametrize("line,fragment", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"key": "vtab/cifar10", "metrics": {"main_metric": ' + "1" * 5000 + "}}", "unreadable JSON value"),
])
def test_report_unreadable_json_line_names_file_and_line(tmp_path, capsys, line, fragment):
    run = _results(tmp_path, [GOOD_LINE, line])
    expect_exit_2(capsys, ["report", run, "--partial", "--out", str(tmp_path / "out")], tmp_path / "out",
                  f"{run}/eval_results.jsonl:2:", fragment)


def test_report_huge_integer_metric_is_refused(tmp_path, capsys):
    line = '{"key": "imagenet1k", "metrics": {"main_metric": ' + "1" * 400 + "}}"
    run = _results(tmp_path, [GOOD_LINE, line])
    expect_exit_2(capsys, ["report", run, "--partial"], None, "eval_results.jsonl:2", "expected a number in [0, 1]")


def test_report_is_written_whole_or_not_at_all(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = _results(tmp_path, [GOOD_LINE])
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.png").mkdir()  # the last file cannot be renamed into place
    expect_exit_2(capsys, ["report", run, "--partial", "--out", str(out)], None, f"--out {out}", "nothing written")
    assert sorted(os.listdir(out)) == ["report.png"]  # no report.md/.csv from a failed run, no temporaries
