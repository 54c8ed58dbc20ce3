"""`mednet predict`, `mednet evaluate`, `mednet export` and `mednet demo`: using a saved (fine-tuned) MedNet."""

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import Command


@dataclass
class PredictArguments:
    inputs: list[str] = field(metadata={"help": "files or folders (searched recursively)", "positional": True,
                                        "nargs": "+", "metavar": "INPUT"})
    model: str = field(metadata={"help": "a saved MedNet classifier (e.g. a finetune run's best/)"})
    output: str = field(metadata={"help": "the CSV to write: path, slice, top-k labels and probabilities"})
    top_k: int = field(default=5, metadata={"help": "labels per row (or as many as the model has)"})
    features: str | None = field(default=None, metadata={"help": "also write the pooled features here (safetensors; row i = CSV row i)"})
    batch_size: int = field(default=32, metadata={"help": "images per forward pass"})
    slice_axis: int = field(default=2, metadata={"help": "volume axis to slice (2: axial for NIfTI)", "choices": [0, 1, 2]})
    slice_stride: int = field(default=1, metadata={"help": "every n-th slice or frame (1: all of them)"})
    slice_index: int | None = field(default=None, metadata={"help": "only this slice of each volume"})
    strict: bool = field(default=False, metadata={"help": "stop at the first unreadable file"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: a GPU when there is one)"})


def predict(args: PredictArguments) -> None:
    from ..predict import predict as run

    rows, unreadable = run(args.model, args.inputs, args.output, top_k=args.top_k, batch_size=args.batch_size,
                           features=args.features, slice_axis=args.slice_axis, slice_stride=args.slice_stride,
                           slice_index=args.slice_index, strict=args.strict, device=args.device)
    print(f"{rows} rows written to {args.output}" + (f"; features: {args.features}" if args.features else ""))
    if unreadable:
        print(f"{len(unreadable)} unreadable input(s), not predicted:", file=sys.stderr)
        for item in unreadable:
            print(f"  {item.path}: {item.reason}", file=sys.stderr)


@dataclass
class EvaluateArguments:
    model: str = field(metadata={"help": "a saved MedNet classifier (e.g. a finetune run's best/)"})
    dataset: str = field(metadata={"help": "medmnist:<subset>, imagefolder, chestxray14 (as for finetune)"})
    data_dir: str | None = field(default=None, metadata={"help": "local files (image folder, MedMNIST .npz, ...)"})
    split: str = field(default="test", metadata={"help": "the split to score"})
    size: int | None = field(default=None, metadata={"help": "MedMNIST image size (of the files)"})
    output_dir: str = field(default="runs/evaluate", metadata={"help": "where results.json and calibration.png go"})
    batch_size: int = field(default=128, metadata={"help": "images per forward pass"})
    no_checks: bool = field(default=False, metadata={"help": "accept data files whose md5 differs from the official one"})
    options: dict = field(default_factory=dict, metadata={"help": "dataset builder option, e.g. filename=x.npz", "aliases": ["--option"]})


def evaluate(args: EvaluateArguments) -> None:
    from ..evaluate_model import evaluate_model

    record = evaluate_model(args.model, args.dataset, args.data_dir, args.output_dir, split=args.split, size=args.size,
                            batch_size=args.batch_size, no_checks=args.no_checks, options=args.options)
    prefix = "eval" if args.split == "validation" else args.split
    shown = {k: record[args.split].get(f"{prefix}_{k}") for k in ("auroc", "accuracy", "balanced_accuracy", "f1")}
    print(f"{args.split} ({record['rows']} images): " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items() if v is not None))
    print(f"results: {Path(args.output_dir) / 'results.json'}; calibration plot: {Path(args.output_dir) / 'calibration.png'}")


@dataclass
class ExportArguments:
    model: str = field(metadata={"help": "a saved MedNet folder"})
    format: str = field(default="onnx", metadata={"help": "the format", "choices": ["onnx"]})
    output_dir: str | None = field(default=None, metadata={"help": "where model.onnx, config.json and preprocessor_config.json go (default: MODEL/onnx)"})
    opset: int | None = field(default=None, metadata={"help": "ONNX opset (default: the exporter's)"})


def export(args: ExportArguments) -> None:
    from ..export import export_onnx

    result = export_onnx(args.model, args.output_dir or Path(args.model) / "onnx", opset=args.opset)
    fallback = "" if result["exporter"] == "dynamo" else " (the dynamo exporter failed: TorchScript exporter used, see the warning)"
    print(f"exported {args.model} to {result['path']} (output {result['output']}, dynamic {result.get('dynamic', 'batch')}){fallback}")


@dataclass
class DemoArguments:
    model: str = field(metadata={"help": "a saved MedNet classifier (e.g. a finetune run's best/)"})
    examples: list[str] | None = field(default=None, metadata={
        "help": "an example file offered in the page (repeatable; default: a few from MEDNET_DATA_DIR when there)",
        "aliases": ["--example"], "action": "extend", "metavar": "PATH"})
    top_k: int = field(default=3, metadata={"help": "predictions shown"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to serve on (default: this machine only)"})
    port: int | None = field(default=None, metadata={"help": "port (default: Gradio's, 7860 or the next free one)"})
    share: bool = field(default=False, metadata={"help": "also open a public gradio.live link (off by default: medical images)"})


def demo(args: DemoArguments) -> None:
    from ..demo import example_files, serve

    examples = args.examples
    if examples is None:
        examples = example_files(os.environ.get("MEDNET_DATA_DIR", "../shared/data"))
    serve(args.model, examples, top_k=args.top_k, host=args.host, port=args.port, share=args.share)


COMMANDS = [
    Command("predict", "classify files, folders, DICOM series and NIfTI volumes with a fine-tuned model (CSV)",
            PredictArguments, predict),
    Command("evaluate", "score a fine-tuned model on a dataset split (results.json, calibration plot)", EvaluateArguments, evaluate),
    Command("export", "export a saved MedNet to ONNX (dynamic batch and, where the network allows, size), processor beside it",
            ExportArguments, export),
    Command("demo", "a web page (Gradio) with predictions and Grad-CAM for uploaded files (`demo` extra)", DemoArguments, demo),
]
