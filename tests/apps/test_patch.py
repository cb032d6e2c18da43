"""``patch-datacomp`` and the DataComp ``baselines.py`` patch it applies.

The unit tests build a stand-in ``baselines.py`` from the patch's own hunks (their old lines at their line
numbers, filler between), so they need no DataComp. The integration tests need a real checkout of DataComp
4a8df19 in ``DATACOMP_DIR``, and the python running pytest must import DataComp's ``baselines.py`` dependencies
(torch; fasttext, gcld3, nltk and pandas for DataComp's own baselines, whose file comparison is skipped without
them).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

import datacomp_checkout
import pytest

from datacomp_plugins.apps.patch import PATCH_NAME, State, patch_bytes, patch_datacomp
from datacomp_plugins.cli import main
from datacomp_plugins.commands.filter import add_plugin_arguments
from datacomp_plugins.core.errors import PluginError
from datacomp_plugins.filtering import BASELINES

REPO = Path(__file__).resolve().parents[2]
HUNK = re.compile(r"@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")
# DataComp 4a8df19 baselines.py: its --name values and its flags (the plugin's flags must not collide with them)
DATACOMP_NAMES = {"no_filter", "basic_filter", "text_based", "image_based", "image_based_intersect_clip_score",
                  "clip_score", "laion2b"}
DATACOMP_FLAGS = ("--name", "--metadata_dir", "--save_path", "--threshold", "--fraction", "--arch",
                  "--num_workers", "--num_gpus", "--batch_size", "--image_based_scale")
AVAILABLE_TOOLS = [t for t in ("git", "patch") if shutil.which(t)]


def preimage(patch: str) -> str:
    """A baselines.py the patch applies to: each hunk's old lines at its line number, distinct filler between."""
    lines: list[str] = []
    in_hunks = False
    for line in patch.splitlines():
        match = HUNK.match(line)
        if match:
            in_hunks = True
            while len(lines) < int(match.group(1)) - 1:
                lines.append(f"# filler line {len(lines) + 1}")
        elif in_hunks and line.startswith((" ", "-")):
            lines.append(line[1:])
        elif in_hunks and line == "":
            lines.append("")
    return "\n".join(lines) + "\n"


def fake_checkout(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "baselines.py").write_text(preimage(patch_bytes().decode()))
    (root / "resharder.py").write_text("# stand-in\n")
    return root


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_patch_ships_in_the_package_and_patches_dir_is_the_same_file():
    shipped = REPO / "datacomp_plugins" / "data" / PATCH_NAME
    assert (REPO / "patches" / PATCH_NAME).read_bytes() == shipped.read_bytes() == patch_bytes()


def test_patch_edits_only_baselines_py():
    files = re.findall(r"^diff --git a/(\S+) b/", patch_bytes().decode(), flags=re.M)
    assert files == ["baselines.py"]


def test_plugin_flags_do_not_collide_with_datacomp_flags():
    parser = argparse.ArgumentParser()
    for flag in DATACOMP_FLAGS:
        parser.add_argument(flag)
    add_plugin_arguments(parser)  # argparse raises on a second definition of a flag


@pytest.mark.parametrize("tool", AVAILABLE_TOOLS)
def test_apply_then_already_applied(tmp_path, tool):
    root = fake_checkout(tmp_path / "dc")
    before = (root / "baselines.py").read_text()
    outcome = patch_datacomp(root, tool=tool)
    assert outcome.state is State.APPLIED
    after = (root / "baselines.py").read_text()
    assert after != before and "PLUGIN_BASELINES" in after and "add_plugin_arguments(parser)" in after
    assert sorted(p.name for p in root.iterdir()) == ["baselines.py", "resharder.py"]  # no .orig / .rej
    state = snapshot(root)
    assert patch_datacomp(root, tool=tool).state is State.ALREADY_APPLIED
    assert patch_datacomp(root, check=True, tool=tool).state is State.ALREADY_APPLIED
    assert snapshot(root) == state


