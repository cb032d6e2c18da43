"""The ``datacomp-plugins`` command line: one subcommand per module, each registering itself.

Every subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``handler=callable(args) -> int``. Heavy libraries are imported inside handlers so ``--help`` stays fast.
A :class:`PluginError` becomes ``error: <message>`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from datacomp_plugins import __version__
from datacomp_plugins.core.errors import PluginError, from_environment

# Modules that provide subcommands, in the order --help lists them.
COMMAND_MODULES = (
    "datacomp_plugins.commands.filter",
    "datacomp_plugins.commands.toy_pool",
    "datacomp_plugins.commands.demo",
    "datacomp_plugins.commands.recipe",
    "datacomp_plugins.commands.report",
    "datacomp_plugins.commands.embed",
    "datacomp_plugins.commands.uids",
    "datacomp_plugins.commands.patch_datacomp",
    "datacomp_plugins.commands.scores",
    "datacomp_plugins.commands.inspect",
    "datacomp_plugins.commands.minicomp",
)


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser; DataComp's patch reuses the filter flags from here.

    ``command``: the subcommand about to run, whose flags are built in full; every other one gets only the
    flags that need no registry, so ``--help`` and ``--version`` import no score or engine plugin. ``"*"``
    (the default) builds every command in full.
    """
    from datacomp_plugins import flags

    parser = argparse.ArgumentParser(
        prog="datacomp-plugins",
        description="negCLIPLoss and NormSim data-filtering baselines for DataComp.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        if command == "*" or command == _command_of(module):
            module.register(subparsers)
        else:
            with flags.static_only():
                module.register(subparsers)
    for sub in subparsers.choices.values():  # every command that reads a pool may read a remote one
        if any("--metadata_dir" in action.option_strings for action in sub._actions):
            sub.add_argument("--storage_options", metavar="JSON", default=None,
                             help="arguments for --metadata_dir's filesystem (s3fs, gcsfs, ...), e.g. "
                                  "'{\"endpoint_url\": \"https://...\", \"profile\": \"p\"}'; "
                                  "credentials otherwise come from the environment or fsspec's config")
    return parser


def _command_of(module) -> str:
    """The subcommand a module registers (learnt once by registering it into a scratch parser)."""
    if module.__name__ not in _COMMAND_NAMES:
        from datacomp_plugins import flags

        scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
        with flags.static_only():
            module.register(scratch)
        _COMMAND_NAMES[module.__name__] = next(iter(scratch.choices))
    return _COMMAND_NAMES[module.__name__]


_COMMAND_NAMES: dict[str, str] = {}


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first word that is no option), if any."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    from datacomp_plugins import runtime
    from datacomp_plugins.core.procs import terminate_as_interrupt

    runtime.configure()  # before any subcommand imports torch

    parser = build_parser(_chosen(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    try:
        with terminate_as_interrupt():  # SIGTERM cleans up like Ctrl-C (workers, temporaries)
            if getattr(args, "storage_options", None) is not None:
                from datacomp_plugins.core.remote import apply_storage_options

                apply_storage_options(args.storage_options, args.metadata_dir or "")
            return int(args.handler(args) or 0)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (``| head``): outputs are complete, only the summary went unread
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's own flush at exit stays silent
        return 141
    except OSError as exc:  # the environment, not our bug: disk full, read-only folder, file in the way
        error = from_environment(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("interrupted: no output was written", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)


if __name__ == "__main__":
    raise SystemExit(main())
