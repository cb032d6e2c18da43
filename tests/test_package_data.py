"""Every file the package reads at run time besides its modules is declared as package data, so it installs."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "datacomp_plugins"


def test_every_data_file_in_the_package_is_declared():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    declared = globs["datacomp_plugins"]
    data = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)
    assert "apps/templates/inspect_page.html" in data
    missing = [f for f in data if not any(fnmatch.fnmatch(f, g) for g in declared)]
    assert missing == [], f"not in [tool.setuptools.package-data]: {missing}"
