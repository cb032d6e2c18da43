"""``datacomp-plugins embed`` against a tiny random-weight open_clip model built offline.

The test saves the model's weights and passes them with ``--pretrained``, so the command and the test use
identical weights; expected rows come from ``model.encode_image`` on open_clip's own validation transform.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from clierrors import fails as _fails

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from datacomp_plugins.cli import main  # noqa: E402

TINY = "tiny-test-clip"
TINY_CONFIG = str(Path(__file__).resolve().parents[1] / "data" / f"{TINY}.json")

# Relative paths of the generated images; sorted order is the order rows must come out in.
IMAGE_NAMES = ["a.png", "b.jpg", "sub/c.png", "sub/deeper/d.png", "z.jpeg"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """Random-weight tiny model, its checkpoint on disk and its validation transform."""
    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY, pretrained=None)
    model.eval()
    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return {"model": model, "preprocess": preprocess, "ckpt": str(ckpt)}


def _image_bytes(rng: np.random.Generator, name: str, shape: tuple[int, int]) -> bytes:
    pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG" if name.endswith(".png") else "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, bytes]:
    """Encoded images of different sizes and formats, keyed by relative path (in sorted order)."""
    rng = np.random.default_rng(1)
    shapes = [(40, 30), (33, 57), (64, 64), (20, 45), (50, 38)]
    return {name: _image_bytes(rng, name, shape) for name, shape in zip(IMAGE_NAMES, shapes, strict=True)}


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_tar(path: Path, samples: list[tuple[str, bytes]], start: int) -> None:
    """webdataset layout: per sample an image plus a .cls and .txt member under the same key."""
    with tarfile.open(path, "w") as tar:
        for offset, (name, data) in enumerate(samples):
            key = f"{start + offset:06d}"
            _add(tar, f"{key}.{name.rsplit('.', 1)[1]}", data)
            _add(tar, f"{key}.cls", b"3")
            _add(tar, f"{key}.txt", b"a caption")


def _expected(tiny: dict, files: list[bytes]) -> np.ndarray:
    with torch.no_grad():
        batch = torch.stack([tiny["preprocess"](Image.open(io.BytesIO(d)).convert("RGB")) for d in files])
        rows = tiny["model"].encode_image(batch)
        return torch.nn.functional.normalize(rows, dim=-1).numpy()


def _embed(tiny: dict, images: list[str] | str, out: Path, *extra: str) -> int:
    specs = [images] if isinstance(images, str) else images
    return main(["embed", "--model", TINY, "--model_config", TINY_CONFIG, "--pretrained", tiny["ckpt"],
                 "--images", *specs, "--out", str(out), "--device", "cpu", "--num_workers", "0",
                 "--no_progress", *extra])



def test_folder_rows_are_normalised_encode_image_in_path_order(tiny, images, tmp_path, capsys):
    folder = _write_folder(tmp_path / "imgs", images)
    (folder / "notes.txt").write_text("not an image")
    (folder / "._a.png").write_bytes(b"macOS resource fork, hidden")
    out = tmp_path / "targets.npy"
    assert _embed(tiny, str(folder), out, "--batch_size", "2") == 0
    rows = np.load(out)
    assert rows.dtype == np.float32
    assert rows.shape == (len(images), 16)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(rows, _expected(tiny, list(images.values())), atol=1e-5)
    summary = capsys.readouterr().out
    assert "embedded 5 images" in summary and "skipped 0" in summary


def test_tar_shards_give_the_same_rows_as_the_folder(tiny, images, tmp_path):
    folder = _write_folder(tmp_path / "imgs", images)
    items = list(images.items())
    shards = tmp_path / "train"
    shards.mkdir()
    _write_tar(shards / "000.tar", items[:3], 0)
    _write_tar(shards / "001.tar", items[3:], 3)
    from_folder, from_tars = tmp_path / "folder.npy", tmp_path / "tars.npy"
    assert _embed(tiny, str(folder), from_folder) == 0
    assert _embed(tiny, str(shards / "{000..001}.tar"), from_tars) == 0
    np.testing.assert_allclose(np.load(from_tars), np.load(from_folder), atol=1e-6)
    # a list of shards, given in reverse, gives the rows in that order
    reverse = tmp_path / "reverse.npy"
    assert _embed(tiny, [str(shards / "001.tar"), str(shards / "000.tar")], reverse) == 0
    np.testing.assert_allclose(np.load(reverse), np.load(from_folder)[[3, 4, 0, 1, 2]], atol=1e-6)


def test_fsspec_urls(tiny, images, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    root = f"/embed-test-{os.getpid()}"
    for name, data in images.items():
        memory.pipe(f"{root}/imgs/{name}", data)
    shard = tmp_path / "000.tar"
    _write_tar(shard, list(images.items()), 0)
    memory.pipe(f"{root}/shards/000.tar", shard.read_bytes())
    out = tmp_path / "out.npy"
    try:
        assert _embed(tiny, [f"memory://{root}/imgs", f"memory://{root}/shards/{{000..000}}.tar"], out) == 0
    finally:
        memory.rm(root, recursive=True)
    np.testing.assert_allclose(np.load(out), _expected(tiny, list(images.values()) * 2), atol=1e-5)


def test_only_the_first_image_of_a_webdataset_sample_is_used(tiny, images, tmp_path):
    first, second = list(images.values())[:2]
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        _add(tar, "s0.jpg", second)
        _add(tar, "s0.png", first)  # same sample key: ignored
        _add(tar, "s1.png", first)
    out = tmp_path / "out.npy"
    assert _embed(tiny, str(tmp_path / "shard.tar"), out) == 0
    np.testing.assert_allclose(np.load(out), _expected(tiny, [second, first]), atol=1e-5)


def test_workers_do_not_change_the_order(tiny, images, tmp_path):
    # uneven shards: worker 0 finishes shard 000 after worker 1 has delivered shard 001
    items = list(images.items())
    _write_tar(tmp_path / "000.tar", items[:3], 0)
    _write_tar(tmp_path / "001.tar", items[3:], 3)
    folder = _write_folder(tmp_path / "imgs", images)
    specs = [str(tmp_path / "{000..001}.tar"), str(folder)]
    single, multi = tmp_path / "single.npy", tmp_path / "multi.npy"
    assert _embed(tiny, specs, single, "--batch_size", "2") == 0
    assert _embed(tiny, specs, multi, "--batch_size", "2", "--num_workers", "2") == 0
    expected = _expected(tiny, list(images.values()) * 2)
    np.testing.assert_allclose(np.load(single), expected, atol=1e-5)
    np.testing.assert_allclose(np.load(multi), expected, atol=1e-5)


def test_bf16_rows_are_float32_and_close(tiny, images, tmp_path):
    folder = _write_folder(tmp_path / "imgs", images)
    out = tmp_path / "bf16.npy"
    assert _embed(tiny, str(folder), out, "--precision", "bf16") == 0
    rows = np.load(out)
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, _expected(tiny, list(images.values())), atol=0.05)


def test_unreadable_images_are_skipped_and_counted(tiny, images, tmp_path, capsys):
    folder = _write_folder(tmp_path / "imgs", images)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "truncated.jpg").write_bytes(images["b.jpg"][: len(images["b.jpg"]) // 2])
    out = tmp_path / "out.npy"
    assert _embed(tiny, str(folder), out) == 0
    np.testing.assert_allclose(np.load(out), _expected(tiny, list(images.values())), atol=1e-5)
    captured = capsys.readouterr()
    assert "skipped 2" in captured.out
    assert "broken.png" in captured.err and "truncated.jpg" in captured.err



def test_all_images_unreadable(tiny, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"garbage")
    (folder / "y.jpg").write_bytes(b"")
    out = tmp_path / "out.npy"
    _fails(capsys, out, _embed(tiny, str(folder), out), "--images", "all 2 images are unreadable")


@pytest.mark.parametrize("kind", ["empty folder", "no image files", "missing folder", "tar without images"])
def test_no_images_found(tiny, tmp_path, capsys, kind):
    folder = tmp_path / "imgs"
    spec = str(folder)
    if kind != "missing folder":
        folder.mkdir()
    if kind == "no image files":
        (folder / "readme.txt").write_text("hi")
    if kind == "tar without images":
        spec = str(tmp_path / "shard.tar")
        with tarfile.open(spec, "w") as tar:
            _add(tar, "000.txt", b"caption only")
    out = tmp_path / "out.npy"
    needle = "does not exist" if kind == "missing folder" else "no images found"
    _fails(capsys, out, _embed(tiny, spec, out), "--images", needle)


def test_missing_shard_in_brace_pattern(tiny, images, tmp_path, capsys):
    _write_tar(tmp_path / "000.tar", list(images.items()), 0)
    out = tmp_path / "out.npy"
    _fails(capsys, out, _embed(tiny, str(tmp_path / "{000..001}.tar"), out), "--images", "001.tar",
           "does not exist")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_tar(tiny, images, tmp_path, capsys, damage):
    good = tmp_path / "good.tar"
    _write_tar(good, list(images.items()), 0)
    bad = tmp_path / "bad.tar"
    data = good.read_bytes()
    bad.write_bytes(b"not a tar at all" * 100 if damage == "garbage" else data[: len(data) // 2 + 100])
    out = tmp_path / "out.npy"
    _fails(capsys, out, _embed(tiny, [str(good), str(bad)], out), "--images", "bad.tar")


class _RunsCode:
    """Unpickling this creates a file: a weights_only load must refuse it before that happens."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_with_pickled_objects_is_refused(tiny, images, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "evil.pt"
    state = dict(tiny["model"].state_dict())
    torch.save({"state_dict": state, "extra": _RunsCode(str(marker))}, ckpt)
    folder = _write_folder(tmp_path / "imgs", images)
    out = tmp_path / "out.npy"
    code = main(["embed", "--model", TINY, "--model_config", TINY_CONFIG, "--pretrained", str(ckpt),
                 "--images", str(folder), "--out", str(out), "--device", "cpu", "--no_progress"])
    _fails(capsys, out, code, f"--pretrained {ckpt}", "refusing")
    assert not marker.exists()


