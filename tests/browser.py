"""Headless Chromium as a subprocess: a page's DOM after its scripts ran, its console messages, a screenshot;
and the counts an inspect page shows, read from its HTML or DOM."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Without the background-networking switches Chromium tries to reach Google's services at start; on a
# machine without network those attempts are refused and only slow it down.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio")


def find_chromium() -> str | None:
    """``$CHROMIUM`` if set, else the first Chromium or Chrome on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


def _run(binary: str, extra: list[str], url: str, timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *extra, url], capture_output=True,
                              text=True, timeout=timeout, check=False)


def dump_dom(binary: str, page: Path) -> tuple[str, list[str]]:
    """The DOM after load (scripts run, virtual time let pass) and the page's console messages."""
    done = _run(binary, ["--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0", "--dump-dom"],
                page.resolve().as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console


def self_check(dom: str) -> dict:
    """What the page's own script wrote into ``<pre id="selfcheck">`` after loading."""
    match = re.search(r'<pre id="selfcheck">(.*?)</pre>', dom, re.S)
    assert match and match.group(1).strip(), "the page's self-check did not run"
    return json.loads(html.unescape(match.group(1)))


def screenshot(binary: str, page: Path, out: Path, size: str = "1200,1600") -> Path:
    done = _run(binary, [f"--window-size={size}", "--hide-scrollbars", f"--screenshot={out}"],
                page.resolve().as_uri())
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    return out


def page_counts(page: str) -> dict[str, int]:
    """The inspect page's counts by uid file (or component), as the page's HTML or rendered DOM shows them."""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r'<span class="count" data-[a-z]+="([^"]+)">(\d+)</span>',
                                                              page)}
