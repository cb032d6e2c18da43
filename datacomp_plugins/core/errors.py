"""One exception type for every problem the user can fix.

The command line turns it into a one-line message and a non-zero exit code, never a traceback; anything
else that escapes is a bug of ours and keeps its traceback.
"""


class PluginError(Exception):
    """Bad input or environment: the message names the file, key or flag and what was expected."""
