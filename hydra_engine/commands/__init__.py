"""Subcommands beyond ``run``, ``status`` and ``version``: each module's ``register(sub)`` adds its parser.

A command that reads the configuration passes ``parents=[config_option()]`` to ``add_parser``, so that
``--config FILE`` is accepted after the command as well as before it, and is listed in its ``--help``.
"""
from __future__ import annotations

import argparse

CONFIG_HELP = "path to a hydra.toml (default: the shipped one)"


def config_option() -> argparse.ArgumentParser:
    """Parent parser holding ``--config`` for a subcommand. Its default is SUPPRESS: left out after the
    command, it must not overwrite a ``--config`` given before the command with None."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE", help=CONFIG_HELP)
    return parent
