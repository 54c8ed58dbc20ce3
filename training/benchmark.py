"""The transfer study behind `mednet benchmark`: does a MedNet release give a better model, sooner, than the same
network from scratch (or from ImageNet), when only a few labels are at hand?

A study file (`training/configs/benchmark_gray.yaml`, `benchmark_color.yaml`) names the release, the tasks (with
their official test splits, marked in- or out-of-domain), the initialisations, label fractions and seeds, and one
fine-tuning recipe. For every task × initialisation × fraction × seed this runs `mednet finetune` (the same
function), and records test AUROC/accuracy and the validation AUROC after every epoch. Then, at 100% labels, frozen
features: a linear probe (logistic regression) and kNN (k=20, cosine) on the pooled features. Where the study has
one, a dense task: DRIVE vessels with `MedNetBackbone` and a light decoder (Dice).

The output folder holds `results.json` (every run, its command line and the path of its own record),
`results.md` (the tables, beside published numbers on the same test splits), `label_fractions.png` (test AUROC
against label fraction per task) and `convergence.png` (validation AUROC per epoch, MedNet against scratch).
"""

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from mednet_hf.data import load_dataset_spec, medical_transform
from mednet_hf.loading import load_for_use, weights_sha256
from mednet_hf.options import command_line, portable_path
from mednet_hf.metrics import classification_metrics

from .finetune import FinetuneArguments, finetune
from .recipe import resolve_data_dir

# mednet: the study's release; scratch: its network with random weights; imagenet: timm's ImageNet weights;
# acs / i3d / 2.5d: the 2-D release (`source_2d`) converted to MedNet-3D (a 3-D study).
INITS = ("mednet", "scratch", "imagenet", "acs", "i3d", "2.5d")
COLORS = {"mednet": "C0", "scratch": "C1", "imagenet": "C2", "acs": "C3", "i3d": "C4", "2.5d": "C5"}  # in every plot


@dataclass
class Task:
    name: str
    dataset: str  # as `mednet finetune --dataset`
    data_dir: str  # relative paths are under MEDNET_DATA_DIR
    domain: str  # "in": the release saw this task's training images in pretraining; "out": it did not
    options: dict = field(default_factory=dict)
    no_checks: bool = False


@dataclass
class Study:
    variant: str
    model: str  # the release: a Hub id (the bundled mednet/gray) or a folder
    tasks: list[Task]
    inits: list[str] = field(default_factory=lambda: list(INITS))
    label_fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    finetune: dict = field(default_factory=dict)  # FinetuneArguments fields shared by every run
    knn_k: int = 20
    convergence: float = 0.95  # epochs until validation AUROC first reaches this share of the run's best
    dense: dict | None = None  # {"data_dir": ..., "size": ..., "steps": ...} for DRIVE
    published: list[dict] = field(default_factory=list)  # reference numbers on the same test splits
    quick: dict = field(default_factory=dict)  # what --quick replaces
    source_2d: str | None = None  # a 3-D study: the 2-D release that acs / i3d / 2.5d convert
    scratch_conversion: str | None = None  # a 3-D study: the 3-D network scratch trains (i3d: full 3-D kernels)


