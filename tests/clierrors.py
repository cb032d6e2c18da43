"""Checks shared by the tests of commands that must fail cleanly: one error line, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path


def no_output(out: Path) -> bool:
    """Neither the file nor a leftover temporary beside it."""
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def fails(capsys, out: Path, code: int, *needles: str) -> str:
    """The command exited 2 with one ``error:`` line holding every needle, and wrote nothing at ``out``."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err
    assert no_output(out)
    return err