def test_checkpoint_for_another_architecture(tiny, images, tmp_path, capsys):
    ckpt = tmp_path / "other.pt"
    state = dict(tiny["model"].state_dict())
    state["visual.proj"] = torch.zeros(5, 5)
    torch.save(state, ckpt)
    folder = _write_folder(tmp_path / "imgs", images)
    out = tmp_path / "out.npy"
    code = main(["embed", "--model", TINY, "--model_config", TINY_CONFIG, "--pretrained", str(ckpt),
                 "--images", str(folder), "--out", str(out), "--device", "cpu", "--no_progress"])
    _fails(capsys, out, code, "do not fit --model")


def test_output_folder_missing(tiny, images, tmp_path, capsys):
    folder = _write_folder(tmp_path / "imgs", images)
    out = tmp_path / "missing" / "out.npy"
    code = _embed(tiny, str(folder), out)
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and "does not exist" in err
    assert not out.parent.exists()


def test_output_folder_unwritable(tiny, images, tmp_path, capsys, monkeypatch):
    folder = _write_folder(tmp_path / "imgs", images)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root ignores the mode bits: refuse the probe instead
        import tempfile

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        out = locked / "out.npy"
        _fails(capsys, out, _embed(tiny, str(folder), out), "--out", "cannot write")
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_requested_without_gpu(tiny, images, tmp_path, capsys):
    folder = _write_folder(tmp_path / "imgs", images)
    out = tmp_path / "out.npy"
    code = main(["embed", "--model", TINY, "--model_config", TINY_CONFIG, "--images", str(folder),
                 "--out", str(out), "--device", "cuda", "--no_progress"])
    _fails(capsys, out, code, "--device cuda")


def test_missing_open_clip_names_the_extra(images, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    folder = _write_folder(tmp_path / "imgs", images)
    out = tmp_path / "out.npy"
    code = main(["embed", "--model", TINY, "--images", str(folder), "--out", str(out), "--device", "cpu"])
    _fails(capsys, out, code, "pip install 'datacomp-plugins[embed]'")


def test_modules_import_without_the_embed_extra():
    code = ("import sys, datacomp_plugins.apps.embed, datacomp_plugins.commands.embed\n"
            "heavy = {'torch', 'open_clip', 'PIL', 'webdataset'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu(tiny, images, tmp_path):
    folder = _write_folder(tmp_path / "imgs", images)
    cpu, gpu = tmp_path / "cpu.npy", tmp_path / "gpu.npy"
    assert _embed(tiny, str(folder), cpu) == 0
    assert main(["embed", "--model", TINY, "--model_config", TINY_CONFIG, "--pretrained", tiny["ckpt"],
                 "--images", str(folder), "--out", str(gpu), "--device", "cuda", "--no_progress"]) == 0
    np.testing.assert_allclose(np.load(gpu), np.load(cpu), atol=1e-3)
