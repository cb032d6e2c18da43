"""The one lazy registry (core/registry.py) behind scores, engines and optional extras: names come without
imports, ``--help``/``--version`` import no plugin, a broken or ill-formed plugin is one warning and is not
offered, and what callers get is read-only."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from datacomp_plugins.core import registry
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.registry import Registry

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _points(monkeypatch, *points: EntryPoint) -> None:
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [p for p in points if p.group == group])


def test_names_without_imports_then_objects_on_demand(monkeypatch, capsys):
    _points(monkeypatch, EntryPoint("broken", "no_such_module_for_registry:X", "g"),
            EntryPoint("sqrt", "math:sqrt", "g"), EntryPoint("dumps", "math:pi", "g"))
    checked = []
    things = Registry("thing", {"dumps": "json:dumps"}, "g",
                      check=lambda name, obj, accepted: checked.append(name) or obj)
    assert things.names() == ("dumps", "broken", "sqrt") and checked == []  # nothing imported yet
    assert "ignored: the name is taken" in capsys.readouterr().err  # an entry point may not replace a built-in
    import json
    import math

    assert things.get("dumps") is json.dumps and things.get("sqrt") is math.sqrt
    with pytest.raises(PluginError, match=r"^thing 'nope': unknown; expected one of \['dumps', 'broken', 'sqrt'\]$"):
        things.get("nope")
    with pytest.raises(PluginError, match="^thing 'broken': cannot load no_such_module_for_registry:X"):
        things.get("broken")
    everything = things.load_all()
    assert dict(everything) == {"dumps": json.dumps, "sqrt": math.sqrt}
    err = capsys.readouterr().err
    assert err.count("warning: thing 'broken' (no_such_module_for_registry:X) not offered") == 1  # once, not per ask
    with pytest.raises(TypeError):
        everything["x"] = 1  # read-only view
    with pytest.raises(TypeError):
        things.known()["x"] = "y"
    assert "broken" not in things.names()


def test_register_refuses_a_taken_name_unless_told(monkeypatch):
    _points(monkeypatch)
    things = Registry("thing", {"dumps": "json:dumps"}, "g")
    with pytest.raises(PluginError, match="thing 'dumps': the name is taken"):
        things.register("dumps", "json:loads")
    things.register("loads", "json:loads")
    things.register("dumps", len, clobber=True)
    assert things.get("dumps") is len and things.origin("loads") == "registered json:loads"


def test_an_optional_extra_that_is_missing_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    wanted = r"^--out: needs the 'report' extra: pip install 'datacomp-plugins\[report\]' \("
    with pytest.raises(PluginError, match=wanted):
        registry.require("report", "--out")
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    declared = tomllib.loads((Path(REPO) / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(registry.EXTRAS.names()) <= set(declared)  # every hint names an extra that exists


# A score plugin whose import leaves a marker, and one whose hook has the older (config, compute, cache) form.
RECORDING = '''
import os
open(os.environ["PLUGIN_MARKER"], "a").write("imported\\n")
from datacomp_plugins.scores.base import ScoreSpec


class OldStyle(ScoreSpec):
    def shard_score(self, config, compute, cache):
        raise AssertionError("never called")


SPEC = OldStyle("old_style", "quality", "a hook with the older signature")


class Recorded:
    uncached_only = True

    def score(self, job, shards, options):
        return iter(())
'''


def test_help_and_version_import_no_plugin_and_a_wrong_hook_is_one_warning(tmp_path):
    site = tmp_path / "site"
    info = site / "recording-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "recording_plugin.py").write_text(RECORDING)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: recording\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[datacomp_plugins.scores]\nold_style = recording_plugin:SPEC\n"
                                           "[datacomp_plugins.engines]\nrecorded = recording_plugin:Recorded\n")
    marker = tmp_path / "marker"
    env = dict(os.environ, PLUGIN_MARKER=str(marker), PYTHONPATH=os.pathsep.join(
        [str(site), REPO, *filter(None, [os.environ.get("PYTHONPATH")])]))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "datacomp_plugins", *args], capture_output=True, text=True,
                              env=env, timeout=300, check=False)

    for args in (["--version"], ["--help"], ["toy-pool", "--help"], ["report", "--help"]):
        result = run(*args)
        assert result.returncode == 0, result.stderr
        assert not marker.exists(), f"{args} imported the plugin"
        assert "warning" not in result.stderr
    result = run("filter", "--help")
    assert result.returncode == 0 and marker.exists()  # the filter flags do need every score
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "score 'old_style'" in warnings[0], result.stderr
    assert "shard_score(config, compute, cache) must take (params, run)" in warnings[0]
    assert "old_style" not in result.stdout  # not offered as a --name choice


def test_a_score_is_checked_against_the_contract_and_the_taken_setting_names():
    from dataclasses import dataclass

    from datacomp_plugins import scores
    from datacomp_plugins.scores.base import ScoreSpec, setting

    @dataclass(frozen=True)
    class Grabs:
        ray_address: str | None = setting(None, "a built-in engine's setting")

    class Quality(ScoreSpec):
        def shard_score(self, params, run):
            raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"its setting\(s\) \['ray_address'\] collide"):
        scores._check("grabs", Quality("grabs", "quality", "x", Grabs), {})
    with pytest.raises(TypeError, match="a relevance score must define shard_score or select"):
        scores._check("empty", ScoreSpec("empty", "relevance", "no hooks"), {})
    with pytest.raises(TypeError, match="a restriction score must define restrict"):
        scores._check("half", Quality("half", "restriction", "x"), {})
    with pytest.raises(TypeError, match=r"expected a ScoreSpec named 'other'"):
        scores._check("other", Quality("grabs", "quality", "x"), {})
    assert scores._check("fine", Quality("fine", "quality", "x"), {}).name == "fine"
