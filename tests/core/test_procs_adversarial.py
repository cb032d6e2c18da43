"""Killed runs: workers end with their parent, temporaries are removed or swept, cached shards start no workers.

The kill tests run the real command line in a subprocess, record its worker processes (children in /proc)
while they compute, kill the parent and then look for survivors.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import make_pool

from datacomp_plugins.cli import main
from datacomp_plugins.core import procs
from datacomp_plugins.engines import local as local_engine

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the state on (the name may hold spaces)


def children(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` (by a /proc scan)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat(int(name))) is not None and int(fields[1]) == parent:
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has ended (only not yet been reaped)


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else 0.0


def dead_pid() -> int:
    """The pid of a process that has ended (a temporary's owner that is gone)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def heavy_pool(tmp_path_factory) -> str:
    """Four shards whose negCLIPLoss takes many seconds each on one thread (K = 10 rounds of 2 batches)."""
    folder = str(tmp_path_factory.mktemp("heavy") / "pool")
    make_pool(folder, [8000] * 4, seed=3)
    return folder


def _sigint_as_at_a_terminal() -> None:
    """In the child before exec: SIGINT back to its default. A shell without job control starts background
    jobs with SIGINT ignored, the child inherits that, and Python then installs no KeyboardInterrupt handler:
    the Ctrl-C tests would test the test runner's shell instead of the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "datacomp_plugins", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_as_at_a_terminal)


def _workers_computing(proc: subprocess.Popen, count: int, cpu: float, timeout: float = 60) -> list[int]:
    """Wait until ``count`` spawned workers have each used ``cpu`` seconds (imports done, scoring a shard)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        workers = [pid for pid in children(proc.pid) if b"spawn_main" in _cmdline(pid)]
        if len(workers) >= count and all(cpu_seconds(pid) >= cpu for pid in workers):
            return workers
        time.sleep(0.1)
    raise AssertionError("the workers never started computing")


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["TERM", "INT", "KILL"])
def test_workers_end_with_their_parent(heavy_pool, tmp_path, signum):
    out = tmp_path / "out.npy"
    proc = _start(["filter", "--name", "negcliploss", "--metadata_dir", heavy_pool, "--save_path", str(out),
                   "--fraction", "0.3", "--num_workers", "2", "--negcliploss_batch_size", "4000",
                   "--num_batches", "10", "--cache_dir", str(tmp_path / "cache"), "--no_progress"])
    everyone: set[int] = set()
    try:
        workers = _workers_computing(proc, 2, cpu=2.5)
        everyone = set(children(proc.pid))  # workers and any helper (resource tracker)
        os.kill(proc.pid, signum)
        _, stderr = proc.communicate(timeout=15)
        deadline = time.time() + 5
        while time.time() < deadline and any(alive(pid) for pid in everyone):
            time.sleep(0.05)
        survivors = [pid for pid in everyone if alive(pid)]
        assert not survivors, f"processes still running 5 s after the parent's {signum.name}: {survivors}"
        assert set(workers) <= everyone
        if signum != signal.SIGKILL:  # a handled signal: the interrupted message, no traceback
            assert proc.returncode == 128 + signum, stderr
            assert "Traceback" not in stderr
            assert "interrupted" in stderr
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.npy.")]
    finally:  # whatever happened, leave nothing running
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in everyone | set(children(proc.pid)):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def _spills(cache: str) -> list[str]:
    """Files in the cache's spill folder(s), wherever the cache layout puts them."""
    return sorted(name for root, _, files in os.walk(cache) if os.path.basename(root) == "_spill" for name in files)


def _normsim_d_args(pool: str, tmp_path, cache: str) -> list[str]:
    return ["filter", "--name", "normsim_d", "--quality_score", "clip_score", "--metadata_dir", pool,
            "--save_path", str(tmp_path / "d.npy"), "--fraction", "0.95", "--normsim_fraction", "0.05",
            "--normsim_d_iters", "100000", "--cache_dir", cache, "--no_progress"]


