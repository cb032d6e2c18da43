"""Process lifetime: workers end with their parent, and a run's temporaries never outlive it.

A killed run must not leave processes computing for nobody, nor files that fill the disk. Three pieces:

- :func:`terminate_as_interrupt`: SIGTERM raises :class:`Interrupted` (a KeyboardInterrupt), so the same
  ``finally``/``with`` cleanup that Ctrl-C runs (worker pools terminated, temporaries deleted) runs on a
  plain ``kill`` too.
- :func:`bind_to_parent`: called first in every worker process. On Linux the kernel sends the worker SIGKILL
  when its parent dies (``PR_SET_PDEATHSIG``), and a watchdog thread polling ``os.getppid()`` covers the
  window before that call and other systems. That also covers a SIGKILL of the parent, which no handler sees.
- :func:`owned_name` / :func:`sweep_stale`: temporaries carry their owner's host and pid in their name, so
  the next run can delete the ones whose owner is gone (a SIGKILL leaves them behind).
- :func:`import_held`: a heavy extension (torch) imported with the stop signals held, so that a Ctrl-C or
  SIGTERM arriving during its initialisation is handled just after it instead of inside it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from types import ModuleType

PDEATHSIG_POLL_SECONDS = 0.5
_PR_SET_PDEATHSIG = 1


class Interrupted(KeyboardInterrupt):
    """A termination signal turned into the KeyboardInterrupt path (exit status 128 + signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


STOP_SIGNALS = tuple(sig for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig)


def import_held(name: str) -> ModuleType:
    """Import ``name`` with SIGINT, SIGTERM and SIGHUP blocked until the import is done.

    A Python signal handler raises between bytecodes, also in the Python code an extension runs while it
    initialises. Inside torch's (pybind11) that exception became ``std::terminate``: a SIGTERM aborted the run
    with no cleanup (a spill left behind), and a Ctrl-C could leave it hung. Blocked, the signal stays pending
    and is delivered when the import returns, where it unwinds like any other. Lazy imports of torch that
    happen after a run has made temporaries go through here.
    """
    if name in sys.modules:
        return sys.modules[name]
    if not hasattr(signal, "pthread_sigmask"):  # not on this system: a plain import
        return importlib.import_module(name)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return importlib.import_module(name)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (and SIGHUP) raise :class:`Interrupted` in the main thread.

    A no-op outside the main thread (Python allows handlers only there) and when already installed, so
    nested uses (the command line, then ``run_filter`` which DataComp's patch calls directly) are fine.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is None:
            continue
        current = signal.getsignal(signum)
        if current is _raise_interrupted or current == signal.SIG_IGN:  # ours already, or nohup'ed
            continue
        previous[signum] = current
        signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _set_pdeathsig() -> bool:
    """Ask the kernel to SIGKILL this process when its parent thread exits (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)  # the parent is gone (we were re-parented): nobody wants this work any more
        time.sleep(PDEATHSIG_POLL_SECONDS)


def bind_to_parent(parent: int) -> None:
    """Make this (worker) process end when ``parent`` ends, however it ends; Ctrl-C is the parent's job.

    SIGINT is ignored: a Ctrl-C reaches the whole process group, and the parent terminates its workers
    itself (a worker interrupted mid-task would only print a traceback).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _set_pdeathsig()
    if os.getppid() != parent:  # died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watchdog", daemon=True).start()


# --- temporaries named by their owner ------------------------------------------------------------------

def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count): the default parallelism."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def owner_tag() -> str:
    """``<host>~<pid>``: who owns a temporary (a cache folder may be shared by several machines)."""
    return f"{_host()}~{os.getpid()}"


def owned_name(prefix: str) -> str:
    """A temporary-name prefix that records this process as the owner, e.g. ``.recipe-<host>~<pid>-``."""
    return f"{prefix}{owner_tag()}-"


_OWNER = re.compile(r"(?P<host>[A-Za-z0-9]+)~(?P<pid>\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def stale(name: str, prefix: str, suffix: str = "") -> bool:
    """True when ``name`` is a temporary made with :func:`owned_name` (``prefix``, ``suffix``) on this host by
    a process that no longer exists. Other hosts' temporaries are never judged: their pids mean nothing here."""
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return False
    owners = list(_OWNER.finditer(name, len(prefix)))
    if not owners or owners[-1].group("host") != _host():
        return False
    pid = int(owners[-1].group("pid"))
    return pid != os.getpid() and not _alive(pid)


def sweep_stale(folder: str, prefixes: tuple[str, ...], suffix: str = "") -> int:
    """Delete the stale temporaries (files or folders) directly in ``folder``; returns how many went."""
    import shutil

    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not any(stale(entry.name, prefix, suffix) for prefix in prefixes):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
        except OSError:
            pass  # another process swept it first, or no permission: not ours to insist on
    return removed