def load_study(path, quick: bool = False, **overrides) -> Study:
    """Read a study file; `quick` applies its `quick:` block (fewer seeds and epochs), `overrides` win last."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in fields(Study)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"study {path}: unknown key(s) {unknown}; known: {sorted(known)}")
    if quick:
        quick_block = raw.get("quick") or {}
        raw["finetune"] = {**raw.get("finetune", {}), **quick_block.pop("finetune", {})}
        raw.update(quick_block)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    task_keys = {f.name for f in fields(Task)}
    for i, task in enumerate(raw.get("tasks") or []):
        if set(task) - task_keys or not {"name", "dataset", "data_dir", "domain"} <= set(task):
            raise ValueError(f"study {path}: task {i} needs name, dataset, data_dir, domain (and only {sorted(task_keys)})")
    study = Study(**{**raw, "tasks": [Task(**t) for t in raw.get("tasks") or []]})
    if not study.tasks:
        raise ValueError(f"study {path}: no tasks")
    bad = sorted(set(study.inits) - set(INITS))
    if bad:
        raise ValueError(f"study {path}: unknown initialisation(s) {bad}; choose from {INITS}")
    bad = sorted(set(study.finetune) - {f.name for f in fields(FinetuneArguments)})
    if bad:
        raise ValueError(f"study {path}: unknown fine-tuning option(s) {bad}")
    return study


# ---------------------------------------------------------------------------------------------------- initialisations


def prepare_inits(study: Study, work: Path) -> tuple[dict[str, str], dict[str, str]]:
    """{init: model folder or id} for the initialisations that can run, and {init: why not} for the others. Scratch and
    ImageNet copy the release's architecture, variant and preprocessing, so only the weights differ; in a 3-D study
    (`source_2d`), acs / i3d / 2.5d are the 2-D release converted, and scratch is `scratch_conversion`'s network."""
    from transformers import AutoConfig, AutoImageProcessor

    from mednet_hf import MedNetModel
    from mednet_hf.conversion_3d import inflate_state_dict

    reference = study.source_2d or study.model  # the architecture and preprocessing every initialisation shares
    config, processor = AutoConfig.from_pretrained(reference), AutoImageProcessor.from_pretrained(reference)
    ready, skipped = {}, {}
    for init in study.inits:
        torch.manual_seed(0)
        if init == "mednet":
            try:
                AutoConfig.from_pretrained(study.model)
            except (OSError, ValueError) as e:
                skipped[init] = f"{study.model} cannot be loaded ({type(e).__name__}: {str(e)[:120]})"
                continue
            ready[init] = study.model
            continue
        if init in ("acs", "i3d", "2.5d"):
            if not study.source_2d:
                skipped[init] = "a conversion needs the study's source_2d (the 2-D release to convert)"
                continue
            model = MedNetModel.from_pretrained(study.source_2d, spatial_dims=3, conversion=init)
        elif study.source_2d:  # 3-D scratch
            model = MedNetModel(type(config)(**{**config.to_dict(), "spatial_dims": 3,
                                                "conversion": study.scratch_conversion or "i3d",
                                                "image_size": config.image_size}))
        else:
            model = MedNetModel(config)
        if init == "imagenet":
            import timm

            try:  # timm sums the RGB kernels of the first convolution for one input channel
                weights = timm.create_model(config.architecture, pretrained=True, num_classes=0, in_chans=config.num_channels)
            except Exception as e:  # offline, no weights for this architecture, hub error: all end here
                skipped[init] = f"timm's ImageNet weights for {config.architecture} are not reachable ({type(e).__name__})"
                continue
            model.timm_model.load_state_dict(inflate_state_dict(weights.state_dict(), model.timm_model))  # 3-D: converted
        folder = work / f"init-{init}"
        model.save_pretrained(folder)
        processor.save_pretrained(folder)  # beside a 3-D config it reads volumes (slice_policy from the config)
        ready[init] = str(folder)
    return ready, skipped


# ---------------------------------------------------------------------------------------------------- one fine-tuning run


def _scores(history: list[dict]) -> list[tuple[float, float]]:
    return [(entry["epoch"], entry["eval_auroc"]) for entry in history if entry.get("eval_auroc") is not None]


def epochs_to_reach(history: list[dict], share: float) -> float | None:
    """The first epoch at which validation AUROC reaches `share` of the run's best; None without evaluations."""
    scores = _scores(history)
    if not scores:
        return None
    best = max(score for _, score in scores)
    return next(epoch for epoch, score in scores if score >= share * best)


def acceleration(mednet: list[dict], scratch: list[dict]) -> dict | None:
    """Convergence against scratch's best (as Ghesu et al. report it): the epoch at which scratch first reaches its
    best validation AUROC, and the epoch at which MedNet's run (same task, labels and seed) first reaches that value,
    None if it never does. Unlike "epochs to 95% of the run's own best", a run whose best is poor gains nothing."""
    theirs, ours = _scores(scratch), _scores(mednet)
    if not theirs or not ours:
        return None
    best = max(score for _, score in theirs)
    scratch_epoch = next(epoch for epoch, score in theirs if score >= best)
    mednet_epoch = next((epoch for epoch, score in ours if score >= best), None)
    return {"scratch_best_auroc": best, "scratch_epoch": scratch_epoch, "mednet_epoch": mednet_epoch}


