"""The `mednet` command line."""

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path


def _option(text: str):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)  # numbers, true/false, null
    except json.JSONDecodeError:
        return key, value


def _json_list(text: str) -> list:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON list, got {text!r} ({e})") from e
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected a JSON list, got {text!r}")
    return value


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
    from .data import BUILDERS, load_medical_dataset

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
        dataset, args.repo_id, builder=args.name, builder_class=BUILDERS[args.name].__name__, private=args.private, token=args.token,
        revision=args.revision, max_shard_size=args.max_shard_size, allow_phi=args.allow_phi,
        checksums_verified=not args.no_checks,
    )
    print(f"pushed {args.repo_id}: {commit}")


def _base_type(annotation):
    """`int`, `str | None`, `dict` ... → the type argparse converts to (the first non-None member of a union)."""
    members = [t for t in typing.get_args(annotation) if t is not type(None)] or [annotation]
    return typing.get_origin(members[0]) or members[0]


def add_dataclass_arguments(parser, cls, overrides_only: bool = False) -> None:
    """One command-line option per field of dataclass `cls` that has a `help` text, so an option is defined once.
    Required fields become positional-free required options; `overrides_only` gives every option the default None
    (the recipe file supplies the values, the command line overrides some)."""
    for spec in dataclasses.fields(cls):
        text = spec.metadata.get("help")
        if text is None:
            continue
        flag = spec.metadata.get("flag", "--" + spec.name.replace("_", "-"))
        kind = _base_type(spec.type)
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        default = None if overrides_only or required else (
            spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default)
        if kind is dict:
            parser.add_argument(flag, dest=spec.name, type=_option, action="append", metavar="KEY=VALUE", help=text)
        elif kind is list:
            parser.add_argument(flag, dest=spec.name, type=_json_list, default=None if overrides_only else default,
                                metavar="JSON", help=text)
        elif kind is bool and default is False:
            parser.add_argument(flag, dest=spec.name, action="store_true", default=False, help=text)
        elif kind is bool:  # --flag / --no-flag: a recipe's value, or a default of True, can be turned off
            parser.add_argument(flag, dest=spec.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            parser.add_argument(flag, dest=spec.name, type=kind, default=default, required=required,
                                help=text + ("" if default is None else f" (default: {default})"))


def _add_training_commands(commands) -> None:
    from .training.finetune import FinetuneArguments
    from .training.recipe import Recipe

    p = commands.add_parser("pretrain", help="pretrain a MedNet backbone from a recipe (use `accelerate launch` for many processes)")
    p.add_argument("--recipe", required=True, help="YAML recipe, e.g. training/configs/gray.yaml")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", nargs="?", const="latest", help="continue from the latest checkpoint, or from this one")
    add_dataclass_arguments(p.add_argument_group("recipe overrides"), Recipe, overrides_only=True)

    f = commands.add_parser("finetune", help="fine-tune a MedNet checkpoint with the transformers Trainer")
    add_dataclass_arguments(f, FinetuneArguments)

    b = commands.add_parser("benchmark", help="the transfer study: MedNet vs scratch (vs ImageNet) at several label fractions")
    b.add_argument("--study", required=True, help="gray, color (the packaged studies) or a study YAML file")
    b.add_argument("--output-dir", required=True, help="where results.json, results.md, the plots and the runs go")
    b.add_argument("--quick", action="store_true", help="the study's quick block: one seed, a few epochs (minutes on a CPU)")
    b.add_argument("--model", help="the release to study (default: the study's, e.g. mednet/gray)")
    b.add_argument("--task", dest="tasks", action="append", help="run only this task (repeatable)")
    b.add_argument("--init", dest="inits", action="append", choices=["mednet", "scratch", "imagenet"], help="initialisations (repeatable)")
    b.add_argument("--label-fraction", dest="label_fractions", type=float, action="append", help="label fractions (repeatable)")
    b.add_argument("--seed", dest="seeds", type=int, action="append", help="seeds (repeatable)")
    b.add_argument("--image-size", type=int, help="fine-tune and probe at this size (default: each model's own)")


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
    from .training.pretrain import pretrain
    from .training.recipe import Recipe

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if hasattr(args, f.name)}
    record = pretrain(args.recipe, args.output_dir, resume=args.resume, **overrides)
    if "export" in record:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in record["final_losses"].items())
        print(f"pretrained {record['steps']} steps on {record['processes']} process(es), {record['images_per_second']:.0f} img/s; "
              f"final losses: {losses}; ranks identical: {record['ranks_identical']}")
        print(f"backbone saved to {record['export']}")


def _run_finetune(args) -> None:
    from .training.finetune import FinetuneArguments, finetune

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneArguments) if hasattr(args, f.name)}
    values["options"] = dict(values.get("options") or [])
    record = finetune(FinetuneArguments(**values))
    print(f"fine-tuned {record['steps']} steps on {record['train_rows']} images in {record['seconds']:.0f} s")
    for split in ("validation", "test"):
        metrics = record[split]
        if metrics:
            prefix = "eval" if split == "validation" else "test"
            shown = {k: metrics.get(f"{prefix}_{k}") for k in ("auroc", "accuracy", "balanced_accuracy", "f1")}
            print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items() if v is not None))
    print(f"results: {Path(args.output_dir) / 'results.json'}; best model: {record['export']}")


def _run_benchmark(args) -> None:
    from .training.benchmark import benchmark

    results = benchmark(args.study, args.output_dir, quick=args.quick, tasks=args.tasks, model=args.model, inits=args.inits,
                        label_fractions=args.label_fractions, seeds=args.seeds, image_size=args.image_size)
    print((Path(args.output_dir) / "results.md").read_text())
    print(f"{len(results['runs'])} runs in {results['seconds']:.0f} s; results: {Path(args.output_dir) / 'results.json'}")


