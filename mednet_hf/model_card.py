"""Model cards rendered from run records: the pretraining record (`pretrain.json`) and the transfer study that
`mednet benchmark` wrote for the release (`benchmark.json`, with its plots beside it). Every number in a card comes
from those records."""

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

VARIANT_NAMES = {"gray": "Gray-MedNet", "color": "Color-MedNet"}
MODALITY_TAGS = {"gray": ["x-ray", "ct", "mri", "ultrasound", "mammography"],
                 "color": ["histopathology", "fundus", "microscopy", "blood-smear"]}
FIGURES = ("label_fractions.png", "convergence.png")


def load_records(folder) -> tuple[dict, dict]:
    """`pretrain.json` and `benchmark.json` (a `mednet benchmark` results.json) of a release."""
    folder = Path(folder)
    return json.loads((folder / "pretrain.json").read_text()), json.loads((folder / "benchmark.json").read_text())


def comparison_rows(benchmark: dict) -> list[dict]:
    """One row per task and label fraction: MedNet against scratch (and ImageNet where it ran), means over seeds,
    the difference, and whether MedNet won or lost: by more than the larger standard deviation over seeds."""
    by_key = {(r["task"], r["label_fraction"], r["init"]): r for r in benchmark["summary"]}
    rows = []
    for task, fraction in sorted({(r["task"], r["label_fraction"]) for r in benchmark["summary"]}):
        mednet, scratch = by_key.get((task, fraction, "mednet")), by_key.get((task, fraction, "scratch"))
        if not mednet or not scratch:
            continue
        imagenet = by_key.get((task, fraction, "imagenet"))
        delta = mednet["test_auroc"][0] - scratch["test_auroc"][0]
        spread = max(mednet["test_auroc"][1], scratch["test_auroc"][1])  # std over seeds (0 with one seed)
        rows.append({"task": task, "domain": mednet["domain"], "label_fraction": fraction, "seeds": mednet["seeds"],
                     "mednet": mednet, "scratch": scratch, "imagenet": imagenet, "delta": delta,
                     # a win (or a loss) only where the difference is larger than the seeds' spread
                     "wins": delta > spread, "loses": delta < -spread})
    return rows


def _dataset_name(source: dict) -> str:
    """A source as the card's `datasets:` metadata names it: a Hub source by its repo id (the Hub links it)."""
    if source["dataset"] == "hub":
        return source["repo_id"]
    return source["dataset"] + (f":{source['config']}" if source.get("config") else f":{source['data_dir']}")


def render_model_card(variant: str, records_dir, template, repo_id: str, figures: str = "") -> ModelCard:
    """`figures`: the path from the card to the benchmark's PNGs (the bundle keeps them beside its README)."""
    pretrain, benchmark = load_records(records_dir)
    recipe = pretrain["recipe"]
    name = VARIANT_NAMES[variant]
    rows = comparison_rows(benchmark)
    eval_results = [
        EvalResult(
            task_type="image-classification", dataset_type=row["task"], dataset_name=row["task"], dataset_split="test",
            metric_type=metric, metric_value=round(row["mednet"][key][0], 4),
            metric_name=f"{key.removeprefix('test_')} (fine-tuned, {row['label_fraction']:g} of labels, mean of {row['seeds']} seed(s))",
        )
        for row in rows for key, metric in (("test_auroc", "roc_auc"), ("test_accuracy", "accuracy"))
    ]
    data = ModelCardData(
        model_name=name, license="other", license_name="research-only", license_link="README.md#training-data",
        library_name="transformers", pipeline_tag="image-feature-extraction",
        tags=["medical-imaging", "image-classification", "timm", "transformers", "mednet", *MODALITY_TAGS[variant]],
        datasets=sorted({_dataset_name(s) for s in recipe["sources"]}),
        metrics=["roc_auc", "accuracy"], eval_results=eval_results or None,
    )
    figures_present = [f for f in FIGURES if (Path(records_dir) / f).is_file()]
    return ModelCard.from_template(
        data, template_path=str(template), name=name, variant=variant, repo_id=repo_id, recipe=recipe,
        pretrain=pretrain, benchmark=benchmark, rows=rows, losses=[r for r in rows if not r["wins"]],
        channels=1 if variant == "gray" else 3, figures=[f"{figures}{f}" for f in figures_present],
    )


def check_card(card: ModelCard, records_dir) -> None:
    """Local metadata check: the YAML parses into the Hub's card data, carries the keys the Hub shows, and every
    model-index number is one of the benchmark record's numbers."""
    parsed = ModelCard(str(card))  # re-parse the rendered text, as the Hub would
    data = parsed.data
    for key in ("license", "library_name", "tags", "datasets", "metrics"):
        if not data.get(key):
            raise ValueError(f"model card metadata lacks {key!r}")
    _, benchmark = load_records(records_dir)
    recorded = {round(row[key][0], 4) for row in benchmark["summary"] for key in ("test_auroc", "test_accuracy") if row.get(key)}
    for result in data.eval_results or []:
        if round(result.metric_value, 4) not in recorded:
            raise ValueError(f"model card number {result.metric_value} ({result.metric_type}) is in no run record")


__all__ = ["check_card", "comparison_rows", "load_records", "render_model_card"]
