"""The `mednet` commands: every command's options are one dataclass, parsed by transformers' `HfArgumentParser`
(`mednet_hf.options.CommandParser`).

A command is a `Command`: its name (two words for a sub-action, `"data push"`), a help line, the dataclass of its
options (each option a field with a `help` text) and the function that runs it. Each group of commands has its own
module here (`data`, `training`, `hub`, `inference`); `COMMANDS` lists them, and `mednet_hf.cli` only dispatches.
A new command is one module (or one more `Command` in a group's module) plus one entry in `COMMANDS`.
"""

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    options: type
    run: Callable
    # Options whose values come from elsewhere unless given (pretrain's recipe overrides): parsed with default None.
    overrides: type | None = None


def add_command(subparsers, command: Command, name: str) -> argparse.ArgumentParser:
    types = [command.options] + ([command.overrides] if command.overrides else [])
    parser = subparsers.add_parser(name, help=command.help, description=command.help, dataclass_types=types)
    if command.overrides:  # unset unless given: the recipe supplies the rest (a True there turns off with --no-x)
        parser.set_defaults(**{f.name: None for f in dataclasses.fields(command.overrides)})
    for action in parser._actions:  # `--top-k` before HfArgumentParser's `--top_k` in the help, as typed before
        action.option_strings.sort(key=lambda option: "_" in option)
    parser.set_defaults(_command=command)
    return parser


# The registry: each group module lists its commands (and imports its heavy dependencies only when one runs).
from . import data, hub, inference, training  # noqa: E402  (they import Command from above)

COMMANDS = {command.name: command for group in (data, training, hub, inference) for command in group.COMMANDS}

__all__ = ["COMMANDS", "Command", "add_command"]
