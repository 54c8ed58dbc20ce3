"""`mednet pretrain`, `mednet finetune` and `mednet benchmark`: the options of the training package's entry points
(a recipe and its overrides, `FinetuneArguments`, a study), parsed into their dataclasses."""

from dataclasses import dataclass, field
from pathlib import Path

from . import Command


@dataclass
class PretrainArguments:
    recipe: str = field(metadata={"help": "YAML recipe, e.g. training/configs/gray.yaml"})
    output_dir: str = field(metadata={"help": "where checkpoints, the run record and final/ go"})
    resume: str | None = field(default=None, metadata={
        "help": "continue from the latest checkpoint of --output-dir, or from this checkpoint folder", "nargs": "?",
        "const": "latest"})


def _recipe_class():
    from ..training.recipe import Recipe

    return Recipe


def pretrain(args: PretrainArguments, overrides: dict) -> None:
    from ..training.pretrain import pretrain as run

    record = run(args.recipe, args.output_dir, resume=args.resume, **overrides)
    if "export" in record:
        losses = ", ".join(f"{k} {v:.4f}" for k, v in record["final_losses"].items())
        print(f"pretrained {record['steps']} steps on {record['processes']} process(es), {record['images_per_second']:.0f} img/s; "
              f"final losses: {losses}; ranks identical: {record['ranks_identical']}")
        print(f"backbone saved to {record['export']}")


def finetune(args) -> None:
    from ..training.finetune import finetune as run

    record = run(args)
    print(f"fine-tuned {record['steps']} steps on {record['train_rows']} images in {record['seconds']:.0f} s")
    for split in ("validation", "test"):
        metrics = record[split]
        if metrics:
            prefix = "eval" if split == "validation" else "test"
            shown = {k: metrics.get(f"{prefix}_{k}") for k in ("auroc", "accuracy", "balanced_accuracy", "f1")}
            print(f"{split}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items() if v is not None))
    print(f"results: {Path(args.output_dir) / 'results.json'}; best model: {record['export']}")


def benchmark(args) -> None:
    from ..training.benchmark import benchmark as run

    results = run(args.study, args.output_dir, quick=args.quick, tasks=args.tasks, model=args.model, inits=args.inits,
                  label_fractions=args.label_fractions, seeds=args.seeds, image_size=args.image_size)
    print((Path(args.output_dir) / "results.md").read_text())
    print(f"{len(results['runs'])} runs in {results['seconds']:.0f} s; results: {Path(args.output_dir) / 'results.json'}")


def _finetune_arguments():
    from ..training.finetune import FinetuneArguments

    return FinetuneArguments


def _benchmark_arguments():
    from ..training.benchmark import BenchmarkArguments

    return BenchmarkArguments


COMMANDS = [
    Command("pretrain", "pretrain a MedNet backbone from a recipe (use `accelerate launch` for many processes)",
            PretrainArguments, pretrain, overrides=_recipe_class()),
    Command("finetune", "fine-tune a MedNet checkpoint with the transformers Trainer", _finetune_arguments(), finetune),
    Command("benchmark", "the transfer study: MedNet vs scratch (vs ImageNet) at several label fractions",
            _benchmark_arguments(), benchmark),
]

__all__ = ["PretrainArguments"]