@dataclass
class BenchmarkArguments:
    """The options of `mednet benchmark`."""

    study: str = field(metadata={"help": "gray, color (the packaged studies) or a study YAML file"})
    output_dir: str = field(metadata={"help": "where results.json, results.md, the plots and the runs go"})
    quick: bool = field(default=False, metadata={"help": "the study's quick block: one seed, a few epochs (minutes on a CPU)"})
    model: str | None = field(default=None, metadata={"help": "the release to study (default: the study's, e.g. mednet/gray)"})
    tasks: list[str] | None = field(default=None, metadata={"help": "run only these tasks (repeatable)", "aliases": ["--task"], "action": "extend"})
    inits: list[str] | None = field(default=None, metadata={
        "help": "initialisations (repeatable)", "aliases": ["--init"], "action": "extend", "choices": list(INITS)})
    label_fractions: list[float] | None = field(default=None, metadata={"help": "label fractions (repeatable)", "aliases": ["--label-fraction"], "action": "extend"})
    seeds: list[int] | None = field(default=None, metadata={"help": "seeds (repeatable)", "aliases": ["--seed"], "action": "extend"})
    image_size: int | None = field(default=None, metadata={"help": "fine-tune and probe at this size (default: each model's own)"})



def _study_command(study_path, output_dir, quick: bool, task: str, init: str, study: Study) -> str:
    arguments = BenchmarkArguments(study=str(study_path), output_dir=str(output_dir), quick=quick, model=study.model,
                                   tasks=[task], inits=[init], image_size=study.finetune.get("image_size"))
    return command_line("benchmark", arguments)


def run_finetune(study: Study, task: Task, init: str, model: str, fraction: float, seed: int, output_dir: Path) -> dict:
    arguments = FinetuneArguments(
        model=model, dataset=task.dataset, data_dir=resolve_data_dir(task.data_dir), output_dir=str(output_dir),
        label_fraction=fraction, seed=seed, no_checks=task.no_checks, options=dict(task.options), report_to="none",
        new_head=True, **study.finetune,
    )
    done, started_from = output_dir / "results.json", output_dir / "start-weights.sha256"
    previous = json.loads(done.read_text()) if done.is_file() else {}
    weights = weights_sha256(model)
    # A study run again in the same folder (after a stop, or with more seeds) reuses each run that finished with the
    # same arguments from the same weights; the initialisations it starts from are seeded, so the run would repeat.
    same = (previous.get("arguments") == json.loads(json.dumps(asdict(arguments), default=str)) and previous.get("test")
            and weights is not None and started_from.is_file() and started_from.read_text() == weights)
    if same:
        record = previous
    else:
        started_from.unlink(missing_ok=True)
        record = finetune(arguments)
        weights = weights or weights_sha256(model)  # a Hub id is in the cache once the run has loaded it
        if weights is not None:
            started_from.write_text(weights)
    return {
        "task": task.name, "domain": task.domain, "init": init, "label_fraction": fraction, "seed": seed,
        "test_auroc": record["test"]["test_auroc"], "test_accuracy": record["test"]["test_accuracy"],
        "best_validation_auroc": max((e["eval_auroc"] for e in record["history"]), default=None),
        "epochs_to_95": epochs_to_reach(record["history"], study.convergence),
        "history": [{"epoch": e["epoch"], "eval_auroc": e["eval_auroc"]} for e in record["history"]],
        "train_rows": record["train_rows"], "seconds": record["seconds"],
        "command": command_line("finetune", arguments), "record": portable_path(str(output_dir / "results.json")), "weights_sha256": weights,
    }


# ---------------------------------------------------------------------------------------------------- frozen features


