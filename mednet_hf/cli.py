"""The `mednet` command line: a dispatcher over `mednet_hf.commands.COMMANDS`, where each command's options are one
dataclass (parsed by transformers' `HfArgumentParser`) and its code lives in its group's module."""

import argparse
import sys

# The parent commands of two-word commands (`mednet data push`).
GROUPS = {"data": "prepare a public medical dataset, or push it to the Hub", "hub": "the bundled checkpoints"}


def build_parser() -> argparse.ArgumentParser:
    from .commands import COMMANDS, add_command
    from .options import CommandParser

    parser = argparse.ArgumentParser(prog="mednet", description="MedNet: medical image backbones for transformers")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    groups = {}
    for name, command in COMMANDS.items():
        group, _, action = name.partition(" ")
        if not action:
            add_command(commands, command, name)
            continue
        if group not in groups:
            groups[group] = commands.add_parser(group, help=GROUPS[group], dataclass_types=[]).add_subparsers(
                dest="action", required=True, parser_class=CommandParser)
        add_command(groups[group], command, action)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .options import options_from

    args = build_parser().parse_args(argv)
    command = args._command
    try:
        options = options_from(args, command.options)
        if command.overrides:
            command.run(options, options_from(args, command.overrides, overrides=True))
        else:
            command.run(options)
    except ValueError as e:  # our errors say what is wrong and what to do; no traceback needed
        print(f"mednet {command.name}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .hub import PushError

        if not isinstance(e, PushError):
            raise
        print(f"mednet {command.name}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
