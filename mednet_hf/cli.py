"""The `mednet` command line."""

import argparse
import json
import sys


def _option(text: str):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # numbers, true/false, null
    except json.JSONDecodeError:
        return key, value


def _add_data_commands(commands) -> None:
    from .data import BUILDERS

    data = commands.add_parser("data", help="prepare a public medical dataset, or push it to the Hub")
    actions = data.add_subparsers(dest="action", required=True)
    for action, text in (("prepare", "build the dataset (cached) and print its splits"), ("push", "build it and push it to the Hub as parquet with a dataset card")):
        p = actions.add_parser(action, help=text)
        p.add_argument("name", choices=sorted(BUILDERS))
        p.add_argument("--config", help="MedMNIST subset, e.g. organamnist")
        p.add_argument("--size", type=int, help="MedMNIST size: 28, 64, 128 or 224")
        p.add_argument("--data-dir", help="local files (the image folder, DRIVE, ChestX-ray14; MedMNIST .npz files)")
        p.add_argument("--cache-dir", help="where the prepared arrow files go (default: the datasets cache)")
        p.add_argument("--no-checks", action="store_true", help="accept files whose md5 differs from the official one")
        p.add_argument("--rebuild", action="store_true", help="ignore a cached build")
        p.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                       help="builder option, e.g. slice_stride=2, labels_csv=labels.csv, filename=x.npz, on_error=skip")
        if action == "prepare":
            p.add_argument("--output", help="also save the DatasetDict here (save_to_disk)")
        else:
            p.add_argument("--repo-id", required=True)
            p.add_argument("--private", action="store_true")
            p.add_argument("--revision", help="branch to push to (created if needed)")
            p.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
            p.add_argument("--max-shard-size", default=None, help="parquet shard size, e.g. 500MB")
            p.add_argument("--allow-phi", action="store_true", help="push a dataset built with include_phi=true")


def _run_data(args) -> None:
    from .data import load_medical_dataset

    dataset = load_medical_dataset(
        args.name, args.config, args.data_dir, size=args.size, cache_dir=args.cache_dir,
        verification_mode="no_checks" if args.no_checks else None,
        download_mode="force_redownload" if args.rebuild else None, **dict(args.option),
    )
    for split, part in dataset.items():
        print(f"{split}: {part.num_rows} rows")
    print("columns:", ", ".join(f"{k}={v!r}" for k, v in next(iter(dataset.values())).features.items()))
    if args.action == "prepare":
        if args.output:
            dataset.save_to_disk(args.output)
            print(f"saved to {args.output}")
        return
    from .hub import push_dataset

    config = f"{args.config.split('_')[0]}_{args.size or 28}" if args.name == "medmnist" and args.config else args.config
    commit = push_dataset(
        dataset, args.repo_id, builder=args.name, config=config, private=args.private, token=args.token,
        revision=args.revision, max_shard_size=args.max_shard_size, allow_phi=args.allow_phi,
        checksums_verified=not args.no_checks,
    )
    print(f"pushed {args.repo_id}: {commit}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mednet", description="MedNet: medical image backbones for transformers")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "data":
            _run_data(args)
    except ValueError as e:  # our errors say what is wrong and what to do; no traceback needed
        print(f"mednet {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
