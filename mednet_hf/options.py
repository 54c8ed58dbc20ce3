"""Options as dataclasses, parsed by transformers' `HfArgumentParser` and written back as a command line.

`CommandParser` is `HfArgumentParser` with the two kinds of option it does not make: positional arguments (field
metadata `positional: True`) and repeatable `KEY=VALUE` options (`dict` fields). `command_line` writes the command
that reproduces a dataclass's values in the form the parser reads back (the benchmark records one per run).
"""

import argparse
import copy
import dataclasses
import json
import shlex
import types
import typing

from transformers import HfArgumentParser

# Field metadata that is ours, not argparse's.
OWN_KEYS = ("positional",)


def key_value(text: str) -> tuple[str, object]:
    """`KEY=VALUE` → (key, value), the value read as JSON where it is (numbers, true/false, null), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def json_list(text: str) -> list:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON list, got {text!r} ({e})") from e
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a JSON list, got {text!r}")
    return value


def _is_dict(field) -> bool:
    kinds = [field.type, *typing.get_args(field.type)]
    return any(kind is dict or typing.get_origin(kind) is dict for kind in kinds)


def flag(field) -> str:
    """The option a field is written as: its first alias, else `--field-name`."""
    aliases = field.metadata.get("aliases") or []
    return ([aliases] if isinstance(aliases, str) else aliases or [None])[0] or "--" + field.name.replace("_", "-")


class CommandParser(HfArgumentParser):
    """`HfArgumentParser`, plus positional fields and repeatable `KEY=VALUE` (dict) fields; fields without a `help`
    text are not options."""

    def _get_option_tuples(self, option_string):
        # Every option has a dashed and an underscored spelling; an abbreviation that matches both spellings of one
        # option (`--top` for `--top-k` and `--top_k`) means that option, as it did with one spelling.
        tuples, seen = [], set()
        for candidate in super()._get_option_tuples(option_string):
            if id(candidate[0]) not in seen:
                seen.add(id(candidate[0]))
                tuples.append(candidate)
        return tuples

    @staticmethod
    def _parse_dataclass_field(parser, field):
        metadata = dict(field.metadata)
        if "help" not in metadata:
            return
        if metadata.get("positional"):
            kwargs = {k: v for k, v in metadata.items() if k not in OWN_KEYS and k != "aliases"}
            parser.add_argument(field.name, **kwargs)
            return
        if _is_dict(field):
            parser.add_argument(flag(field), f"--{field.name}", dest=field.name, type=key_value, action="append",
                                default=None, metavar="KEY=VALUE", help=metadata["help"])
            return
        if field.type is bool:
            # `--flag` / `--no-flag` taking no value, as argparse's store_true did: HfArgumentParser's optional
            # value would take the positional argument after the flag (`--strict a.png`) as the flag's value.
            names = list(dict.fromkeys([flag(field), f"--{field.name}"]))
            parser.add_argument(*names, dest=field.name, action="store_true", default=field.default, help=metadata["help"])
            # `--no-x` (and HfArgumentParser's `--no_x`) turn it off: shown where it is on by default. Not argparse's
            # BooleanOptionalAction, which reads an option named `--no-checks` itself as the negation.
            negations = [n for n in dict.fromkeys([*(f"--no-{n[2:]}" for n in names), f"--no_{field.name}"])
                         if n not in parser._option_string_actions]
            if negations:
                parser.add_argument(*negations, dest=field.name, action="store_false",
                                    help=f"turn off {names[0]}" if field.default is True else argparse.SUPPRESS)
            return
        if field.type is list:  # a list of lists (a schedule): JSON
            parser.add_argument(flag(field), f"--{field.name}", dest=field.name, type=json_list, default=None,
                                metavar="JSON", help=metadata["help"])
            return
        HfArgumentParser._parse_dataclass_field(parser, _without(field, OWN_KEYS))


def _without(field, keys) -> dataclasses.Field:
    """A copy of `field` whose metadata lacks `keys` (argparse takes the rest as keyword arguments)."""
    clone = copy.copy(field)
    clone.metadata = types.MappingProxyType({k: v for k, v in field.metadata.items() if k not in keys})
    return clone


def options_from(namespace: argparse.Namespace, cls: type, overrides: bool = False):
    """The dataclass instance (or, for `overrides`, the dict of the fields given) a parsed namespace holds."""
    values = {}
    for field in dataclasses.fields(cls):
        if not hasattr(namespace, field.name):
            continue
        value = getattr(namespace, field.name)
        if _is_dict(field) and not overrides:  # repeated KEY=VALUE pairs, or none given: the field's default
            value = dict(value) if value else field.default_factory() if field.default_factory is not dataclasses.MISSING else {}
        values[field.name] = value
    if overrides:
        return {k: v for k, v in values.items() if v is not None}
    return cls(**values)


def portable_path(value: str) -> str:
    """An absolute path as a record may hold it: under `MEDNET_DATA_DIR` or `HF_HOME` as `$MEDNET_DATA_DIR/...` or
    `$HF_HOME/...`, under the working directory relative to it; anything else as it is."""
    import os
    from pathlib import Path

    if not os.path.isabs(value):
        return value
    path = Path(value).resolve()
    from huggingface_hub import constants

    roots = [("$MEDNET_DATA_DIR", os.environ.get("MEDNET_DATA_DIR", "../shared/data")), ("$HF_HOME", constants.HF_HOME)]
    for name, root in roots:
        try:
            return f"{name}/{path.relative_to(Path(root).resolve()).as_posix()}"
        except ValueError:
            pass
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return value


def resolve_portable_path(value: str, base=None) -> str:
    """`portable_path`'s inverse on this machine: `$MEDNET_DATA_DIR/...` and `$HF_HOME/...` under their roots here
    (set or not in the environment), a relative path under `base` (default: the working directory)."""
    import os
    from pathlib import Path

    from huggingface_hub import constants

    roots = {"$MEDNET_DATA_DIR": os.environ.get("MEDNET_DATA_DIR", "../shared/data"), "$HF_HOME": constants.HF_HOME}
    for name, root in roots.items():
        if value.startswith(name + "/"):
            return str(Path(root).resolve() / value[len(name) + 1:])
    return value if os.path.isabs(value) else str(Path(base or Path.cwd()) / value)


def _quote(token: str) -> str:
    """shlex quoting, except that a leading `$VARIABLE/` stays expandable."""
    if token.startswith("$") and "/" in token:
        variable, rest = token.split("/", 1)
        if variable[1:].replace("_", "").isalnum():
            return f'"{variable}"/{shlex.quote(rest)}'
    return shlex.quote(token)


def command_line(name: str, options, positional_last: bool = False) -> str:
    """`mednet <name> ...` with every option of `options` (a dataclass instance) that differs from its default, in
    the form the parser reads back: the reproducing command of a run. Absolute paths are written portably
    (`portable_path`), so the command reruns on another machine with its own data folder and cache."""
    parts = ["mednet", *name.split()]
    positional = []
    for field in dataclasses.fields(options):
        if "help" not in field.metadata:
            continue
        value = getattr(options, field.name)
        if field.metadata.get("positional"):
            positional += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
            continue
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        if value == default and default is not dataclasses.MISSING:
            continue
        if value is None:
            continue
        option = flag(field)
        if isinstance(value, bool):
            parts.append(option if value else "--no-" + option.removeprefix("--"))
        elif isinstance(value, dict):
            for key, item in value.items():
                parts += [option, f"{key}={item if isinstance(item, str) else json.dumps(item)}"]
        elif isinstance(value, (list, tuple)):
            parts += [option, *map(str, value)]
        else:
            parts += [option, portable_path(value) if isinstance(value, str) else str(value)]
    ordered = parts[:2] + positional + parts[2:] if not positional_last else parts + positional
    return " ".join(_quote(token) for token in ordered)



__all__ = ["CommandParser", "command_line", "flag", "json_list", "key_value", "options_from"]
