"""A tiny hand-made minicomp world (OUT layout of 'minicomp build') for the run tests' fast checks.

The pool's metadata is the toy pool (planted embeddings, known kinds); its images are flat colours chosen
by the caption's concept, so a student can learn them; one eval task asks for the colour's concept.
"""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230)]


def _jpeg(concept: int, rng: np.random.Generator) -> bytes:
    from PIL import Image

    pixels = np.empty((32, 32, 3), dtype=np.uint8)
    pixels[:] = COLOURS[concept % 8]
    pixels = np.clip(pixels.astype(int) + rng.integers(-20, 20, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def build_handmade_world(out: str, rows: int = 800, seed: int = 0) -> str:
    """Write OUT with metadata/, shards/, evalsets/wds_colours_test/, targets/, truth/, MANIFEST.json."""
    from datacomp_plugins.toy import write_toy_pool

    write_toy_pool(out, shards=2, rows=rows, seed=seed)
    labels = pq.read_table(os.path.join(out, "labels.parquet")).to_pandas()
    os.makedirs(os.path.join(out, "shards"), exist_ok=True)
    os.makedirs(os.path.join(out, "truth"), exist_ok=True)
    rng = np.random.default_rng(seed)
    start = 0
    for stem in sorted(f[:-8] for f in os.listdir(os.path.join(out, "metadata")) if f.endswith(".parquet")):
        table = pq.read_table(os.path.join(out, "metadata", f"{stem}.parquet")).to_pandas()
        n = len(table)
        part = labels.iloc[start:start + n]
        start += n
        assert list(part["uid"]) == list(table["uid"])
        with tarfile.open(os.path.join(out, "shards", f"{stem}.tar"), "w") as tar:
            for i, row in enumerate(table.itertuples()):
                key = f"{stem}{i:04d}"
                _add(tar, f"{key}.jpg", _jpeg(int(part["concept"].iloc[i]), rng))
                _add(tar, f"{key}.txt", row.text.encode())
                _add(tar, f"{key}.json", json.dumps({"uid": row.uid, "url": row.url, "caption": row.text,
                                                     "width": 32, "height": 32}).encode())
        with open(os.path.join(out, "shards", f"{stem}_stats.json"), "w") as handle:
            json.dump({"successes": n, "count": n}, handle)
        pq.write_table(pa.table({"uid": list(part["uid"]), "component": list(part["kind"])}),
                       os.path.join(out, "truth", f"{stem}.parquet"))
    task = os.path.join(out, "evalsets", "wds_colours_test")
    os.makedirs(os.path.join(task, "test"), exist_ok=True)
    with open(os.path.join(task, "classnames.txt"), "w") as handle:
        handle.write("\n".join(f"concept {k}" for k in range(8)) + "\n")
    with open(os.path.join(task, "zeroshot_classification_templates.txt"), "w") as handle:
        handle.write("a photo of {c}\n")
    with open(os.path.join(task, "test", "nshards.txt"), "w") as handle:
        handle.write("1\n")
    with tarfile.open(os.path.join(task, "test", "0.tar"), "w") as tar:
        for i in range(96):
            _add(tar, f"s{i:04d}.jpg", _jpeg(i % 8, rng))
            _add(tar, f"s{i:04d}.cls", str(i % 8).encode())
    manifest = {"targets": [{"file": "targets/target_l14.npy", "arch": "l14", "task": "all"},
                            {"file": "targets/target_b32.npy", "arch": "b32", "task": "all"}]}
    with open(os.path.join(out, "MANIFEST.json"), "w") as handle:
        json.dump(manifest, handle)
    return out
