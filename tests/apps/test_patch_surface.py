"""DataComp's patch and the package's public surface for it (datacomp_plugins.datacomp_api): the patch imports
nothing else, every name it imports is there, checks run once per run, and a checkout patched by the previous
version of the patch (tests/apps/data) still runs and writes the same uid file."""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_pool

from datacomp_plugins import datacomp_api
from datacomp_plugins.apps.patch import patch_bytes

OLDER_PATCH = Path(__file__).resolve().parent / "data" / "datacomp-baselines-0.1.0.patch"
PUBLIC = "datacomp_plugins.datacomp_api"


def _imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names) of every import of this package anywhere in ``tree`` (functions included)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("datacomp_plugins"):
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("datacomp_plugins")]
    return found


def _added_code(patch: str) -> str:
    """The patch's added lines, dedented into statements ast can read one by one."""
    lines = [line[1:] for line in patch.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return "\n".join(lines)


def test_the_patch_imports_only_the_public_module_and_only_names_it_exports():
    statements = re.findall(r"^\s*(from\s+\S+\s+import\s+[^\n]+|import\s+\S+)", _added_code(patch_bytes().decode()),
                            re.M)
    ours = [s for s in statements if "datacomp_plugins" in s]
    assert ours, "the patch imports nothing of ours?"
    names = []
    for statement in ours:
        (module, imported), = _imports(ast.parse(statement.strip()))
        assert module == PUBLIC, f"the patch imports {module}: {statement.strip()}"
        names += imported
    assert set(names) <= set(datacomp_api.__all__), set(names) - set(datacomp_api.__all__)
    for name in datacomp_api.__all__:  # each exported name resolves (BASELINES lazily)
        assert getattr(datacomp_api, name) is not None


def test_names_older_patches_import_stay_where_they_were():
    """The imports of the previous patch, read from it, still resolve (older patched checkouts keep working)."""
    old = _added_code(OLDER_PATCH.read_text())
    statements = [s.strip() for s in re.findall(r"^\s*(from\s+datacomp_plugins\S*\s+import\s+[^\n]+)", old, re.M)]
    assert len(statements) == 4, statements
    for statement in statements:
        for module, names in _imports(ast.parse(statement)):
            imported = __import__(module, fromlist=names)
            assert all(hasattr(imported, name) for name in names), statement


def test_run_baseline_checks_the_settings_once(tmp_path, monkeypatch, cache_dir):
    from datacomp_plugins import pipeline
    from datacomp_plugins.cli import build_parser

    make_pool(str(tmp_path / "pool"), [30])
    calls = []
    real = pipeline.validate
    monkeypatch.setattr(pipeline, "validate", lambda config: calls.append(config) or real(config))
    args = build_parser().parse_args(["filter", "--name", "clip_score", "--metadata_dir", str(tmp_path / "pool"),
                                      "--fraction", "0.5", "--save_path", str(tmp_path / "out.npy"),
                                      "--no_progress"])
    summary = datacomp_api.run_baseline(args)
    assert summary.kept == 16 and len(calls) == 1  # DataComp's clip_score rule keeps floor(N*F) + 1
    bad = argparse.Namespace(**{**vars(args), "fraction": 2.0})
    with pytest.raises(datacomp_api.PluginError, match="--fraction 2.0: must be in"):
        datacomp_api.run_baseline(bad)


def _datacomp_dir() -> Path:
    folder = os.environ.get("DATACOMP_DIR")
    if not folder or not (Path(folder) / "baselines.py").is_file():
        pytest.skip("needs DataComp's source in DATACOMP_DIR (CI sets it to ../shared/datacomp)")
    return Path(folder)


def _apply(checkout: Path, patch: bytes) -> None:
    subprocess.run(["git", "apply", "-"], input=patch, cwd=checkout, check=True, capture_output=True,
                   env={**os.environ, "GIT_CEILING_DIRECTORIES": str(checkout.parent)})


def test_patched_file_imports_only_the_public_module_and_an_older_patch_still_runs(tmp_path):
    if not shutil.which("git"):
        pytest.skip("needs git to apply the patches")
    source = _datacomp_dir()
    checkouts = {}
    for label, patch in (("new", patch_bytes()), ("old", OLDER_PATCH.read_bytes())):
        checkouts[label] = tmp_path / label
        shutil.copytree(source, checkouts[label], ignore=shutil.ignore_patterns(".git"))
        _apply(checkouts[label], patch)
    modules = {module for module, _ in _imports(ast.parse((checkouts["new"] / "baselines.py").read_text()))}
    assert modules == {PUBLIC}
    make_pool(str(tmp_path / "pool"), [50, 30], seed=2)
    outputs = {}
    for label, checkout in checkouts.items():
        outputs[label] = tmp_path / f"{label}.npy"
        result = subprocess.run([sys.executable, "baselines.py", "--name", "negcliploss", "--metadata_dir",
                                 str(tmp_path / "pool"), "--save_path", str(outputs[label]), "--fraction", "0.4",
                                 "--num_workers", "1", "--num_gpus", "0", "--negcliploss_batch_size", "16",
                                 "--cache_dir", str(tmp_path / f"cache-{label}"), "--no_progress"],
                                cwd=checkout, capture_output=True, text=True, check=False, timeout=300)
        assert result.returncode == 0, result.stderr
    assert outputs["old"].read_bytes() == outputs["new"].read_bytes()
