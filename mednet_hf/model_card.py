"""Model cards, every one rendered from a template in `mednet_hf/templates/` by huggingface_hub's `ModelCard`:

- a release's (`release_model_card.md`), from its run records: the pretraining record (`pretrain.json`) and the
  transfer study that `mednet benchmark` wrote for it (`benchmark.json`, with its plots beside it); where they exist,
  the same study at another fine-tuning size (`benchmark-<size>.json`), the release it replaces (`previous.json`) and
  the CPU budget study that chose its recipe (`budget-study.json`). Every number in such a card comes from those
  records;
- a user's own checkpoint's (`model_card.md`), for `mednet push`: what it is, how to load it, and the test metrics
  of the `mednet finetune` run that made it."""

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

VARIANT_NAMES = {"gray": "Gray-MedNet", "color": "Color-MedNet", "gray-3d": "Gray-MedNet-3D"}
MODALITY_TAGS = {"gray": ["x-ray", "ct", "mri", "ultrasound", "mammography"],
                 "color": ["histopathology", "fundus", "microscopy", "blood-smear"], "gray-3d": ["ct", "mri", "3d"]}
FIGURES = ("label_fractions.png", "convergence.png")  # the transfer study's (`mednet benchmark` draws them)
RELEASE_FIGURES = ("release_points.png", "budget.png")  # a CPU release run's benchmark points; the budget study's
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


def pretraining_summary(pretrain: dict) -> dict:
    """What a card says first about a pretraining record: the sizes it trained at (the last one is the release's, and
    its processor's default), and its wall-clock time over every segment (a resumed run's record has several)."""
    recipe = pretrain["recipe"]
    sizes = list(dict.fromkeys([recipe["image_size"], *(size for _, size in recipe.get("image_size_schedule") or [])]))
    final = (recipe.get("image_size_schedule") or [[0, recipe["image_size"]]])[-1][1]
    wall = pretrain.get("wall_seconds_total") or pretrain["wall_seconds"]
    release = pretrain.get("release") or {}
    return {"sizes": sizes, "final_size": final, "wall_seconds": wall, "hours": wall / 3600,
            "cpu_hours": pretrain["cpu_seconds_total"] / 3600 if pretrain.get("cpu_seconds_total") else None,
            "cores": release.get("cores"), "segments": pretrain.get("segments") or [], "release": release or None,
            "images": sum(s["images"] for s in pretrain["segments"]) if pretrain.get("segments") else
            pretrain["steps"] * recipe["batch_size"] * pretrain["processes"] * recipe["grad_accum"]}


def _auroc(benchmark: dict, task: str, fraction: float, init: str) -> tuple[float, float] | None:
    row = next((r for r in benchmark["summary"] if (r["task"], r["label_fraction"], r["init"]) == (task, fraction, init)), None)
    return tuple(row["test_auroc"]) if row and row["test_auroc"] else None