def _add_inference_commands(commands) -> None:
    p = commands.add_parser("predict", help="classify files, folders, DICOM series and NIfTI volumes with a fine-tuned model (CSV)")
    p.add_argument("--model", required=True, help="a saved MedNet classifier (e.g. a finetune run's best/)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (searched recursively)")
    p.add_argument("--output", required=True, help="the CSV to write: path, slice, top-k labels and probabilities")
    p.add_argument("--top-k", type=int, default=5, help="labels per row (default: 5, or as many as the model has)")
    p.add_argument("--features", help="also write the pooled features here (safetensors; row i = CSV row i)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--slice-axis", type=int, default=2, choices=[0, 1, 2], help="volume axis to slice (default 2: axial for NIfTI)")
    p.add_argument("--slice-stride", type=int, default=1, help="every n-th slice or frame (default: all of them)")
    p.add_argument("--slice-index", type=int, help="only this slice of each volume")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable file")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: a GPU when there is one)")

    e = commands.add_parser("evaluate", help="score a fine-tuned model on a dataset split (results.json, calibration plot)")
    e.add_argument("--model", required=True, help="a saved MedNet classifier (e.g. a finetune run's best/)")
    e.add_argument("--dataset", required=True, help="medmnist:<subset>, imagefolder, chestxray14 (as for finetune)")
    e.add_argument("--data-dir", help="local files (image folder, MedMNIST .npz, ...)")
    e.add_argument("--split", default="test", help="the split to score (default: test)")
    e.add_argument("--size", type=int, help="MedMNIST image size")
    e.add_argument("--output-dir", default="runs/evaluate", help="where results.json and calibration.png go")
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--no-checks", action="store_true", help="accept data files whose md5 differs from the official one")
    e.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE", help="dataset builder option")

    x = commands.add_parser("export", help="export a saved MedNet to ONNX (dynamic batch), processor beside it")
    x.add_argument("--model", required=True, help="a saved MedNet folder")
    x.add_argument("--format", default="onnx", choices=["onnx"])
    x.add_argument("--output-dir", help="where model.onnx, config.json and preprocessor_config.json go (default: MODEL/onnx)")
    x.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")

    d = commands.add_parser("demo", help="a web page (Gradio) with predictions and Grad-CAM for uploaded files (`demo` extra)")
    d.add_argument("--model", required=True, help="a saved MedNet classifier (e.g. a finetune run's best/)")
    d.add_argument("--example", action="append", default=None, metavar="PATH",
                   help="an example file offered in the page (repeatable; default: a few from MEDNET_DATA_DIR when there)")
    d.add_argument("--top-k", type=int, default=3, help="predictions shown (default: 3)")
    d.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    d.add_argument("--port", type=int, help="port (default: Gradio's, 7860 or the next free one)")
    d.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default: medical images)")


def _run_predict(args) -> None:
    from .predict import predict

    rows, unreadable = predict(args.model, args.inputs, args.output, top_k=args.top_k, batch_size=args.batch_size,
                               features=args.features, slice_axis=args.slice_axis, slice_stride=args.slice_stride,
                               slice_index=args.slice_index, strict=args.strict, device=args.device)
    print(f"{rows} rows written to {args.output}" + (f"; features: {args.features}" if args.features else ""))
    if unreadable:
        print(f"{len(unreadable)} unreadable input(s), not predicted:", file=sys.stderr)
        for item in unreadable:
            print(f"  {item.path}: {item.reason}", file=sys.stderr)


def _run_evaluate(args) -> None:
    from .evaluate_model import evaluate_model

    record = evaluate_model(args.model, args.dataset, args.data_dir, args.output_dir, split=args.split, size=args.size,
                            batch_size=args.batch_size, no_checks=args.no_checks, options=dict(args.option))
    prefix = "eval" if args.split == "validation" else args.split
    shown = {k: record[args.split].get(f"{prefix}_{k}") for k in ("auroc", "accuracy", "balanced_accuracy", "f1")}
    print(f"{args.split} ({record['rows']} images): " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items() if v is not None))
    print(f"results: {Path(args.output_dir) / 'results.json'}; calibration plot: {Path(args.output_dir) / 'calibration.png'}")


def _run_export(args) -> None:
    from .export import export_onnx

    result = export_onnx(args.model, args.output_dir or Path(args.model) / "onnx", opset=args.opset)
    fallback = "" if result["exporter"] == "dynamo" else " (the dynamo exporter failed: TorchScript exporter used, see the warning)"
    print(f"exported {args.model} to {result['path']} (output {result['output']}, dynamic batch){fallback}")


def _run_demo(args) -> None:
    import os

    from .demo import example_files, serve

    examples = args.example
    if examples is None:
        examples = example_files(os.environ.get("MEDNET_DATA_DIR", "../shared/data"))
    serve(args.model, examples, top_k=args.top_k, host=args.host, port=args.port, share=args.share)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mednet", description="MedNet: medical image backbones for transformers")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(commands)
    _add_training_commands(commands)
    _add_hub_commands(commands)
    _add_inference_commands(commands)
    args = parser.parse_args(argv)
    try:
        {"data": _run_data, "pretrain": _run_pretrain, "finetune": _run_finetune, "benchmark": _run_benchmark,
         "push": _run_push, "hub": _run_hub, "predict": _run_predict, "evaluate": _run_evaluate,
         "export": _run_export, "demo": _run_demo}[args.command](args)
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
