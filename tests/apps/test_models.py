"""apps/models.py: unknown models and tags, bad model configs and unreachable weights are one clear line
before anything is built or downloaded.
"""

from __future__ import annotations

import pytest
from clierrors import fails as _fails

pytest.importorskip("open_clip")
Image = pytest.importorskip("PIL.Image")

from datacomp_plugins.cli import main  # noqa: E402


def test_unknown_model_lists_some(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    out = tmp_path / "out.npy"
    code = main(["embed", "--model", "ViT-B-33", "--images", str(tmp_path), "--out", str(out), "--no_progress"])
    _fails(capsys, out, code, "--model ViT-B-33", "ViT-B-32")


@pytest.mark.parametrize("pretrained, needle", [("no-such-tag", "openai"), ("/nope/w.pt", "does not exist")])
def test_bad_pretrained(tmp_path, capsys, pretrained, needle):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    out = tmp_path / "out.npy"
    code = main(["embed", "--model", "ViT-B-32", "--pretrained", pretrained, "--images", str(tmp_path),
                 "--out", str(out), "--no_progress"])
    _fails(capsys, out, code, f"--pretrained {pretrained}", needle)


@pytest.mark.parametrize("content, needle", [("{not json", "not readable JSON"),
                                              ('{"embed_dim": 4}', "vision_cfg")])
def test_bad_model_config(tmp_path, capsys, content, needle):
    config = tmp_path / "broken-clip.json"
    config.write_text(content)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    out = tmp_path / "out.npy"
    code = main(["embed", "--model", "broken-clip", "--model_config", str(config), "--images", str(tmp_path),
                 "--out", str(out), "--no_progress"])
    _fails(capsys, out, code, "--model_config", needle)


def test_uncached_weights_without_network_fail_before_any_download(tmp_path, capsys, monkeypatch):
    """A pretrained tag whose weights are not cached, on a machine that cannot reach the hub: one clear line,
    and no download is attempted (open_clip's download retries took minutes)."""
    from open_clip import pretrained as pretrained_module

    from datacomp_plugins.apps import models

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(pretrained_module, "hf_hub_download", no_download)
    monkeypatch.setattr(pretrained_module, "download_pretrained_from_url", no_download)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(models, "hub_reachable", lambda url, timeout=3.0: False)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    out = tmp_path / "out.npy"
    code = main(["embed", "--model", "ViT-B-32", "--pretrained", "openai", "--images", str(tmp_path),
                 "--out", str(out), "--no_progress"])
    _fails(capsys, out, code, "--pretrained openai", "not cached on this machine", "cannot be reached")


def test_the_hub_probe_fails_fast_on_an_unreachable_address():
    from datacomp_plugins.apps.models import hub_reachable

    assert hub_reachable("https://127.0.0.1:9", timeout=2.0) is False  # nothing listens on the discard port