def release_checks(benchmark: dict, previous: dict | None = None) -> list[dict]:
    """The release criteria, each with what it compares and whether it is met, per study task: MedNet beats scratch
    at 1% and 10% labels by more than twice the seeds' spread (the larger standard deviation), and is not worse at
    100% by more than the spread; its linear probe is at least 0.10 AUROC above scratch's; at 10% labels it reaches
    scratch's best validation AUROC in at most half of scratch's epochs to it (every seed); and, against the release
    it replaces (`previous`: that release's `benchmark.json`), it is better at 1% and 10% labels, in the linear
    probe and in kNN."""
    checks = []

    def check(task, what, measured, target, met):
        checks.append({"task": task, "check": what, "measured": measured, "target": target, "met": bool(met)})

    for task in sorted({r["task"] for r in benchmark["summary"]}):
        for fraction in (0.01, 0.1, 1.0):
            ours, theirs = _auroc(benchmark, task, fraction, "mednet"), _auroc(benchmark, task, fraction, "scratch")
            if not ours or not theirs:
                continue
            delta, spread = ours[0] - theirs[0], max(ours[1], theirs[1])
            if fraction < 1:
                check(task, f"{fraction:.0%} labels: beats scratch", f"Δ {delta:+.3f}", f"> 2 × spread = {2 * spread:.3f}", delta > 2 * spread)
            else:
                check(task, "100% labels: not worse than scratch", f"Δ {delta:+.3f}", f"≥ -{spread:.3f} (the spread)", delta >= -spread)
        frozen = benchmark["frozen"].get(task, {})
        if {"mednet", "scratch"} <= set(frozen):
            delta = frozen["mednet"]["linear_probe"]["test_auroc"] - frozen["scratch"]["linear_probe"]["test_auroc"]
            check(task, "linear probe: above scratch's", f"Δ {delta:+.3f}", "≥ +0.10", delta >= 0.10 - 1e-9)
        for row in benchmark.get("acceleration") or []:
            if row["task"] == task and row["label_fraction"] == 0.1:
                reached = row["reached"] == row["seeds"]
                ratio = row["mednet_epoch"] / row["scratch_epoch"] if reached and row["scratch_epoch"] else None
                measured = (f"epoch {row['mednet_epoch']:.1f} / {row['scratch_epoch']:.1f} = {ratio:.2f}" if ratio is not None else
                            f"reached in {row['reached']} of {row['seeds']} seeds (scratch's best at epoch {row['scratch_epoch']:.1f})")
                check(task, "10% labels: epochs to scratch's best val. AUROC", measured, "≤ 0.5 × scratch's", ratio is not None and ratio <= 0.5)
        if previous:
            for fraction in (0.01, 0.1):
                ours, before = _auroc(benchmark, task, fraction, "mednet"), _auroc(previous, task, fraction, "mednet")
                if ours and before:
                    check(task, f"{fraction:.0%} labels: beats the previous release", f"{ours[0]:.3f}", f"> {before[0]:.3f}", ours[0] > before[0])
            before = previous.get("frozen", {}).get(task, {}).get("mednet")
            if before and "mednet" in frozen:
                for key, name in (("linear_probe", "linear probe"), ("knn", "kNN")):
                    ours, theirs = frozen["mednet"][key]["test_auroc"], before[key]["test_auroc"]
                    check(task, f"{name}: beats the previous release", f"{ours:.3f}", f"> {theirs:.3f}", ours > theirs)
    return checks


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
    records_dir = Path(records_dir)
    figures_present = [f for f in FIGURES if (records_dir / f).is_file()]
    optional = {name: json.loads((records_dir / f"{name}.json").read_text()) if (records_dir / f"{name}.json").is_file() else None
                for name in ("previous", "budget-study")}
    other_sizes = {int(path.stem.split("-")[1]): json.loads(path.read_text()) for path in sorted(records_dir.glob("benchmark-*.json"))}
    run = pretraining_summary(pretrain)
    # every study size is held to the criteria (the previous release's study was at its own pretraining size)
    checks = [c | {"size": size} for size, study in {run["final_size"]: benchmark, **other_sizes}.items()
              for c in release_checks(study, optional["previous"])]
    return ModelCard.from_template(
        data, template_path=str(template), name=name, variant=variant, repo_id=repo_id, recipe=recipe,
        pretrain=pretrain, run=run, benchmark=benchmark, rows=rows, losses=[r for r in rows if not r["wins"]],
        checks=checks, previous=optional["previous"], budget=optional["budget-study"],
        other_sizes={size: comparison_rows(b) for size, b in other_sizes.items()}, other_frozen={size: b["frozen"] for size, b in other_sizes.items()},
        channels=3 if variant == "color" else 1, figures=[f"{figures}{f}" for f in figures_present],
        release_figures={f: f"{figures}{f}" for f in RELEASE_FIGURES if (records_dir / f).is_file()},
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


__all__ = ["FIGURES", "RELEASE_FIGURES", "TEMPLATES", "check_card", "checkpoint_card", "comparison_rows", "load_records", "pretraining_summary", "release_checks",
           "render_model_card"]
