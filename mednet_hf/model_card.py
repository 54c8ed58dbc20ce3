"""Model cards, every one rendered from a template in `mednet_hf/templates/` by huggingface_hub's `ModelCard`:

- a release's (`release_model_card.md`), from its run records: the pretraining record (`pretrain.json`) and the
  transfer study that `mednet benchmark` wrote for it (`benchmark.json`, with its plots beside it). Every number
  in such a card comes from those records;
- a user's own checkpoint's (`model_card.md`), for `mednet push`: what it is, how to load it, and the test metrics
  of the `mednet finetune` run that made it."""

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

VARIANT_NAMES = {"gray": "Gray-MedNet", "color": "Color-MedNet", "gray-3d": "Gray-MedNet-3D"}
MODALITY_TAGS = {"gray": ["x-ray", "ct", "mri", "ultrasound", "mammography"],
                 "color": ["histopathology", "fundus", "microscopy", "blood-smear"], "gray-3d": ["ct", "mri", "3d"]}
FIGURES = ("label_fractions.png", "convergence.png")
TEMPLATES = Path(__file__).resolve().parent / "templates"


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


def render_model_card(variant: str, records_dir, repo_id: str, figures: str = "", template=None) -> ModelCard:
    """A release's card (MedNet-3D's from its own template). `figures`: the path from the card to the benchmark's
    PNGs (the bundle keeps them beside its README)."""
    three_d = variant.endswith("-3d")
    template = template or TEMPLATES / ("release_3d_model_card.md" if three_d else "release_model_card.md")
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
        # timm cannot build a 3-D checkpoint, so only the 2-D ones carry its tag
        tags=["medical-imaging", "image-classification", *([] if three_d else ["timm"]), "transformers", "mednet",
              *MODALITY_TAGS[variant]],
        datasets=sorted({_dataset_name(s) for s in recipe["sources"]}),
        metrics=["roc_auc", "accuracy"], eval_results=eval_results or None,
    )
    figures_present = [f for f in FIGURES if (Path(records_dir) / f).is_file()]
    return ModelCard.from_template(
        data, template_path=str(template), name=name, variant=variant, repo_id=repo_id, recipe=recipe,
        pretrain=pretrain, benchmark=benchmark, rows=rows, losses=[r for r in rows if not r["wins"]],
        channels=3 if variant == "color" else 1, figures=[f"{figures}{f}" for f in figures_present],
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


def checkpoint_card(folder, repo_id: str) -> str:
    """The card of a user's own checkpoint (`mednet push` without a README.md): what it is, how to load it, and
    the test metrics of the `mednet finetune` run that produced it (its `results.json`, next to the folder)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    record_path = folder.parent / "results.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    test = sorted((k.removeprefix("test_"), v) for k, v in (record.get("test") or {}).items()
                  if isinstance(v, float) and "runtime" not in k and "per_second" not in k)
    labels = [config.get("id2label", {})[k] for k in sorted(config.get("id2label", {}), key=int)]
    data = ModelCardData(library_name="transformers", tags=["medical-imaging", "mednet", "timm", "transformers"], license="other")
    card = ModelCard.from_template(data, template_path=str(TEMPLATES / "model_card.md"), repo_id=repo_id, config=config,
                                   architecture=(config.get("architectures") or ["MedNetModel"])[0], labels=labels,
                                   record=record, test=test)
    return str(card)


__all__ = ["TEMPLATES", "check_card", "checkpoint_card", "comparison_rows", "load_records", "render_model_card"]