@torch.no_grad()
def _features(model, processor, split, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    transformed = split.with_transform(medical_transform(processor, split.features))
    feats, labels = [], []
    for start in range(0, split.num_rows, batch_size):
        batch = transformed[start : start + batch_size]
        pixels = batch["pixel_values"].to(model.device)
        feats.append(model(pixel_values=pixels).pooler_output.float().cpu().numpy())
        labels.append(batch["labels"].numpy())
    return np.concatenate(feats), np.concatenate(labels)


def frozen_features(study: Study, task: Task, model_id: str) -> dict:
    """Linear probe (logistic regression on standardised features) and kNN (k, cosine) at 100% labels."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    splits = load_dataset_spec(task.dataset, resolve_data_dir(task.data_dir), no_checks=task.no_checks, options=task.options)
    # the backbone alone, at the size fine-tuning runs at where the study sets one
    model, processor, _ = load_for_use(model_id, "features", image_size=study.finetune.get("image_size"))
    train_x, train_y = _features(model, processor, splits["train"])
    test_x, test_y = _features(model, processor, splits["test"])
    out = {}
    for method, classifier in (
        ("linear_probe", make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))),
        ("knn", KNeighborsClassifier(n_neighbors=study.knn_k, metric="cosine")),
    ):
        classifier.fit(train_x, train_y)
        probabilities = classifier.predict_proba(test_x)
        # classification_metrics takes logits: the log of the class probabilities is one
        metrics = classification_metrics(np.log(np.clip(probabilities, 1e-12, 1.0)), test_y)
        out[method] = {"test_auroc": metrics["auroc"], "test_accuracy": metrics["accuracy"],
                       "test_auroc_bootstrap_std": bootstrap_auroc_std(probabilities, test_y)}
    return out


def bootstrap_auroc_std(probabilities: np.ndarray, labels: np.ndarray, resamples: int = 200, seed: int = 0) -> float:
    """The spread of a deterministic score (a probe has no seeds): the standard deviation of the test AUROC over
    test sets resampled with replacement within each class (so every class stays present), seeded."""
    from mednet_hf.metrics import load_metric

    rng, labels = np.random.default_rng(seed), np.asarray(labels)
    members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    auroc = load_metric("auroc")
    values = []
    for _ in range(resamples):
        index = np.concatenate([rng.choice(m, size=len(m), replace=True) for m in members])
        values.append(auroc.compute(prediction_scores=probabilities[index], references=labels[index])["auroc"])
    return float(np.std(values))


# ---------------------------------------------------------------------------------------------------- summaries


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def summarise_acceleration(runs: list[dict]) -> list[dict]:
    """Per task and label fraction: MedNet's epoch to scratch's best against scratch's, over the seeds both ran
    (mean of each; `reached` counts the seeds where MedNet got there at all)."""
    by_key = {(r["task"], r["label_fraction"], r["seed"], r["init"]): r for r in runs}
    rows = []
    for task, fraction in sorted({(r["task"], r["label_fraction"]) for r in runs}):
        pairs = [(by_key[(task, fraction, seed, "mednet")], by_key[(task, fraction, seed, "scratch")])
                 for seed in sorted({r["seed"] for r in runs})
                 if (task, fraction, seed, "mednet") in by_key and (task, fraction, seed, "scratch") in by_key]
        found = [a for a in (acceleration(m["history"], s["history"]) for m, s in pairs) if a]
        if not found:
            continue
        reached = [a["mednet_epoch"] for a in found if a["mednet_epoch"] is not None]
        rows.append({"task": task, "label_fraction": fraction, "seeds": len(found), "reached": len(reached),
                     "scratch_epoch": float(np.mean([a["scratch_epoch"] for a in found])),
                     "mednet_epoch": float(np.mean(reached)) if reached else None,
                     "per_seed": found})
    return rows


def summarise(runs: list[dict]) -> list[dict]:
    """Mean ± std over seeds for each task, initialisation and label fraction."""
    groups = {}
    for run in runs:
        groups.setdefault((run["task"], run["domain"], run["init"], run["label_fraction"]), []).append(run)
    rows = []
    for (task, domain, init, fraction), members in sorted(groups.items()):
        row = {"task": task, "domain": domain, "init": init, "label_fraction": fraction, "seeds": len(members)}
        for key in ("test_auroc", "test_accuracy", "epochs_to_95"):
            values = [m[key] for m in members if m[key] is not None]
            row[key] = _mean_std(values) if values else None
        rows.append(row)
    return rows


def _cell(value) -> str:
    return "–" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}" if value[1] else f"{value[0]:.3f}"


def markdown(results: dict) -> str:
    lines = [f"# Transfer study: {results['study']['model']} ({results['study']['variant']})", "",
             f"{results['device']}; {len(results['runs'])} fine-tuning runs; {results['seconds']:.0f} s.", ""]
    if results.get("interrupted"):
        lines.append("**Interrupted:** only the runs below finished; the study is incomplete.")
    for init, why in results["skipped"].items():
        lines.append(f"- `{init}` skipped: {why}.")
    lines += ["", "## Fine-tuning (test split, mean ± std over seeds)", "",
              "| task | domain | init | labels | AUROC | accuracy | epochs to 95% of best val. AUROC |", "|---|---|---|---:|---:|---:|---:|"]
    for row in results["summary"]:
        lines.append(f"| {row['task']} | {row['domain']} | {row['init']} | {row['label_fraction']:.0%} | {_cell(row['test_auroc'])} | "
                     f"{_cell(row['test_accuracy'])} | {_cell(row['epochs_to_95'])} |")
    lines += ["", "## Frozen features (100% labels, test split; ± the bootstrap standard deviation over resampled test sets)", "",
              "| task | init | linear probe AUROC | kNN AUROC | linear probe acc. | kNN acc. |", "|---|---|---:|---:|---:|---:|"]

    def auroc(m: dict) -> str:
        spread = m.get("test_auroc_bootstrap_std")
        return f"{m['test_auroc']:.3f}" + (f" ± {spread:.3f}" if spread else "")

    for task, by_init in results["frozen"].items():
        for init, m in by_init.items():
            lines.append(f"| {task} | {init} | {auroc(m['linear_probe'])} | {auroc(m['knn'])} | "
                         f"{m['linear_probe']['test_accuracy']:.3f} | {m['knn']['test_accuracy']:.3f} |")
    if results.get("acceleration"):
        lines += ["", "## Convergence against scratch's best (validation AUROC)", "",
                  "Epoch at which scratch first reaches its best, and at which MedNet first reaches that same value "
                  "(mean over the seeds where it does).", "",
                  "| task | labels | scratch's best at epoch | MedNet reaches it at epoch | seeds where MedNet reaches it |",
                  "|---|---:|---:|---:|---:|"]
        for row in results["acceleration"]:
            mednet = "never" if row["mednet_epoch"] is None else f"{row['mednet_epoch']:.1f}"
            lines.append(f"| {row['task']} | {row['label_fraction']:.0%} | {row['scratch_epoch']:.1f} | {mednet} | "
                         f"{row['reached']} of {row['seeds']} |")
    if results["dense"]:
        lines += ["", "## Dense: DRIVE vessel segmentation (Dice on the 20 test images, inside the field of view)", "",
                  "| init | Dice | size | steps |", "|---|---:|---:|---:|"]
        lines += [f"| {init} | {d['dice']:.3f} | {d['size']} | {d['steps']} |" for init, d in results["dense"].items()]
    if results["study"]["published"]:
        lines += ["", "## Published numbers on the same test splits (not run here)", "", "| task | model | AUROC | accuracy | source |",
                  "|---|---|---:|---:|---|"]
        lines += [f"| {p['task']} | {p['model']} | {p['auroc']:.3f} | {p['accuracy']:.3f} | {p['source']} |" for p in results["study"]["published"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, output_dir: Path) -> list[Path]:
    """label_fractions.png (test AUROC vs label fraction, one panel per task) and convergence.png (validation AUROC
    per epoch, one panel per task and label fraction, every initialisation, the first seed)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    tasks = sorted({row["task"] for row in results["summary"]})
    domain = {row["task"]: row["domain"] for row in results["summary"]}
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for init in sorted({row["init"] for row in results["summary"]}):
            rows = [r for r in results["summary"] if r["task"] == task and r["init"] == init and r["test_auroc"]]
            x = [r["label_fraction"] for r in rows]
            mean = np.array([r["test_auroc"][0] for r in rows])
            std = np.array([r["test_auroc"][1] for r in rows])
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=init, color=COLORS.get(init))
        ax.set(xscale="log", title=f"{task} ({domain[task]} of domain)", xlabel="label fraction", ylabel="test AUROC")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    paths = [output_dir / "label_fractions.png"]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    # Validation AUROC per epoch for every task and label fraction (seed: the study's first): MedNet against scratch,
    # with scratch's best (dotted) and the epochs at which scratch and MedNet first reach it.
    panels = sorted({(r["task"], r["label_fraction"]) for r in results["runs"]})
    seed = min(results["study"]["seeds"])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (task, fraction) in zip(axes[0], panels):
        curves = {r["init"]: r["history"] for r in results["runs"]
                  if r["task"] == task and r["label_fraction"] == fraction and r["seed"] == seed}
        for init, history in sorted(curves.items()):
            ax.plot([h["epoch"] for h in history], [h["eval_auroc"] for h in history], marker=".", label=init,
                    color=COLORS.get(init))
        reached = acceleration(curves["mednet"], curves["scratch"]) if {"mednet", "scratch"} <= set(curves) else None
        if reached:
            ax.axhline(reached["scratch_best_auroc"], color="gray", linestyle=":", linewidth=1)
            ax.axvline(reached["scratch_epoch"], color="gray", linestyle=":", linewidth=1)
            if reached["mednet_epoch"] is not None:
                ax.axvline(reached["mednet_epoch"], color=COLORS["mednet"], linestyle="--", linewidth=1)
        ax.set(title=f"{task}, {fraction:.0%} labels, seed {seed}", xlabel="epoch", ylabel="validation AUROC")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    paths.append(output_dir / "convergence.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------------- the study


STUDIES = Path(__file__).resolve().parent / "configs"


def study_file(name) -> Path:
    """`gray`/`color`/`gray-3d` name the packaged studies (`configs/benchmark_<name>.yaml`); anything else is a path."""
    packaged = STUDIES / f"benchmark_{name}.yaml"
    return packaged if str(name) in ("gray", "color", "gray-3d") else Path(name)


def benchmark(study, output_dir, quick: bool = False, tasks: list[str] | None = None, image_size: int | None = None,
              **overrides) -> dict:
    """Run a study (`gray`, `color` or a study file); `tasks` keeps only the named tasks; `image_size` fine-tunes
    and probes every model at that size; `overrides` replace study keys (`model`, `seeds`, `inits`,
    `label_fractions`, ...). Writes and returns the results."""
    started = time.perf_counter()
    study_path = study_file(study)
    study = load_study(study_path, quick=quick, **overrides)
    if image_size:
        study.finetune["image_size"] = image_size
    if tasks:
        missing = sorted(set(tasks) - {t.name for t in study.tasks})
        if missing:
            raise ValueError(f"study {study_path} has no task(s) {missing}; it has {[t.name for t in study.tasks]}")
        study.tasks = [t for t in study.tasks if t.name in tasks]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    inits, skipped = prepare_inits(study, output_dir / "inits")
    for init, why in skipped.items():
        print(f"skipping init '{init}': {why}")
    plan = [(t, i, f, s) for t in study.tasks for i in inits for f in study.label_fractions for s in study.seeds]
    extra = len(study.tasks) * len(inits) + (len(inits) if study.dense else 0)
    runs, frozen, dense = [], {}, {}
    interrupted = False
    try:
        with tqdm(total=len(plan) + extra, desc="benchmark", unit="run") as progress:
            for task, init, fraction, seed in plan:
                progress.set_postfix_str(f"{task.name} {init} {fraction:.0%} seed {seed}")
                run_dir = output_dir / "runs" / f"{task.name}-{init}-{fraction:g}-seed{seed}"
                try:
                    runs.append(run_finetune(study, task, init, inits[init], fraction, seed, run_dir))
                finally:  # also when interrupted: its command rebuilds them, and optimizer states are large
                    for weights in [*run_dir.glob("checkpoint-*"), run_dir / "best"]:
                        shutil.rmtree(weights, ignore_errors=True)
                progress.update(1)
            for task in study.tasks:
                for init, model in inits.items():
                    progress.set_postfix_str(f"{task.name} {init} frozen features")
                    frozen.setdefault(task.name, {})[init] = frozen_features(study, task, model) | {
                        # what reproduces it: the study, narrowed to this task and initialisation (deterministic:
                        # the probe and kNN have no seed), from these weights
                        "command": _study_command(study_path, output_dir, quick, task.name, init, study),
                        "model": portable_path(str(model)), "weights_sha256": weights_sha256(model)}
                    progress.update(1)
            if study.dense:
                from .dense import drive_dice

                for init, model in inits.items():
                    progress.set_postfix_str(f"DRIVE {init}")
                    options = {k: v for k, v in study.dense.items() if k != "data_dir"}
                    dense[init] = drive_dice(model, resolve_data_dir(study.dense["data_dir"]), **options)
                    progress.update(1)
    except KeyboardInterrupt:  # Ctrl-C or a time limit's SIGINT: keep and report the runs that finished
        interrupted = True
        print(f"benchmark interrupted: writing the {len(runs)} finished run(s)")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    # records name folders as a reader can rerun them: under the repository, $HF_HOME or $MEDNET_DATA_DIR
    results = {"study": asdict(study) | {"model": portable_path(str(study.model))}, "study_file": portable_path(str(study_path)),
               "quick": quick, "device": device, "skipped": skipped,
               "interrupted": interrupted,
               "runs": runs, "summary": summarise(runs), "acceleration": summarise_acceleration(runs), "frozen": frozen, "dense": dense,
               "seconds": time.perf_counter() - started}
    (output_dir / "results.json").write_text(json.dumps(results, indent=1))
    (output_dir / "results.md").write_text(markdown(results))
    if runs:
        plot(results, output_dir)
    return results


__all__ = ["BenchmarkArguments", "Study", "Task", "acceleration", "benchmark", "epochs_to_reach", "load_study", "study_file", "summarise", "summarise_acceleration"]
