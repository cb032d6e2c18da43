"""Progress bars by tqdm's own convention: shown on a terminal, silent when output goes to a file or pipe.

DataComp's scripts use tqdm; a log file or a parent process reading a child's output should not fill up with
carriage returns and escape codes. ``disable=None`` is tqdm's switch for exactly that (off when the stream is
not a TTY), so every bar of the project takes its ``disable`` from :func:`disable`.
"""

from __future__ import annotations


def disable(progress: bool = True) -> bool | None:
    """tqdm's ``disable``: True when the user asked for no progress, else None (off on a non-TTY)."""
    return None if progress else True
