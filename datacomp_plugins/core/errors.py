"""One exception type for every problem the user can fix.

The command line turns it into a one-line message and a non-zero exit code, never a traceback; anything
else that escapes is a bug of ours and keeps its traceback.
"""


class PluginError(Exception):
    """Bad input or environment: the message names the file, key or flag and what was expected."""


def from_environment(exc: OSError) -> PluginError | None:
    """An OSError the user's environment caused (disk full, read-only folder, a file in the way) as the one
    message every entry point prints; None for any other OSError, which stays a bug with its traceback."""
    from datacomp_plugins.core.fileio import ENVIRONMENT_ERRNOS

    if exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    return PluginError(f"{exc.filename or 'a file'}: {exc.strerror or exc}; nothing was written there")
