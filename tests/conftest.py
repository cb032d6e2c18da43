"""Shared helpers: small pools in DataComp's layout, built from arrays the test chooses.

The tests mirror the package: tests/core/ guards datacomp_plugins/core/, tests/scores/ the scores, and a test of
a top-level module (pipeline.py, config.py, cli.py) sits in tests/ itself. A file is named after the module it
guards (``test_<module>.py`` or ``test_<module>_<what>.py``), which is how tools/mutate.py finds a module's tests.
Files ending in ``_adversarial.py`` attack their module with hostile input, and carry the ``adversarial`` marker.
Test files need unique basenames across folders (the folders are not packages, so pytest's default import mode
puts each folder on sys.path); helper modules (conftest, imagepool, s3server, browser, negcliploss_brute,
uidvalues, datacomp_checkout) live here in tests/ and are imported by name from any folder.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datacomp_plugins import runtime

# as the command line does before torch is loaded: test modules importing torch and the package's math (thread
# counts, huge pages) then run under the same settings as a real run
runtime.configure()


# Seconds a test that needs the quick mini DataComp world may take: the first one to ask builds it (two
# teachers trained, minutes), and ``quick_runs`` then trains four students; on a loaded 2-core machine the
# whole of tests/apps/minicomp/test_run.py took 20 minutes. Every other test has pyproject.toml's ``timeout``.
QUICK_WORLD_TIMEOUT = 2400
# A test that needs one of these fixtures is ``slow`` (``make test-fast`` leaves it out), whatever its file.
SLOW_FIXTURES = {
    "quick_world": "builds the quick mini DataComp world: renders images, trains two teachers",
    "checkouts": "copies DataComp's checkout and runs its baselines.py in subprocesses",
    "ray_cluster": "starts a local Ray instance",
    "heavy_pool": "kills real filter runs in subprocesses while their workers compute",
    "s3": "an S3 server (moto) on loopback",
}
# Tests of files whose content is pinned (tests/test_pinned_uids.py) cannot carry a marker: named here.
SLOW_TESTS = {
    "tests/test_pinned_uids.py::test_ray_engine_is_pinned": "starts a local Ray instance",
    "tests/test_pinned_uids.py::test_filter_variant_is_pinned[negcliploss-2workers]": "starts worker processes",
}


def pytest_collection_modifyitems(config, items) -> None:
    """Every test in a ``*_adversarial.py`` file is marked ``adversarial`` (``pytest -m adversarial``); every
    test that needs a fixture of ``SLOW_FIXTURES`` (directly or through another) is ``slow``, and one that needs
    the quick world gets ``QUICK_WORLD_TIMEOUT`` unless it sets its own."""
    for item in items:
        if item.path.name.endswith("_adversarial.py"):
            item.add_marker(pytest.mark.adversarial)
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SLOW_FIXTURES.keys() or item.nodeid in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if "quick_world" in fixtures and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(QUICK_WORLD_TIMEOUT))


def random_hex_uids(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(n)]


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_shard(folder: str, stem: str, uids: Sequence[str], arrays: dict[str, np.ndarray],
                compressed: bool = False, extra_columns: dict | None = None, fs=None) -> None:
    """One <stem>.parquet + <stem>.npz; ``fs`` an fsspec filesystem (default: local)."""
    n = len(uids)
    l14 = arrays.get("l14_img")
    columns = {
        "uid": list(uids),
        "url": [f"https://example.com/{i}.jpg" for i in range(n)],
        "text": ["a caption"] * n,
        "clip_l14_similarity_score": (
            (arrays["l14_img"].astype(np.float32) * arrays["l14_txt"].astype(np.float32)).sum(1)
            if l14 is not None and "l14_txt" in arrays and len(l14) == n else np.zeros(n)),
        "clip_b32_similarity_score": np.zeros(n),
        **(extra_columns or {}),
    }
    table = pa.table(columns)
    npz = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(npz, **arrays)
    parquet = io.BytesIO()
    pq.write_table(table, parquet)
    if fs is None:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{stem}.parquet"), "wb") as handle:
            handle.write(parquet.getvalue())
        with open(os.path.join(folder, f"{stem}.npz"), "wb") as handle:
            handle.write(npz.getvalue())
    else:
        fs.makedirs(folder, exist_ok=True)
        fs.pipe(f"{folder}/{stem}.parquet", parquet.getvalue())
        fs.pipe(f"{folder}/{stem}.npz", npz.getvalue())


def make_pool(folder: str, shard_sizes: Sequence[int], seed: int = 0, dim: int = 768,
              dtype=np.float16, compressed: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Random unit l14 embeddings with a planted pair correlation; returns what was written, per stem."""
    rng = np.random.default_rng(seed)
    written = {}
    all_uids = random_hex_uids(sum(shard_sizes), seed)
    start = 0
    for index, n in enumerate(shard_sizes):
        img = unit_rows(rng, n, dim)
        txt = img * rng.uniform(0.2, 0.9, (n, 1)) + unit_rows(rng, n, dim)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        arrays = {"l14_img": img.astype(dtype), "l14_txt": txt.astype(dtype)}
        uids = all_uids[start : start + n]
        start += n
        stem = f"{index:08d}"
        write_shard(folder, stem, uids, arrays, compressed=compressed)
        written[stem] = {"uids": uids, **arrays}
    return written


