"""Importing the package changes no process setting; the entry points that run scoring set them explicitly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from datacomp_plugins import runtime

SETTINGS = {"MKL_CBWR": "AUTO,STRICT", "THP_MEM_ALLOC_ENABLE": "1"}


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([repo, *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_import_leaves_the_environment_untouched():
    code = ("import os; before = dict(os.environ); import datacomp_plugins, datacomp_plugins.filtering, "
            "datacomp_plugins.cli, datacomp_plugins.engines, datacomp_plugins.engines.local, "
            "datacomp_plugins.engines.ray; assert dict(os.environ) == before, "
            "set(os.environ.items()) ^ set(before.items())")
    result = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_configure_sets_defaults_and_an_explicit_value_wins(monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    runtime.configure()
    assert {name: os.environ[name] for name in SETTINGS} == SETTINGS
    runtime.configure()  # idempotent
    assert {name: os.environ[name] for name in SETTINGS} == SETTINGS
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    runtime.configure()
    assert os.environ["MKL_CBWR"] == "AUTO" and os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


def test_command_line_configures_before_anything_else(monkeypatch, capsys):
    from datacomp_plugins.cli import main

    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        main(["--version"])
    capsys.readouterr()
    assert {name: os.environ.get(name) for name in SETTINGS} == SETTINGS


def test_run_filter_configures_for_callers_without_the_command_line(monkeypatch, tmp_path):
    """DataComp's patched baselines.py calls run_filter directly."""
    from datacomp_plugins.config import FilterConfig
    from datacomp_plugins.core.errors import PluginError
    from datacomp_plugins.pipeline import run_filter

    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PluginError):  # refused by validation, after the settings are in place
        run_filter(FilterConfig("nonexistent", str(tmp_path), str(tmp_path / "out.npy"), fraction=0.5))
    assert {name: os.environ.get(name) for name in SETTINGS} == SETTINGS
