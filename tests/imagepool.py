"""A small pool with real images: metadata in DataComp's layout, tars in img2dataset's, labels as truth.

Each sample gets a Pillow-drawn thumbnail (a coloured background and a shape), a caption, and a component
label; some samples are "failed downloads" with no tar members, as img2dataset leaves them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import random_hex_uids, unit_rows, write_shard

COMPONENTS = ("clean", "generic", "mismatched")
CAPTIONS = {"clean": "a red circle on a blue field", "generic": "image", "mismatched": "a bowl of soup"}


@dataclass
class ImagePool:
    root: str
    metadata: str
    shards: str
    truth: str
    uids: list[str]  # pool row order
    components: list[str]
    captions: list[str]
    missing: set[str]  # uids with no image in the tars


def _jpeg(rng: np.random.Generator, size: tuple[int, int] = (64, 48)) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(4, 24, 2))
    draw.ellipse((x, y, x + 20, y + 16), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    archive.addfile(info, io.BytesIO(data))


def make_image_pool(root: str, shard_sizes=(40, 33), seed: int = 0, missing_every: int = 9) -> ImagePool:
    """Metadata (``root/metadata``), img2dataset tars (``root/shards``) and truth (``root/truth``)."""
    rng = np.random.default_rng(seed)
    metadata, shards, truth = (os.path.join(root, n) for n in ("metadata", "shards", "truth"))
    for folder in (metadata, shards, truth):
        os.makedirs(folder, exist_ok=True)
    all_uids = random_hex_uids(sum(shard_sizes), seed + 1)
    pool = ImagePool(root, metadata, shards, truth, [], [], [], set())
    start = 0
    for index, n in enumerate(shard_sizes):
        uids = all_uids[start : start + n]
        start += n
        img = unit_rows(rng, n, 768)
        txt = img * rng.uniform(0.02, 0.3, (n, 1)) + unit_rows(rng, n, 768)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        components = [COMPONENTS[i] for i in rng.integers(0, len(COMPONENTS), n)]
        captions = [f"{CAPTIONS[c]} #{start - n + j}" for j, c in enumerate(components)]
        stem = f"{index:08d}"
        write_shard(metadata, stem, uids, {"l14_img": img.astype(np.float16), "l14_txt": txt.astype(np.float16)},
                    extra_columns={"text": captions})
        pq.write_table(pa.table({"uid": uids, "component": components}), os.path.join(truth, f"{stem}.parquet"))
        successes = 0
        with tarfile.open(os.path.join(shards, f"{stem}.tar"), "w", format=tarfile.USTAR_FORMAT) as archive:
            for j, (uid, caption) in enumerate(zip(uids, captions, strict=True)):
                if (start - n + j) % missing_every == missing_every - 1:
                    pool.missing.add(uid)  # a failed download: img2dataset writes no members for it
                    continue
                key = f"{index:04d}{j:04d}"
                _add(archive, f"{key}.jpg", _jpeg(rng))
                _add(archive, f"{key}.txt", caption.encode())
                _add(archive, f"{key}.json", json.dumps({"uid": uid, "caption": caption, "key": key,
                                                         "status": "success"}).encode())
                successes += 1
        with open(os.path.join(shards, f"{stem}_stats.json"), "w") as handle:
            json.dump({"count": n, "successes": successes, "failed_to_download": n - successes}, handle)
        pool.uids += uids
        pool.components += components
        pool.captions += captions
    return pool


def reshard(datacomp_dir: str, shards: str, subset: str, out: str) -> None:
    """Run DataComp's own resharder.py on the img2dataset tars (its output: keys ``<uid>-<j>``)."""
    shards, subset, out = (os.path.abspath(p) for p in (shards, subset, out))
    os.makedirs(out, exist_ok=True)
    command = [sys.executable, os.path.join(datacomp_dir, "resharder.py"), "-i", shards, "-o", out, "-s", subset,
               "-j", "1", "--shard-size", "25"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=datacomp_dir)
    assert done.returncode == 0, done.stderr[-3000:]