def test_command_is_idempotent(tmp_path, capsys):
    root = fake_checkout(tmp_path / "dc")
    assert main(["patch-datacomp", str(root)]) == 0
    assert capsys.readouterr().out.startswith("patched ")
    state = snapshot(root)
    assert main(["patch-datacomp", str(root)]) == 0
    assert capsys.readouterr().out.startswith("already applied")
    assert snapshot(root) == state


@pytest.mark.parametrize("tool", AVAILABLE_TOOLS)
def test_check_changes_nothing(tmp_path, tool, capsys):
    root = fake_checkout(tmp_path / "dc")
    state = snapshot(root)
    assert patch_datacomp(root, check=True, tool=tool).state is State.WOULD_APPLY
    assert main(["patch-datacomp", str(root), "--check"]) == 0
    assert capsys.readouterr().out.startswith("would apply")
    assert snapshot(root) == state


@pytest.mark.parametrize("make", ["missing", "empty", "no_resharder", "file"])
def test_not_a_datacomp_checkout_is_refused(tmp_path, make, capsys):
    root = tmp_path / "dc"
    if make == "file":
        root.write_text("x")
    elif make != "missing":
        root.mkdir()
        if make == "no_resharder":
            (root / "baselines.py").write_text(preimage(patch_bytes().decode()))
    state = snapshot(tmp_path)
    assert main(["patch-datacomp", str(root)]) == 2
    assert "DataComp checkout" in capsys.readouterr().err
    assert snapshot(tmp_path) == state


@pytest.mark.parametrize("tool", AVAILABLE_TOOLS)
@pytest.mark.parametrize("check", [False, True])
def test_baselines_the_patch_does_not_fit_is_refused_untouched(tmp_path, tool, check, capsys):
    root = fake_checkout(tmp_path / "dc")
    text = (root / "baselines.py").read_text()
    (root / "baselines.py").write_text(text.replace("import argparse\n", "import argparse  # edited\n"))
    state = snapshot(root)
    with pytest.raises(PluginError, match="the patch does not apply"):
        patch_datacomp(root, check=check, tool=tool)
    assert snapshot(root) == state
    args = ["patch-datacomp", str(root), *(["--check"] if check else [])]
    assert main(args) == 2
    assert "does not apply" in capsys.readouterr().err
    assert snapshot(root) == state


