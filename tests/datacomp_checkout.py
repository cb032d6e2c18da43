"""DataComp's own checkout for the tests that run its scripts: ``DATACOMP_DIR`` (skipped when unset), an
untouched and a patched copy of it (the module fixture ``checkouts``), and ``python baselines.py`` in one.

A test module uses the fixture with ``checkouts = datacomp_checkout.checkouts``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datacomp_plugins.cli import main


def datacomp_dir() -> Path:
    value = os.environ.get("DATACOMP_DIR")
    if not value:
        pytest.skip("DATACOMP_DIR is not set: point it at a DataComp checkout (4a8df19) to run baselines.py")
    path = Path(value)
    if not (path / "baselines.py").is_file():
        pytest.skip(f"DATACOMP_DIR={value} holds no baselines.py")
    return path


def has_datacomp_deps() -> bool:
    probe = [sys.executable, "-c", "import fasttext, gcld3, nltk, pandas"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def checkouts(tmp_path_factory) -> dict[str, Path]:
    """An untouched copy and a patched copy of DATACOMP_DIR, plus a toy pool."""
    source = datacomp_dir()
    base = tmp_path_factory.mktemp("datacomp")
    paths = {"orig": base / "orig", "patched": base / "patched", "pool": base / "toy" / "metadata"}
    for key in ("orig", "patched"):
        shutil.copytree(source, paths[key], ignore=shutil.ignore_patterns(".git"))
    assert main(["patch-datacomp", str(paths["patched"])]) == 0
    from datacomp_plugins.apps.toy import write_toy_pool

    write_toy_pool(str(base / "toy"), shards=2, rows=500)
    return paths


def baselines_py(checkout: Path, *args: str, prelude: str = "", run: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python baselines.py ARGS`` in a checkout (``prelude``: python run first, in the same process;
    ``run=False``: the prelude alone, with ARGS)."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # DataComp prints sets; same order in both checkouts
    if prelude:
        code = prelude + ("\nimport runpy, sys\nsys.argv = ['baselines.py', *sys.argv[1:]]\n"
                          "runpy.run_path('baselines.py', run_name='__main__')" if run else "")
        command = [sys.executable, "-c", code, *args]
    else:
        command = [sys.executable, "baselines.py", *args]
    return subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, check=False)
