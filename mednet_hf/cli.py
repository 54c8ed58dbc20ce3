"""The `mednet` command line."""

import argparse
import json
import sys
from pathlib import Path


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

    commit = push_dataset(
        dataset, args.repo_id, builder=args.name, private=args.private, token=args.token,
        revision=args.revision, max_shard_size=args.max_shard_size, allow_phi=args.allow_phi,
        checksums_verified=not args.no_checks,
    )
    print(f"pushed {args.repo_id}: {commit}")


def _add_training_commands(commands) -> None:
    p = commands.add_parser("pretrain", help="pretrain a MedNet backbone from a recipe (use `accelerate launch` for many processes)")
    p.add_argument("--recipe", required=True, help="YAML recipe, e.g. training/configs/gray.yaml")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", nargs="?", const="latest", help="continue from the latest checkpoint, or from this one")
    for key, kind in (("steps", int), ("batch-size", int), ("image-size", int), ("lr", float), ("checkpoint-every", int),
                      ("backbone", str), ("mixed-precision", str), ("init", str), ("seed", int)):
        p.add_argument(f"--{key}", type=kind, help="override the recipe's value")

    f = commands.add_parser("finetune", help="fine-tune a MedNet checkpoint with the transformers Trainer")
    f.add_argument("--model", required=True, help="a saved MedNet folder (e.g. a pretrain run's final/) or a Hub id")
    f.add_argument("--dataset", required=True, help="medmnist:<subset>, imagefolder, chestxray14")
    f.add_argument("--data-dir")
    f.add_argument("--size", type=int, help="MedMNIST image size")
    f.add_argument("--output-dir", default="runs/finetune")
    f.add_argument("--label-fraction", type=float, default=1.0, help="stratified fraction of the training labels")
    f.add_argument("--linear-probe", action="store_true", help="freeze the backbone, train the classifier only")
    f.add_argument("--new-head", action="store_true", help="replace a checkpoint's classifier trained for other labels")
    f.add_argument("--epochs", type=float, default=3.0)
    f.add_argument("--max-steps", type=int, default=-1)
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--patience", type=int, default=3, help="early stopping: evaluations without improvement")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-checks", action="store_true", help="accept data files whose md5 differs from the official one")
    f.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE", help="dataset builder option")


def _add_hub_commands(commands) -> None:
    p = commands.add_parser("push", help="push a saved MedNet (safetensors, processor, remote code) and its model card to the Hub")
    p.add_argument("--model", required=True, help="a saved MedNet folder (e.g. a finetune run's best/)")
    p.add_argument("--repo-id", required=True)
    p.add_argument("--card", help="README.md to use (default: the folder's README.md, else one written from its run record)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", help="branch to push to (created if needed)")
    p.add_argument("--message", default="Upload MedNet (mednet_hf)", help="commit message")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    h = commands.add_parser("hub", help="the bundled checkpoints")
    actions = h.add_subparsers(dest="action", required=True)
    i = actions.add_parser("install-bundled", help="place mednet/gray and mednet/color in the Hugging Face cache (offline use)")
    i.add_argument("--force", action="store_true", help="replace what the cache holds for them")


def _run_push(args) -> None:
    from .hub import default_model_card, push_model

    folder = Path(args.model)
    card_path = Path(args.card) if args.card else folder / "README.md"
    card = card_path.read_text() if card_path.is_file() else default_model_card(folder, args.repo_id)
    commit = push_model(folder, args.repo_id, card, private=args.private, token=args.token, revision=args.revision,
                        commit_message=args.message)
    print(f"pushed {folder} to {args.repo_id}{f'@{args.revision}' if args.revision else ''}: {commit.oid}")


def _run_hub(args) -> None:
    from huggingface_hub.constants import HF_HUB_CACHE

    from .bundled import install_bundled

    written = install_bundled(force=args.force)
    for repo_id, snapshot in written.items():
        print(f"{repo_id} -> {snapshot}")
    if not written:
        print(f"already installed in {HF_HUB_CACHE} (--force replaces them)")


def _run_pretrain(args) -> None:
    from training.pretrain import pretrain

    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "image_size", "lr", "checkpoint_every", "backbone",
                                              "mixed_precision", "init", "seed")}
    record = pretrain(args.recipe, args.output_dir, resume=args.resume, **overrides)
    if "export" in record:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in record["final_losses"].items())
        print(f"pretrained {record['steps']} steps on {record['processes']} process(es), {record['images_per_second']:.0f} img/s; "
              f"final losses: {losses}; ranks identical: {record['ranks_identical']}")
        print(f"backbone saved to {record['export']}")


def _run_finetune(args) -> None:
    from training.finetune import finetune

    record = finetune(
        args.model, args.dataset, args.data_dir, args.output_dir, size=args.size, label_fraction=args.label_fraction,
        linear_probe=args.linear_probe, new_head=args.new_head, epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, learning_rate=args.lr, patience=args.patience, seed=args.seed,
        verification_mode="no_checks" if args.no_checks else None, options=dict(args.option),
    )
    print(f"fine-tuned {record['steps']} steps on {record['train_rows']} images in {record['seconds']:.0f} s")
    for split in ("validation", "test"):
        metrics = record[split]
        if metrics:
            prefix = "eval" if split == "validation" else "test"
            shown = {k: metrics.get(f"{prefix}_{k}") for k in ("auroc", "accuracy", "balanced_accuracy", "f1")}
            print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items() if v is not None))
    print(f"results: {Path(args.output_dir) / 'results.json'}; best model: {record['export']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mednet", description="MedNet: medical image backbones for transformers")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(commands)
    _add_training_commands(commands)
    _add_hub_commands(commands)
    args = parser.parse_args(argv)
    try:
        {"data": _run_data, "pretrain": _run_pretrain, "finetune": _run_finetune, "push": _run_push, "hub": _run_hub}[args.command](args)
    except ValueError as e:  # our errors say what is wrong and what to do; no traceback needed
        print(f"mednet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from .hub import PushError

        if not isinstance(e, PushError):
            raise
        print(f"mednet {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
