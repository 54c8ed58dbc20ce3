"""Model cards rendered from run records: the pretraining `results.json` and the fine-tuning `results.json`s of
the transfer benchmark. Every number in a card comes from those records."""

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

VARIANT_NAMES = {"gray": "Gray-MedNet", "color": "Color-MedNet"}
MODALITY_TAGS = {"gray": ["x-ray", "ct", "mri"], "color": ["histopathology", "fundus", "microscopy"]}


def load_records(folder) -> tuple[dict, list[dict]]:
    """`pretrain.json` and every `finetune-*.json` in `folder`."""
    folder = Path(folder)
    pretrain = json.loads((folder / "pretrain.json").read_text())
    finetunes = [json.loads(p.read_text()) for p in sorted(folder.glob("finetune-*.json"))]
    return pretrain, finetunes


def _evaluation_rows(finetunes: list[dict]) -> list[dict]:
    rows = []
    for record in finetunes:
        test = record.get("test") or {}
        rows.append({
            "dataset": record["dataset"], "init": record.get("init", "mednet"), "label_fraction": record["label_fraction"],
            "linear_probe": record["linear_probe"], "train_rows": record["train_rows"], "steps": record["steps"],
            "auroc": test.get("test_auroc"), "accuracy": test.get("test_accuracy"),
            "balanced_accuracy": test.get("test_balanced_accuracy"), "f1": test.get("test_f1"),
        })
    return rows


def render_model_card(variant: str, records_dir, template, repo_id: str) -> ModelCard:
    pretrain, finetunes = load_records(records_dir)
    recipe = pretrain["recipe"]
    name = VARIANT_NAMES[variant]
    rows = _evaluation_rows(finetunes)
    eval_results = [
        EvalResult(
            task_type="image-classification", dataset_type=row["dataset"], dataset_name=row["dataset"],
            dataset_split="test", metric_type=metric, metric_value=round(row[key], 4),
            metric_name=f"{key} ({'linear probe' if row['linear_probe'] else 'fine-tuned'}, {row['label_fraction']:g} of labels)",
        )
        for row in rows if row["init"] == "mednet"
        for key, metric in (("auroc", "roc_auc"), ("accuracy", "accuracy")) if row[key] is not None
    ]
    data = ModelCardData(
        model_name=name, license="other", license_name="research-only", license_link="README.md#training-data",
        library_name="transformers", pipeline_tag="image-feature-extraction",
        tags=["medical-imaging", "image-classification", "timm", "transformers", "mednet", *MODALITY_TAGS[variant]],
        datasets=sorted({s["dataset"] + (f":{s['config']}" if s.get("config") else f":{s['data_dir']}") for s in recipe["sources"]}),
        metrics=["roc_auc", "accuracy"], eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        data, template_path=str(template), name=name, variant=variant, repo_id=repo_id, recipe=recipe,
        pretrain=pretrain, rows=rows, channels=1 if variant == "gray" else 3,
    )


def check_card(card: ModelCard, records_dir) -> None:
    """Local metadata check: the YAML parses into the Hub's card data, carries the keys the Hub shows, and every
    model-index number is one of the records' numbers."""
    parsed = ModelCard(str(card))  # re-parse the rendered text, as the Hub would
    data = parsed.data
    for key in ("license", "library_name", "tags", "datasets", "metrics"):
        if not data.get(key):
            raise ValueError(f"model card metadata lacks {key!r}")
    recorded = set()
    _, finetunes = load_records(records_dir)
    for record in finetunes:
        recorded.update(round(v, 4) for v in (record.get("test") or {}).values() if isinstance(v, float))
    for result in data.eval_results or []:
        if round(result.metric_value, 4) not in recorded:
            raise ValueError(f"model card number {result.metric_value} ({result.metric_type}) is in no run record")


__all__ = ["check_card", "load_records", "render_model_card"]