def _spill_in_use(proc: subprocess.Popen, cache: str, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        names = _spills(cache)
        if names:
            time.sleep(0.5)  # into the iterations
            return names[0]
        time.sleep(0.05)
    raise AssertionError("normsim_d never spilled")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_normsim_d_spill_removed_on_signal(heavy_pool, tmp_path, signum):
    cache = str(tmp_path / "cache")
    proc = _start(_normsim_d_args(heavy_pool, tmp_path, cache))
    try:
        _spill_in_use(proc, cache)
        os.kill(proc.pid, signum)
        _, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    assert _spills(cache) == []
    assert not (tmp_path / "d.npy").exists()


def test_spill_of_a_killed_run_is_swept_by_the_next_run(heavy_pool, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    proc = _start(_normsim_d_args(heavy_pool, tmp_path, cache))
    try:
        left = _spill_in_use(proc, cache)
    finally:
        proc.kill()
        proc.wait()
    assert _spills(cache) == [left], "SIGKILL runs no cleanup: the spill stays until the next run"
    # a live process's spill (this test's own pid) must survive the sweep
    spill_folder = next(root for root, _, _ in os.walk(cache) if os.path.basename(root) == "_spill")
    live = os.path.join(spill_folder, procs.owned_name("normsim_d-") + "x.f16")
    open(live, "wb").close()
    args = ["filter", "--name", "clip_score", "--metadata_dir", heavy_pool, "--save_path",
            str(tmp_path / "c.npy"), "--fraction", "0.5", "--cache_dir", cache, "--no_progress"]
    assert main(args) == 0
    assert _spills(cache) == [os.path.basename(live)]


def test_stale_partial_outputs_and_recipe_folders_are_swept(heavy_pool, tmp_path, capsys):
    """Temporaries of processes that are gone go at the next run; a live owner's stay untouched."""
    host = procs.owner_tag().split("~")[0]
    gone = dead_pid()
    save = tmp_path / "out.npy"
    stale_output = tmp_path / f".out.npy.{host}~{gone}-abc123.tmp"
    stale_recipe = tmp_path / f".recipe-{host}~{gone}-xyz"
    stale_probe = tmp_path / f".write-probe-{host}~{gone}-q1"
    stale_probe.write_bytes(b"")
    live_output = tmp_path / f".out.npy.{host}~{os.getpid()}-def456.tmp"
    other_host = tmp_path / f".out.npy.elsewhere~{gone}-ghi789.tmp"  # another machine's pid means nothing here
    stale_output.write_bytes(b"half a uid file")
    stale_recipe.mkdir()
    (stale_recipe / "filter.npy").write_bytes(b"partial")
    for path in (live_output, other_host):
        path.write_bytes(b"in progress")
    uids = tmp_path / "extra.npy"
    np.save(uids, np.zeros(1, dtype=np.dtype("u8,u8")))
    recipe = tmp_path / "r.toml"
    recipe.write_text('[filter]\nname = "clip_score"\nfraction = 0.5\n[union]\nfiles = ["{extra}"]\n')
    assert main(["recipe", str(recipe), "--metadata_dir", heavy_pool, "--save_path", str(save),
                 "--set", f"extra={uids}", "--cache_dir", str(tmp_path / "cache"), "--no_progress"]) == 0
    assert save.exists()
    assert not stale_output.exists() and not stale_recipe.exists() and not stale_probe.exists()
    assert live_output.exists() and other_host.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".recipe-") and p != stale_recipe]


class RecordingExecutor(local_engine.ProcessPoolExecutor):
    started: list[int] = []

    def __init__(self, max_workers, *args, **kwargs):
        RecordingExecutor.started.append(max_workers)
        super().__init__(max_workers, *args, **kwargs)


@pytest.mark.slow  # a real run in a subprocess, then a cached one
def test_cached_shards_start_no_workers(tmp_path, monkeypatch, capsys):
    pool = str(tmp_path / "pool")
    make_pool(pool, [300, 200, 250, 100], seed=5)
    monkeypatch.setattr(local_engine, "ProcessPoolExecutor", RecordingExecutor)
    RecordingExecutor.started = []
    cache = str(tmp_path / "cache")
    args = ["filter", "--name", "negcliploss", "--metadata_dir", pool, "--fraction", "0.5",
            "--negcliploss_batch_size", "128", "--num_batches", "2", "--cache_dir", cache, "--no_progress"]
    assert main([*args, "--save_path", str(tmp_path / "first.npy"), "--num_workers", "1"]) == 0
    capsys.readouterr()
    # every shard cached: no worker process at all, however many were asked for
    assert main([*args, "--save_path", str(tmp_path / "cached.npy"), "--num_workers", "8"]) == 0
    assert "(0 scored, 4 from cache)" in capsys.readouterr().out
    assert RecordingExecutor.started == []
    # two shards lost their scores: two workers, not eight
    removed = 0
    for stem in ("00000001", "00000003"):
        folder = os.path.join(cache, "v5", stem)
        for name in os.listdir(folder):
            if name.startswith("negcliploss-") and name.endswith(".npy"):
                os.unlink(os.path.join(folder, name))
                removed += 1
    assert removed == 2
    assert main([*args, "--save_path", str(tmp_path / "again.npy"), "--num_workers", "8"]) == 0
    assert "(2 scored, 2 from cache)" in capsys.readouterr().out
    assert RecordingExecutor.started == [2]
    first = (tmp_path / "first.npy").read_bytes()
    assert (tmp_path / "cached.npy").read_bytes() == first == (tmp_path / "again.npy").read_bytes()


