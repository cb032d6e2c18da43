"""An engine with an option of its own, added the way another package would: one module and one entry point.
Its setting is then a ``filter`` flag and a ``recipe`` flag and key, range-checked from its schema, checked by
the engine's own hook, and handed to the engine; the uid file stays the local engine's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import make_pool

from datacomp_plugins import engines

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Scores shards in an order shuffled by its own --shuffle_seed, and logs the seed and order it used.
SHUFFLED_ENGINE = '''
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass

from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.core.ranges import Range
from datacomp_plugins.scores.base import setting
from datacomp_plugins.scores.shard import score_shard


@dataclass(frozen=True)
class Params:
    shuffle_seed: int = setting(0, "--engine shuffled: seed of the shard order", Range(int, 0, 100))


class ShuffledEngine:
    uncached_only = True
    params = Params

    def check(self, params):
        if params.shuffle_seed == 13:
            raise PluginError("--shuffle_seed 13: unlucky; choose another")

    def score(self, job, shards, options):
        order = list(shards)
        random.Random(options.params.shuffle_seed).shuffle(order)
        with open(os.environ["SHUFFLED_ENGINE_LOG"], "a") as log:
            log.write(json.dumps([options.params.shuffle_seed, [s.stem for s in order]]) + "\\n")
        for shard in order:
            yield score_shard(job.pool, job.cache, shard, job.scores)
'''


def _install(root) -> str:
    (root / "shuffled_engine_plugin.py").write_text(SHUFFLED_ENGINE)
    info = root / "shuffled_engine_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shuffled-engine-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{engines.ENTRY_POINT_GROUP}]\nshuffled = shuffled_engine_plugin:ShuffledEngine\n")
    return str(root)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datacomp_plugins", *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def test_an_engine_option_is_a_flag_a_recipe_key_and_a_checked_setting(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    log = tmp_path / "shuffled.log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([_install(site), REPO, *filter(None, [os.environ.get(
        "PYTHONPATH")])]), SHUFFLED_ENGINE_LOG=str(log))
    pool = str(tmp_path / "pool")
    make_pool(pool, [60, 50, 40, 30], seed=4)

    def filter_args(engine: str, cache: str, *extra: str) -> list[str]:
        return ["filter", "--no_progress", "--name", "negcliploss", "--metadata_dir", pool, "--fraction", "0.4",
                "--negcliploss_batch_size", "16", "--num_batches", "2", "--engine", engine, "--cache_dir",
                str(tmp_path / cache), "--save_path", str(tmp_path / f"{cache}.npy"), *extra]

    assert _run(filter_args("local", "local"), env).returncode == 0
    result = _run(filter_args("shuffled", "seed7", "--shuffle_seed", "7"), env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "seed7.npy").read_bytes() == (tmp_path / "local.npy").read_bytes()
    seed, order = json.loads(log.read_text().splitlines()[-1])
    assert seed == 7 and sorted(order) == ["00000000", "00000001", "00000002", "00000003"]
    assert json.loads((tmp_path / "seed7.npy.json").read_text())["parameters"]["shuffle_seed"] == 7

    help_text = _run(["filter", "--help"], env).stdout
    assert "--shuffle_seed" in help_text and "--engine shuffled" in help_text

    # out of its range (from the schema), and refused by the engine's own check: one line, nothing written
    for value, message in (("101", "--shuffle_seed 101: must be an integer in [0, 100]"),
                           ("13", "--shuffle_seed 13: unlucky")):
        bad = _run(filter_args("shuffled", f"bad{value}", "--shuffle_seed", value), env)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert not (tmp_path / f"bad{value}.npy").exists()

    # a recipe key, and the recipe command's flag overriding it
    recipe = tmp_path / "shuffled.toml"
    recipe.write_text('title = "shuffled"\n[filter]\nname = "negcliploss"\nfraction = 0.4\n'
                      'negcliploss_batch_size = 16\nnum_batches = 2\nengine = "shuffled"\nshuffle_seed = 3\n')
    for extra, wanted in (([], 3), (["--shuffle_seed", "42"], 42)):
        out = tmp_path / f"recipe{wanted}.npy"
        result = _run(["recipe", str(recipe), "--metadata_dir", pool, "--save_path", str(out), "--cache_dir",
                       str(tmp_path / f"rcache{wanted}"), "--no_progress", *extra], env)
        assert result.returncode == 0, result.stderr
        assert json.loads(log.read_text().splitlines()[-1])[0] == wanted
        assert out.read_bytes() == (tmp_path / "local.npy").read_bytes()
