"""Subcommands of the command line; each module has ``register(subparsers)``."""

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every command's --help shows each flag's default, so nothing a run assumes is hidden."""


class RawDefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, description and epilog kept as written (the uids policy text)."""