def test_checkout_inside_another_git_repository(tmp_path):
    """Paths in the patch are relative to the checkout, not to an enclosing repository."""
    if not shutil.which("git"):
        pytest.skip("git not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    root = fake_checkout(tmp_path / "vendor" / "datacomp")
    assert patch_datacomp(root, tool="git").state is State.APPLIED
    assert "PLUGIN_BASELINES" in (root / "baselines.py").read_text()
    assert not (tmp_path / "baselines.py").exists()


# ---------------------------------------------------------------- integration: a real DataComp checkout

checkouts = datacomp_checkout.checkouts  # the module fixture: a clean and a patched copy of DATACOMP_DIR
_datacomp_dir = datacomp_checkout.datacomp_dir
_has_datacomp_deps = datacomp_checkout.has_datacomp_deps
baselines_py = datacomp_checkout.baselines_py


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def test_real_checkout_is_patched_once(checkouts, capsys):
    assert main(["patch-datacomp", str(checkouts["patched"]), "--check"]) == 0
    assert capsys.readouterr().out.startswith("already applied")
    assert main(["patch-datacomp", str(checkouts["orig"]), "--check"]) == 0
    assert capsys.readouterr().out.startswith("would apply")


def test_help_lists_our_names_and_flags(checkouts):
    result = baselines_py(checkouts["patched"], "--help")
    assert result.returncode == 0, result.stderr
    for name in set(BASELINES) - DATACOMP_NAMES:
        assert name in result.stdout
    flags = argparse.ArgumentParser(add_help=False)
    add_plugin_arguments(flags)
    for action in flags._actions:
        for option in action.option_strings:
            assert option in result.stdout
    assert "warning" not in result.stderr


def test_negcliploss_matches_our_command_byte_for_byte(checkouts, tmp_path):
    shared = ["--metadata_dir", str(checkouts["pool"]), "--arch", "l14", "--fraction", "0.3", "--num_workers", "1",
              "--num_gpus", "0", "--batch_size", "1024", "--no_progress"]
    ours, theirs = tmp_path / "cli.npy", tmp_path / "baselines.npy"
    result = baselines_py(checkouts["patched"], "--name", "negcliploss", "--save_path", str(theirs),
                          "--cache_dir", str(tmp_path / "cache_a"), *shared)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("negcliploss: kept ")  # the plugin summary line
    assert main(["filter", "--name", "negcliploss", "--save_path", str(ours),
                 "--cache_dir", str(tmp_path / "cache_b"), *shared]) == 0
    assert theirs.read_bytes() == ours.read_bytes()
    # the provenance sidecar is written on this path too, and says it came through baselines.py
    import hashlib
    import json

    sidecar = json.loads((tmp_path / "baselines.npy.json").read_text())
    assert sidecar["operation"] == "filter" and sidecar["command_line"][0].endswith("baselines.py")
    assert sidecar["uid_sha256"] == hashlib.sha256(theirs.read_bytes()).hexdigest()
    assert sidecar["parameters"]["batch_size"] == 1024 and sidecar["stages"][0]["score"] == "negcliploss"


def test_defaults_match_our_command_without_gpus(checkouts, tmp_path):
    """DataComp's defaults (--num_workers = cores, --num_gpus = visible GPUs) give our CLI's file on a CPU box."""
    import torch

    if torch.cuda.device_count():
        pytest.skip("GPUs visible: baselines.py would default to --num_gpus > 0, our command to the CPU")
    ours, theirs = tmp_path / "cli.npy", tmp_path / "baselines.npy"
    result = baselines_py(checkouts["patched"], "--name", "negcliploss", "--metadata_dir", str(checkouts["pool"]),
                          "--save_path", str(theirs), "--arch", "l14", "--fraction", "0.3",
                          "--cache_dir", str(tmp_path / "cache_a"), "--no_progress")
    assert result.returncode == 0, result.stderr
    assert main(["filter", "--name", "negcliploss", "--metadata_dir", str(checkouts["pool"]), "--save_path",
                 str(ours), "--fraction", "0.3", "--cache_dir", str(tmp_path / "cache_b"), "--no_progress"]) == 0
    assert theirs.read_bytes() == ours.read_bytes()


def test_our_names_refuse_bad_flags_with_plugin_messages(checkouts, tmp_path):
    pool = str(checkouts["pool"])
    result = baselines_py(checkouts["patched"], "--name", "negcliploss", "--metadata_dir", pool,
                          "--save_path", str(tmp_path / "missing" / "a.npy"), "--arch", "l14", "--fraction", "0.3")
    assert result.returncode == 2 and last_line(result.stderr).startswith("error: --save_path")
    result = baselines_py(checkouts["patched"], "--name", "negcliploss", "--metadata_dir", pool,
                          "--save_path", str(tmp_path / "a.npy"), "--arch", "l14", "--fraction", "0.3",
                          "--image_based_scale", "small")
    assert result.returncode == 2 and "--image_based_scale" in last_line(result.stderr)
    assert not (tmp_path / "a.npy").exists()


# DataComp names with flags check_args refuses: (arguments, start of DataComp's message)
DATACOMP_REFUSALS = [
    (["--name", "no_filter", "--fraction", "0.3"], "ValueError: --fraction value only used for clip_score"),
    (["--name", "basic_filter", "--arch", "l14"], "ValueError: --arch value only used for clip_score"),
    (["--name", "clip_score", "--arch", "l14"], "ValueError: --fraction or --threshold must be specified"),
    (["--name", "clip_score", "--fraction", "0.3"], "ValueError: specify architecture"),
    (["--name", "clip_score", "--arch", "l14", "--fraction", "0.3", "--threshold", "0.2"],
     "ValueError: specify either --fraction or --threshold"),
    (["--name", "laion2b", "--fraction", "0.3"], "ValueError: laion2b does not support"),
]
# Runs baselines.py as __main__ once per case in one process (torch and DataComp's imports load once) and
# prints one JSON line per case: the exit status and the last line a failing run prints.
REFUSAL_DRIVER = """
import json, runpy, sys
outcomes = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["baselines.py", *argv]
    try:
        runpy.run_path("baselines.py", run_name="__main__")
        outcomes.append([0, ""])
    except SystemExit as exc:
        outcomes.append([exc.code, ""])
    except Exception as exc:
        outcomes.append([1, f"{type(exc).__name__}: {exc}"])
print("OUTCOMES " + json.dumps(outcomes))
"""


def refusals(checkout: Path, common: list[str]) -> list[list]:
    cases = json.dumps([[*args, *common] for args, _ in DATACOMP_REFUSALS])
    result = baselines_py(checkout, cases, prelude=REFUSAL_DRIVER, run=False)
    assert result.returncode == 0, result.stderr
    return json.loads(last_line(result.stdout).removeprefix("OUTCOMES "))


def test_datacomp_names_keep_check_args_messages(checkouts, tmp_path):
    common = ["--metadata_dir", str(checkouts["pool"]), "--save_path", str(tmp_path / "out" / "x.npy")]
    patched = refusals(checkouts["patched"], common)
    for (args, message), (code, said) in zip(DATACOMP_REFUSALS, patched, strict=True):
        assert code == 1 and said.startswith(message), (args, code, said)
    if _has_datacomp_deps():  # unpatched baselines.py imports them before check_args runs
        assert refusals(checkouts["orig"], common) == patched


def test_datacomp_names_refuse_plugin_flags(checkouts, tmp_path):
    result = baselines_py(checkouts["patched"], "--name", "no_filter", "--metadata_dir", str(checkouts["pool"]),
                          "--save_path", str(tmp_path / "x.npy"), "--num_batches", "3")
    assert result.returncode == 2 and "--num_batches" in last_line(result.stderr)


def test_clip_score_is_still_datacomps(checkouts, tmp_path):
    if not _has_datacomp_deps():
        pytest.skip("DataComp's baselines need fasttext, gcld3, nltk and pandas in this python")
    outputs = {}
    for key in ("orig", "patched"):
        outputs[key] = tmp_path / key / "clip.npy"
        result = baselines_py(checkouts[key], "--name", "clip_score", "--metadata_dir", str(checkouts["pool"]),
                              "--save_path", str(outputs[key]), "--arch", "l14", "--fraction", "0.3",
                              "--num_workers", "1")
        assert result.returncode == 0, result.stderr
        assert "running: clip_score" in result.stdout  # DataComp's apply_filter, not ours
    assert outputs["orig"].read_bytes() == outputs["patched"].read_bytes()


BLOCK_IMPORT = """
import importlib.abc, sys
class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {module!r} or name.startswith({module!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Missing())
"""


@pytest.mark.parametrize("missing", ["datacomp_plugins", "datacomp_plugins.core.cache"])
def test_patched_baselines_work_without_the_plugin(checkouts, tmp_path, missing):
    """Not installed: DataComp as before, silently; installed but broken: the same, with a warning."""
    prelude = BLOCK_IMPORT.format(module=missing)
    result = baselines_py(checkouts["patched"], "--help", prelude=prelude)
    assert result.returncode == 0, result.stderr
    assert "negcliploss" not in result.stdout and "--num_batches" not in result.stdout
    if missing == "datacomp_plugins":
        assert result.stderr == ""
    else:
        assert result.stderr.startswith("warning: datacomp_plugins baselines not offered")
    result = baselines_py(checkouts["patched"], "--name", "negcliploss", "--metadata_dir", str(checkouts["pool"]),
                          "--save_path", str(tmp_path / "x.npy"), prelude=prelude)
    assert result.returncode == 2 and "invalid choice: 'negcliploss'" in result.stderr
    result = baselines_py(checkouts["patched"], "--name", "no_filter", "--fraction", "0.3", "--metadata_dir",
                          str(checkouts["pool"]), "--save_path", str(tmp_path / "x.npy"), prelude=prelude)
    assert last_line(result.stderr).startswith("ValueError: --fraction value only used for clip_score")
