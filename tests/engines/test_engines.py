"""The engine registry: a third-party engine found through a real entry point gives the local engine's uid file;
unknown or broken engine names are one clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest
from conftest import expect_exit_2, make_pool

from datacomp_plugins import engines
from datacomp_plugins.core.errors import PluginError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# An engine as another package would ship it: scores in this process, last shard first (so results arrive
# out of shard order), and records which shards it was handed.
REVERSE_ENGINE = '''
from __future__ import annotations

import json
import os

from datacomp_plugins.scores.shard import score_shard


class ReverseEngine:
    uncached_only = True

    def score(self, job, shards, options):
        with open(os.environ["REVERSE_ENGINE_LOG"], "a") as log:
            log.write(json.dumps([shard.stem for shard in shards]) + "\\n")
        for shard in reversed(shards):
            yield score_shard(job.pool, job.cache, shard, job.scores)
'''


def install_plugin(root) -> str:
    """A module plus a ``*.dist-info`` folder declaring its entry point: what ``pip install`` would leave."""
    (root / "reverse_engine_plugin.py").write_text(REVERSE_ENGINE)
    info = root / "reverse_engine_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: reverse-engine-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{engines.ENTRY_POINT_GROUP}]\nreverse = reverse_engine_plugin:ReverseEngine\n")
    return str(root)


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow  # builds and installs a package, then runs the command in a subprocess
def test_engine_from_an_installed_package_gives_the_local_uid_file(tmp_path):
    plugins = tmp_path / "site"
    plugins.mkdir()
    log = tmp_path / "reverse.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [install_plugin(plugins), REPO, *filter(None, [os.environ.get("PYTHONPATH")])]),
        REVERSE_ENGINE_LOG=str(log))
    names = run(["-c", "from datacomp_plugins.engines import engine_names; print(list(engine_names()))"], env)
    assert names.stdout.strip() == "['local', 'ray', 'reverse']"

    pool = str(tmp_path / "pool")
    make_pool(pool, [120, 80, 50], seed=3)

    def filter_args(engine: str, cache: str) -> list[str]:
        return ["-m", "datacomp_plugins", "filter", "--no_progress", "--name", "negcliploss", "--metadata_dir", pool,
                "--fraction", "0.4", "--negcliploss_batch_size", "32", "--num_batches", "2", "--engine", engine,
                "--save_path", str(tmp_path / f"{engine}.npy"), "--cache_dir", str(tmp_path / cache)]

    run(filter_args("local", "cache-local"), env)
    reverse = run(filter_args("reverse", "cache-reverse"), env)
    assert "(3 scored, 0 from cache)" in reverse.stdout
    assert (tmp_path / "reverse.npy").read_bytes() == (tmp_path / "local.npy").read_bytes()
    sidecar = json.loads((tmp_path / "reverse.npy.json").read_text())
    assert sidecar["engine"] == "reverse"
    # uncached_only: the rerun hands the engine nothing, and everything comes from the cache
    again = run(filter_args("reverse", "cache-reverse"), env)
    assert "(0 scored, 3 from cache)" in again.stdout
    assert [json.loads(line) for line in log.read_text().splitlines()] == [["00000000", "00000001", "00000002"], []]


def test_unknown_engine_is_one_clear_error(tmp_path, capsys):
    from datacomp_plugins.config import FilterConfig, validate

    with pytest.raises(PluginError) as info:
        engines.get_engine("nonexistent")
    assert str(info.value) == "--engine nonexistent: expected one of ['local', 'ray']"
    config = FilterConfig("clip_score", str(tmp_path), str(tmp_path / "out.npy"), fraction=0.5, engine="nonexistent")
    with pytest.raises(PluginError) as info:
        validate(config)
    assert str(info.value) == "--engine nonexistent: expected one of ['local', 'ray']"
    out = tmp_path / "out.npy"
    expect_exit_2(capsys, ["filter", "--name", "clip_score", "--metadata_dir", str(tmp_path), "--fraction", "0.5",
                           "--save_path", str(out), "--engine", "nonexistent"], out, "--engine", "invalid choice")


def test_broken_or_clashing_entry_points(monkeypatch):
    declared = [EntryPoint("broken", "no_such_module_for_engines:Engine", engines.ENTRY_POINT_GROUP),
                EntryPoint("local", "no_such_module_for_engines:Local", engines.ENTRY_POINT_GROUP)]
    from datacomp_plugins.core import registry

    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [ep for ep in declared if ep.group == group])
    monkeypatch.setattr(engines, "REGISTRY", registry.Registry("engine", engines.ENGINES, engines.ENTRY_POINT_GROUP))
    assert engines.engine_names() == ("local", "ray", "broken")
    with pytest.raises(PluginError, match="^--engine broken: cannot load no_such_module_for_engines:Engine"):
        engines.get_engine("broken")
    # a package cannot replace a built-in engine
    assert type(engines.get_engine("local")).__module__ == "datacomp_plugins.engines.local"


def test_builtin_engines_follow_the_contract():
    local, ray = engines.get_engine("local"), engines.get_engine("ray")
    assert local.uncached_only is False  # checks the cache itself, reading ahead
    assert ray.uncached_only is True  # an all-cached rerun must not reach a cluster
    assert set(engines.ENGINES) == {"local", "ray"}