def two_stage_pool(tmp_path) -> tuple[list, np.ndarray]:
    """NormSim tests' pool: two shards; quality = parquet CLIP score (known), images random, plus a target file."""
    rng = np.random.default_rng(3)
    shards = []
    for index, n in enumerate((30, 21)):
        hexes = random_hex_uids(n, seed=index)
        img, txt = unit_rows(rng, n, 768), unit_rows(rng, n, 768)
        write_shard(str(tmp_path / "pool"), f"s{index}", hexes, {"l14_img": img, "l14_txt": txt})
        shards.append((hexes, img, (img.astype(np.float32) * txt.astype(np.float32)).sum(1)))
    target = unit_rows(rng, 12, 768) * 3.0  # not normalised on disk: loading must normalise
    np.save(tmp_path / "target.npy", target)
    return shards, target / np.linalg.norm(target, axis=1, keepdims=True)


def stored_scores_pool(folder: str | os.PathLike, scores_by_shard: list[list[float]],
                       seed: int = 0) -> tuple[list[str], np.ndarray]:
    """A pool whose stored clip_l14_similarity_score column holds the given values (float32, as DataComp's)."""
    rng = np.random.default_rng(seed)
    total = sum(len(s) for s in scores_by_shard)
    hexes = random_hex_uids(total, seed)
    start = 0
    for index, values in enumerate(scores_by_shard):
        n = len(values)
        img = unit_rows(rng, n, 768)
        arrays = {"l14_img": img.astype(np.float16), "l14_txt": img.astype(np.float16)}
        write_shard(str(folder), f"{index:08d}", hexes[start:start + n], arrays,
                    extra_columns={"clip_l14_similarity_score": np.asarray(values, dtype=np.float32)})
        start += n
    return hexes, np.concatenate([np.asarray(s, dtype=np.float32) for s in scores_by_shard])


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> str:
    """Every test gets its own score cache (never the user's)."""
    path = str(tmp_path / "cache")
    monkeypatch.setenv("DATACOMP_PLUGINS_CACHE", path)
    return path


def fake_assets(tmp_path, monkeypatch, corrupt: frozenset[str] = frozenset()):
    """DataComp's five in1k files served from a local folder, with their sha256 in the table."""
    import torch

    from datacomp_plugins.scores import targets

    def features(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((3, 768)).astype(np.float32)

    served = tmp_path / "served"
    served.mkdir(exist_ok=True)
    table = {}
    for i, name in enumerate(sorted(targets.IN1K_SHA256)):
        torch.save({"image_features": torch.tensor(features(i))}, served / f"{name}.pt")
        table[name] = hashlib.sha256((served / f"{name}.pt").read_bytes()).hexdigest()
        if name in corrupt:
            (served / f"{name}.pt").write_bytes(b"not the file")
    monkeypatch.setattr(targets, "IN1K_SHA256", table)
    monkeypatch.setattr(targets, "IN1K_BASE_URL", served.as_uri() + "/")
    monkeypatch.setenv(targets.DATACOMP_CACHE_ENV, str(tmp_path / "datacomp-cache"))
    return served


def expect_exit_2(capsys, argv: Sequence[str], output, *fragments: str) -> str:
    """Run the command line in-process: exit status 2, every fragment in the one-line message, no
    traceback, and nothing at ``output`` (None: no output to check). Returns stderr."""
    from datacomp_plugins.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    if output is not None:
        assert not os.path.exists(output), f"{output} was left behind"
    return err


@pytest.fixture(scope="session")
def quick_world(tmp_path_factory):
    """``minicomp build OUT --quick --seed 0``, once per test session; returns OUT (treat it as read-only)."""
    from datacomp_plugins.cli import main

    out = tmp_path_factory.mktemp("minicomp") / "quick"
    assert main(["minicomp", "build", str(out), "--quick", "--seed", "0", "--no_progress"]) == 0
    return out
