"""Apply the shipped patch that makes DataComp's own ``baselines.py`` run our baselines.

The patch targets one DataComp commit (:data:`DATACOMP_COMMIT`). Whether it applies, is already applied, or does
not fit is asked of ``git apply`` (``--check`` and ``--reverse --check``) or, without git, of GNU ``patch
--dry-run``: both are exact about context and apply a one-file patch whole or not at all, so a checkout is
never left half patched and a second run is a no-op.
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from datacomp_plugins.core.errors import PluginError

DATACOMP_COMMIT = "4a8df19"
PATCH_NAME = "datacomp-baselines.patch"
# Files whose presence says "this is a DataComp checkout" (the patch itself only edits baselines.py).
MARKER_FILES = ("baselines.py", "resharder.py")
TOOLS = ("git", "patch")


class State(enum.Enum):
    """Where a checkout stands relative to the patch."""

    WOULD_APPLY = "would-apply"
    APPLIED = "applied"
    ALREADY_APPLIED = "already-applied"


@dataclass(frozen=True)
class Outcome:
    """What :func:`patch_datacomp` found or did, with the line the command prints."""

    state: State
    root: Path

    def message(self) -> str:
        target = self.root / "baselines.py"
        if self.state is State.APPLIED:
            return (f"patched {target}: `python baselines.py --help` now lists the datacomp-plugins baselines "
                    "(run it with a python that has datacomp_plugins installed)")
        if self.state is State.ALREADY_APPLIED:
            return f"already applied: {target} has the datacomp-plugins patch; nothing changed"
        return f"would apply: the patch fits {target} (--check: nothing changed)"


def patch_bytes() -> bytes:
    """The patch as shipped inside the package (works from a wheel or an editable install)."""
    return resources.files("datacomp_plugins").joinpath("data").joinpath(PATCH_NAME).read_bytes()


def check_checkout(path: str | os.PathLike[str]) -> Path:
    """Refuse anything that is not a DataComp checkout before running any tool on it."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise PluginError(f"{path}: not a folder; expected a DataComp checkout (the folder holding baselines.py)")
    missing = [name for name in MARKER_FILES if not (root / name).is_file()]
    if missing:
        raise PluginError(f"{path}: not a DataComp checkout (missing {', '.join(missing)})")
    return root


def find_tool(tool: str | None = None) -> str:
    """``git`` when available, else GNU ``patch``; ``tool`` forces one (tests use it)."""
    for name in (tool,) if tool else TOOLS:
        if name not in TOOLS:
            raise PluginError(f"unknown patch tool {name!r}; expected one of {list(TOOLS)}")
        if shutil.which(name):
            return name
    raise PluginError(f"patch-datacomp needs {' or '.join((tool,) if tool else TOOLS)} on PATH")


def _command(tool: str, *, reverse: bool = False, dry_run: bool = False) -> list[str]:
    if tool == "git":
        return ["git", "apply", *(["--reverse"] if reverse else []), *(["--check"] if dry_run else []), "-"]
    # --forward: never treat an applied patch as one to reverse; --fuzz=0: context must match exactly
    return ["patch", "-p1", "--batch", "--silent", "--fuzz=0", "--no-backup-if-mismatch",
            "--reverse" if reverse else "--forward", *(["--dry-run"] if dry_run else [])]


def _environment(root: Path) -> dict[str, str]:
    """Keep git from treating an enclosing repository as the root the patch's paths are relative to."""
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
    env["GIT_CEILING_DIRECTORIES"] = str(root.parent)
    return env


def _run(root: Path, command: list[str], patch: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(command, input=patch, cwd=root, env=_environment(root), capture_output=True,
                          check=False)


def _said(result: subprocess.CompletedProcess[bytes]) -> str:
    text = (result.stderr or result.stdout).decode(errors="replace").strip()
    return " ".join(text.split()) or f"exit status {result.returncode}"


def inspect(root: Path, tool: str, patch: bytes) -> State:
    """``WOULD_APPLY`` or ``ALREADY_APPLIED``; a baselines.py the patch does not fit raises."""
    forward = _run(root, _command(tool, dry_run=True), patch)
    if forward.returncode == 0:
        return State.WOULD_APPLY
    if _run(root, _command(tool, reverse=True, dry_run=True), patch).returncode == 0:
        return State.ALREADY_APPLIED
    raise PluginError(f"{root / 'baselines.py'}: the patch does not apply (it is for DataComp {DATACOMP_COMMIT}; "
                      f"this baselines.py differs, or was edited after patching). {tool} said: {_said(forward)}")


def patch_datacomp(path: str | os.PathLike[str], check: bool = False, tool: str | None = None) -> Outcome:
    """Apply the patch to the DataComp checkout at ``path`` (``check``: only report, change nothing)."""
    root = check_checkout(path)
    tool = find_tool(tool)
    patch = patch_bytes()
    state = inspect(root, tool, patch)
    if check or state is State.ALREADY_APPLIED:
        return Outcome(state, root)
    result = _run(root, _command(tool), patch)
    if result.returncode != 0:
        raise PluginError(f"{root / 'baselines.py'}: applying the patch failed; {tool} said: {_said(result)}")
    return Outcome(State.APPLIED, root)
