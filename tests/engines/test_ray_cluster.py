"""``--engine ray`` on a real two-node Ray cluster on this machine (loopback only) that loses a node mid-run.

``ray start --head`` and a second ``ray start --address`` node run as separate processes, one CPU each, so
one scoring worker lands on each node. A score plugin sleeps a little per shard so the run is still going
when the second node's raylet is killed (SIGKILL) while it scores a shard. The run must still finish, with
the uid file of the local engine byte for byte, leave no temporary file, and leave no process of the lost
node behind. Every process the test starts carries a marker in its environment; all of them are killed by
pid at the end, whatever happened, and the Ray temp folder is removed.

Time: about 40-60 s on two cores (two node start-ups of ~7 s each, eight 1-second shards, the reference run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import make_pool

pytest.importorskip("ray", reason="the 'ray' extra is not installed (pip install 'datacomp-plugins[ray]')")

pytestmark = [pytest.mark.ray_cluster, pytest.mark.slow]

SLOW_PLUGIN = '''
"""A quality score that sleeps on the cluster's nodes (so a node can be lost mid-shard): the dot product of
each sample's image and text embeddings in float32, the same on every node."""
import os
import time
from dataclasses import dataclass, field

import numpy as np

from datacomp_plugins.scores.base import Score, ScoreSpec


@dataclass(frozen=True)
class SlowDot(Score):
    name: str = field(init=False, default="slow_dot")

    @property
    def npz_keys(self):
        return ("l14_img", "l14_txt")

    def compute(self, shard, columns, embeddings):
        markers = os.environ.get("DCP_MARKERS")
        if markers:
            node = os.environ.get("DCP_NODE", "head")
            open(os.path.join(markers, f"{node}-{shard.stem}-{os.getpid()}"), "w").close()
            time.sleep(float(os.environ.get("DCP_SLEEP", "0")))
        img = np.asarray(embeddings["l14_img"], dtype=np.float32)
        txt = np.asarray(embeddings["l14_txt"], dtype=np.float32)
        return (img * txt).sum(axis=1, dtype=np.float32)


class SlowDotSpec(ScoreSpec):
    def shard_score(self, params, run):
        return SlowDot()


