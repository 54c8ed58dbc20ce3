"""Pretraining recipes: a YAML file → a validated `Recipe`. Everything wrong with a recipe is reported here,
before any data is read or any step is taken."""

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

OBJECTIVES = ("supervised", "contrastive", "restoration")


@dataclass
class Source:
    """One dataset the pretraining mixes in (its `train` split)."""

    name: str
    dataset: str  # a `mednet_hf.data.BUILDERS` name, or "hub": a dataset repo with parquet files (`repo_id`)
    config: str | None = None  # MedMNIST subset, or the Hub dataset's config
    repo_id: str | None = None  # dataset: hub only
    revision: str | None = None  # dataset: hub only: branch, tag or commit
    streaming: bool = False  # dataset: hub only: stream it (each process reads its part) instead of holding it
    data_dir: str | None = None  # relative paths are under MEDNET_DATA_DIR
    size: int | None = None
    options: dict = field(default_factory=dict)
    verification_mode: str | None = None
    labelled: bool = True
    num_classes: int | None = None  # if given, checked against the dataset before training
    weight: float = 1.0  # sampling weight in the mixed stream
    loss_weight: float = 1.0  # weight of this source's supervised loss


@dataclass
class Recipe:
    variant: str = field(default="gray", metadata={"help": "gray (1 channel) or color (3 channels)"})
    backbone: str = field(default="resnet50", metadata={"help": "timm architecture, e.g. resnet18"})
    image_size: int = field(default=224, metadata={"help": "training resolution in pixels"})
    init: str = field(default="scratch", metadata={"help": "scratch, or imagenet: timm's ImageNet weights (needs the network once)"})
    seed: int = field(default=0, metadata={"help": "seed of the data order, the views and the initialisation"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=64, metadata={"help": "images per step and process"})
    grad_accum: int = field(default=1, metadata={"help": "batches accumulated per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW, cosine schedule)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 (GPUs)"})
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model step"})
    num_workers: int = field(default=0, metadata={"help": "processes that decode the sources into the uint8 cache (first run only)"})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "where each source's decoded uint8 images are cached (default: <datasets cache>/mednet_pretrain)"},
    )
    checkpoint_every: int = field(default=500, metadata={"help": "steps between atomic checkpoints"})
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept on disk"})
    log_every: int = field(default=10, metadata={"help": "steps between logged losses"})
    stream_chunk_rows: int = field(
        default=4096, metadata={"help": "rows each process decodes at a time from a streamed source (a chunk is shuffled)"},
    )
    sources: list[Source] = field(default_factory=list)
    objectives: dict[str, dict] = field(default_factory=dict)  # name -> {"weight": w, ...options}

    def to_dict(self) -> dict:
        return asdict(self)


def _fail(path, message: str):
    raise ValueError(f"recipe {path}: {message}")


def load_recipe(path, **overrides) -> Recipe:
    """Read and check a recipe; `overrides` (e.g. steps=10 from the command line) replace top-level keys."""
    from mednet_hf.data import BUILDERS

    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(Recipe)}
    unknown = sorted(set(raw) - known)
    if unknown:
        _fail(path, f"unknown key(s) {unknown}; known: {sorted(known)}")
    source_keys = {f.name for f in fields(Source)}
    sources = []
    for i, item in enumerate(raw.pop("sources", []) or []):
        bad = sorted(set(item) - source_keys)
        if bad:
            _fail(path, f"source {i} has unknown key(s) {bad}; known: {sorted(source_keys)}")
        if "name" not in item or "dataset" not in item:
            _fail(path, f"source {i} needs a name and a dataset")
        if item["dataset"] not in (*BUILDERS, "hub"):
            _fail(path, f"source {item['name']!r} names unknown dataset {item['dataset']!r}; choose one of {sorted(BUILDERS)} or hub")
        source = Source(**item)
        if (source.dataset == "hub") != bool(source.repo_id):
            _fail(path, f"source {source.name!r}: a repo_id goes with dataset: hub, and dataset: hub needs one")
        hub_only = [key for key in ("revision", "streaming") if getattr(source, key)]
        if source.dataset != "hub" and hub_only:
            _fail(path, f"source {source.name!r}: {hub_only} only apply to dataset: hub")
        local_only = [key for key in ("data_dir", "size", "options", "verification_mode") if getattr(source, key)]
        if source.dataset == "hub" and local_only:
            _fail(path, f"source {source.name!r}: {local_only} do not apply to dataset: hub")
        sources.append(source)
    recipe = Recipe(**raw, sources=sources)
    if not recipe.sources:
        _fail(path, "no sources: list at least one dataset under `sources:`")
    if not recipe.objectives:
        _fail(path, f"no objectives: choose from {OBJECTIVES}")
    for name, options in recipe.objectives.items():
        if name not in OBJECTIVES:
            _fail(path, f"unknown objective {name!r}; choose from {OBJECTIVES}")
        if not isinstance(options, dict):
            recipe.objectives[name] = {"weight": float(options)}
    if "supervised" in recipe.objectives and not any(s.labelled for s in recipe.sources):
        _fail(path, "the supervised objective needs at least one labelled source")
    if recipe.init not in ("scratch", "imagenet"):
        _fail(path, f"init must be 'scratch' or 'imagenet', got {recipe.init!r}")
    if recipe.stream_chunk_rows < 1:
        _fail(path, f"stream_chunk_rows must be at least 1, got {recipe.stream_chunk_rows}")
    if recipe.variant not in ("gray", "color"):
        _fail(path, f"variant must be 'gray' or 'color', got {recipe.variant!r}")
    return recipe


def resolve_data_dir(data_dir: str | None) -> str | None:
    """Relative source paths live under MEDNET_DATA_DIR (default ../shared/data from the working directory)."""
    if data_dir is None or os.path.isabs(data_dir):
        return data_dir
    return str(Path(os.environ.get("MEDNET_DATA_DIR", "../shared/data")) / data_dir)