def test_stale_names_judge_only_dead_owners_on_this_host(tmp_path):
    host = procs.owner_tag().split("~")[0]
    gone = dead_pid()
    assert procs.stale(f".x.npy.{host}~{gone}-ab.tmp", ".x.npy.", ".tmp")
    assert not procs.stale(f".x.npy.{host}~{os.getpid()}-ab.tmp", ".x.npy.", ".tmp")
    assert not procs.stale(f".x.npy.{host}~{os.getppid()}-ab.tmp", ".x.npy.", ".tmp")
    assert not procs.stale(f".x.npy.other~{gone}-ab.tmp", ".x.npy.", ".tmp")
    assert not procs.stale(f".y.npy.{host}~{gone}-ab.tmp", ".x.npy.", ".tmp")
    assert not procs.stale(".x.npy.abcdef.tmp", ".x.npy.", ".tmp")  # an unowned name is never judged


def test_cached_shards_go_to_no_ray_cluster(tmp_path, monkeypatch, capsys):
    """With --engine ray, only uncached shards are sent (none: no cluster is started or joined)."""
    from datacomp_plugins.engines import ray as ray_engine

    pool = str(tmp_path / "pool")
    make_pool(pool, [200, 150, 100], seed=7)
    sent: list[list[str]] = []

    def recording_run_ray(job, shards, num_workers, num_gpus, address):
        sent.append([shard.stem for shard in shards])
        yield from local_engine.run_local(job, shards, 1)

    monkeypatch.setattr(ray_engine, "run_ray", recording_run_ray)
    args = ["filter", "--name", "negcliploss", "--metadata_dir", pool, "--fraction", "0.5", "--negcliploss_batch_size",
            "64", "--num_batches", "2", "--cache_dir", str(tmp_path / "cache"), "--no_progress", "--engine", "ray"]
    assert main([*args, "--save_path", str(tmp_path / "a.npy")]) == 0
    assert main([*args, "--save_path", str(tmp_path / "b.npy")]) == 0
    assert sent == [["00000000", "00000001", "00000002"], []]
    assert "(0 scored, 3 from cache)" in capsys.readouterr().out.splitlines()[-2]
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


_SELF_SIGNALLING_IMPORT = """
import signal, sys
sys.path.insert(0, sys.argv[1])
from datacomp_plugins.core import procs
seen = []
signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(("handler", "mid_import" in sys.modules)))
try:
    module = procs.import_held("mid_import") if sys.argv[2] == "import_held" else __import__("mid_import")
    print("finished", module.FINISHED, seen)
except BaseException as exc:
    print("raised", type(exc).__name__, seen)
"""

_MID_IMPORT = """
import os, signal, sys
os.kill(os.getpid(), signal.SIGTERM)  # a stop signal arriving while a module is being imported
sum(range(1000))  # bytecodes after it: where an unheld handler runs
if any(h == "handler" for h, _ in sys.modules["__main__"].seen):
    raise RuntimeError("the handler ran inside the import")
FINISHED = True
"""


@pytest.mark.parametrize("how", ["import_held", "plain"])
def test_a_stop_signal_during_a_held_import_is_handled_after_it(tmp_path, how):
    """import_held keeps a signal pending while the module initialises: the handler runs once, after it."""
    (tmp_path / "mid_import.py").write_text(_MID_IMPORT)
    result = subprocess.run([sys.executable, "-c", _SELF_SIGNALLING_IMPORT, str(tmp_path), how],
                            capture_output=True, text=True, timeout=60, cwd=os.getcwd(),
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    if how == "import_held":
        assert "raised" not in result.stdout
        assert "finished True [('handler', True)]" in result.stdout  # after the module was complete
    else:  # the control: without holding, the handler runs inside the module's initialisation
        assert "raised RuntimeError" in result.stdout