SPEC = SlowDotSpec("slow_dot", "quality", "dot product, slowly (a test plugin)")
'''

START_TIMEOUT_S = 120
RUN_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, start time, command line) of every live process (zombies left out)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != b"Z":
            out[int(name)] = (int(fields[1]), int(fields[19]), cmdline)
    return out


class Started:
    """Every process this test started: Ray's daemons name its temp folder on their command line, and their
    children (workers, agents) are found through the parent pid while the parent lives. Ray renames its
    processes (``ray::...``) over their environment, so neither name nor environment alone finds them all.
    Kept as (pid, start time), so a pid reused later is never mistaken for ours."""

    def __init__(self, temp: str) -> None:
        self.temp = temp
        self.known: set[tuple[int, int]] = set()

    def refresh(self) -> set[tuple[int, int]]:
        table = self._table = _processes()
        pids = {pid for pid, _ in self.known if pid in table and (pid, table[pid][1]) in self.known}
        pids |= {pid for pid, (_, _, cmd) in table.items() if self.temp in cmd}
        grown = True
        while grown:
            children = {pid for pid, (parent, _, _) in table.items() if parent in pids} - pids
            pids |= children
            grown = bool(children)
        self.known |= {(pid, table[pid][1]) for pid in pids}
        return self.alive()

    def descendants(self, root: int) -> set[tuple[int, int]]:
        table = _processes()
        pids, grown = {root}, True
        while grown:
            children = {pid for pid, (parent, _, _) in table.items() if parent in pids} - pids
            pids |= children
            grown = bool(children)
        return {(pid, table[pid][1]) for pid in pids if pid in table}

    @staticmethod
    def still_alive(which: set[tuple[int, int]]) -> set[tuple[int, int]]:
        table = _processes()
        return {(pid, start) for pid, start in which if pid in table and table[pid][1] == start}

    def alive(self) -> set[tuple[int, int]]:
        return self.still_alive(self.known)

    def kill_all(self) -> None:
        """SIGKILL every process of this test, by pid, until none is left (30 s at most)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.refresh():
            for pid, _ in self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)


def _cmdline(pid: int) -> str:
    return _processes().get(pid, (0, 0, ""))[2]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _ray_start(ray_bin: Path, env: dict, *args: str) -> None:
    """``ray start`` for one node of the cluster: loopback only, one CPU, no GPU."""
    result = subprocess.run([str(ray_bin), "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
                             "--min-worker-port=0", "--max-worker-port=0", *args], env=env,
                            timeout=START_TIMEOUT_S, capture_output=True, text=True)
    assert result.returncode == 0, (args, result.stdout[-3000:], result.stderr[-3000:])


def _plugin_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    info = site / "slow_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "slow_plugin.py").write_text(SLOW_PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slow-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[datacomp_plugins.scores]\nslow_dot = slow_plugin:SPEC\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    for key in ("RAY_ADDRESS", "DCP_MARKERS", "DCP_NODE", "DCP_SLEEP"):
        env.pop(key, None)
    return env


def _filter(env: dict, pool: Path, out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "datacomp_plugins", "filter", "--name", "slow_dot",
                             "--metadata_dir", str(pool), "--fraction", "0.3", "--save_path", str(out),
                             "--cache_dir", str(cache), "--no_progress", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_cluster_that_loses_a_node_mid_run_writes_the_local_uid_file(tmp_path):
    ray_bin = Path(sys.executable).with_name("ray")
    assert ray_bin.exists(), f"{ray_bin}: Ray's command line is missing"
    pool = tmp_path / "pool"
    make_pool(str(pool), [60] * 8, seed=9)
    env = _plugin_env(tmp_path)

    reference = _filter(env, pool, tmp_path / "local.npy", tmp_path / "cache-local", "--engine", "local")
    _, err = reference.communicate(timeout=RUN_TIMEOUT_S)
    assert reference.returncode == 0, err

    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    started = Started(temp)
    markers = tmp_path / "markers"
    markers.mkdir()
    # a home of its own: Ray keeps an auth token in ~/.ray, which must neither leak in nor out of this test
    home = tmp_path / "home"
    home.mkdir()
    cluster = dict(env, DCP_MARKERS=str(markers), DCP_SLEEP="1.0", HOME=str(home), RAY_AUTH_MODE="disabled")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    driver = None
    try:
        _ray_start(ray_bin, cluster, "--head", f"--port={port}", "--include-dashboard=false",
                   f"--temp-dir={temp}", "--disable-usage-stats")
        _ray_start(ray_bin, dict(cluster, DCP_NODE="two"), f"--address={address}", f"--temp-dir={temp}")
        driver = _filter(cluster, pool, tmp_path / "ray.npy", tmp_path / "cache", "--engine", "ray",
                         "--ray_address", address, "--num_workers", "2")
        # the second node is scoring a shard: kill its raylet now
        _wait_for(lambda: [m for m in os.listdir(markers) if m.startswith("two-")], START_TIMEOUT_S,
                  "the second node to start scoring a shard")
        started.refresh()
        raylets = [pid for pid, _ in started.alive() if "raylet/raylet" in _cmdline(pid)]
        assert len(raylets) == 2, raylets
        second = max(raylets)  # started after the head's
        lost_node = started.descendants(second)
        lost_workers = {p for p in lost_node if "_Scorer" in _cmdline(p[0])}
        assert lost_workers, [_cmdline(p) for p, _ in lost_node]
        os.kill(second, signal.SIGKILL)

        out, err = driver.communicate(timeout=RUN_TIMEOUT_S)
        assert driver.returncode == 0, err
        assert "was lost" in err and "scoring it again on another worker" in err, err
        assert "Traceback" not in err
        assert (tmp_path / "ray.npy").read_bytes() == (tmp_path / "local.npy").read_bytes()
        # the lost shard really was scored twice: once on the lost node, once again on the head
        lost = {m.split("-")[1] for m in os.listdir(markers) if m.startswith("two-")}
        again = {m.split("-")[1] for m in os.listdir(markers) if m.startswith("head-")}
        assert lost & again, (lost, again)
        # nothing half-written anywhere, and the lost node's processes all ended with its raylet
        leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".write-probe-" in p.name]
        assert leftovers == []
        # the lost node's scoring workers ended with their raylet (Ray's per-node agents outlive it, as they
        # would on a real node until `ray stop` there: the clean-up below ends them)
        _wait_for(lambda: not started.still_alive(lost_workers), 60, "the lost node's workers to end")
        assert not [pid for pid, _ in started.refresh() if "datacomp_plugins" in _cmdline(pid)]  # no driver
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
        started.kill_all()
        shutil.rmtree(temp, ignore_errors=True)
    assert started.alive() == set()
    assert started.known  # the tracking found the cluster's processes at all
