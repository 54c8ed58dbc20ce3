"""Pretraining recipes: a YAML file → a validated `Recipe`. Everything wrong with a recipe is reported here,
before any data is read or any step is taken."""

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml



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
    image_size: int = field(default=224, metadata={"help": "training resolution in pixels (the first, with image_size_schedule); "
                                                          "for MedNet-3D the side of the sub-volumes drawn"})
    spatial_dims: int = field(default=2, metadata={"help": "2, or 3: MedNet-3D on sub-volumes of the sources' volumes"})
    conversion: str | None = field(default=None, metadata={"help": "MedNet-3D's conversion of the 2-D network: acs, i3d or 2.5d"})
    volume_spacing: list = field(
        default_factory=lambda: [2.0, 2.0, 2.0],
        metadata={"help": "MedNet-3D: the voxel spacing (mm) volumes are resampled to before sub-volumes are drawn, as JSON"},
    )
    image_size_schedule: list = field(
        default_factory=list,
        metadata={"help": "progressive resizing: [[step, size], ...], each size from that step on, as JSON, e.g. '[[1800, 64]]'"},
    )
    init: str = field(
        default="scratch",
        metadata={"help": "scratch; imagenet: timm's ImageNet weights (needs the network once); or a MedNet checkpoint "
                          "(folder or Hub id, e.g. mednet/gray) whose backbone weights start the run (a warm restart)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the data order, the views and the initialisation"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=64, metadata={"help": "images per step and process"})
    grad_accum: int = field(default=1, metadata={"help": "batches accumulated per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW, cosine schedule)"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    cycle_steps: int = field(
        default=0,
        metadata={"help": "0: one cosine decay over all steps; N: a cosine decay over every N steps after the warm-up "
                          "(warm restarts), so a run can be stopped at the end of any cycle with annealed weights and "
                          "resumed with a larger --steps"},
    )
    clip_grad_norm: float = field(
        default=3.0,
        metadata={"help": "clip the gradients' total norm to this (0: no clipping); a step whose gradients are not "
                          "finite is skipped either way"},
    )
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 where the device computes it natively and the "
                                                                    "run's sizes gain from it, see `pretrain.auto_precision`), "
                                                                    "no, bf16 or fp16 (GPUs)"})
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model step"})
    num_workers: int = field(default=0, metadata={"help": "processes that decode the sources into the uint8 cache (first run only)"})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "where each source's decoded uint8 images are cached (default: <datasets cache>/mednet_pretrain)"},
    )
    checkpoint_every: int = field(default=500, metadata={"help": "steps between atomic checkpoints"})
    collective_timeout: int = field(
        default=300,
        metadata={"help": "seconds a process waits for the others (several processes or nodes) before it stops with "
                          "an error naming the step; torch's default is 30 minutes"},
    )
    keep_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept on disk"})
    log_every: int = field(default=10, metadata={"help": "steps between logged losses"})
    stream_chunk_rows: int = field(
        default=4096, metadata={"help": "rows each process decodes at a time from a streamed source (a chunk is shuffled)"},
    )
    sources: list[Source] = field(default_factory=list)
    objectives: dict[str, dict] = field(default_factory=dict)  # name -> {"weight": w, ...options}

    def to_dict(self) -> dict:
        return asdict(self)

    def size_at(self, step: int) -> int:
        """The training resolution of optimizer step `step` (counted from 0)."""
        size = self.image_size
        for start, scheduled in self.image_size_schedule:
            if step >= start:
                size = scheduled
        return size

    @property
    def image_sizes(self) -> list[int]:
        """Every resolution the run trains at, in order; the last is the one the release is exported for."""
        return list(dict.fromkeys([self.image_size, *(size for _, size in self.image_size_schedule)]))


def _fail(path, message: str):
    raise ValueError(f"recipe {path}: {message}")


def _read(path, seen: tuple = ()) -> dict:
    """A recipe file's keys; `extends: <file>` (relative to the file) takes another recipe's keys first, and this
    file's top-level keys replace them (an `objectives:` or `sources:` block is replaced whole)."""
    path = Path(path)
    if not path.is_file():
        _fail(path, "no such file" + (f" (named by extends: in {seen[-1]})" if seen else ""))
    if path.resolve() in seen:
        _fail(path, f"extends: makes a loop ({' -> '.join(str(p) for p in (*seen, path.resolve()))})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        _fail(path, f"not valid YAML ({e})")
    if not isinstance(raw, dict):
        _fail(path, f"a recipe is a mapping of keys, got {type(raw).__name__}")
    base = raw.pop("extends", None)
    return {**_read(path.parent / base, (*seen, path.resolve())), **raw} if base else raw


def load_recipe(path, **overrides) -> Recipe:
    """Read and check a recipe; `overrides` (e.g. steps=10 from the command line) replace top-level keys."""
    from mednet_hf.data import BUILDERS

    from .objectives import OBJECTIVES  # the registry: a new objective is one class plus one entry there

    raw = _read(path)
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
        _fail(path, f"no objectives: choose from {sorted(OBJECTIVES)}")
    for name, options in recipe.objectives.items():
        if name not in OBJECTIVES:
            _fail(path, f"unknown objective {name!r}; choose from {sorted(OBJECTIVES)}")
        if not isinstance(options, dict):
            recipe.objectives[name] = {"weight": float(options)}
    if "supervised" in recipe.objectives and not any(s.labelled for s in recipe.sources):
        _fail(path, "the supervised objective needs at least one labelled source")
    if not isinstance(recipe.init, str) or not recipe.init:
        _fail(path, f"init must be scratch, imagenet or a MedNet checkpoint (folder or Hub id), got {recipe.init!r}")
    if recipe.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        _fail(path, f"mixed_precision must be auto, no, bf16 or fp16, got {recipe.mixed_precision!r}")
    schedule = recipe.image_size_schedule
    if not all(isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(v, int) and v > 0 for v in e) for e in schedule) \
            or [e[0] for e in schedule] != sorted({e[0] for e in schedule}):
        _fail(path, f"image_size_schedule takes [[step, size], ...] with positive integers and increasing steps, got {schedule!r}")
    recipe.image_size_schedule = [list(e) for e in schedule]
    if schedule and any(s.streaming for s in recipe.sources):
        _fail(path, "image_size_schedule cannot be used with streamed sources (they are decoded at one size)")
    if recipe.spatial_dims not in (2, 3):
        _fail(path, f"spatial_dims must be 2 or 3, got {recipe.spatial_dims!r}")
    if recipe.spatial_dims == 3:
        recipe.conversion = recipe.conversion or "acs"
        if recipe.conversion not in ("acs", "i3d", "2.5d"):
            _fail(path, f"conversion must be acs, i3d or 2.5d, got {recipe.conversion!r}")
        # sub-volumes are drawn from whole volumes held in memory, so every source is read in full, at one size
        if schedule or any(s.streaming for s in recipe.sources):
            _fail(path, "MedNet-3D pretrains at one size on sources of volumes held in memory (image folders with "
                        "volumes: true, MedMNIST-3D configs), neither streamed nor with an image_size_schedule")
        if "contrastive" in recipe.objectives:
            _fail(path, "the contrastive objective's multi-crop views are 2-D only; MedNet-3D takes restoration and supervised")
        spacing = recipe.volume_spacing
        if not (isinstance(spacing, list) and len(spacing) == 3 and all(isinstance(v, (int, float)) and v > 0 for v in spacing)):
            _fail(path, f"volume_spacing takes three positive numbers (mm), got {spacing!r}")
    for key in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every", "stream_chunk_rows",
                "image_size", "collective_timeout"):
        value = getattr(recipe, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(path, f"{key} must be a whole number of at least 1, got {value!r}")
    for key in ("warmup_steps", "cycle_steps"):
        value = getattr(recipe, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            _fail(path, f"{key} must be a whole number of at least 0, got {value!r}")
    if not isinstance(recipe.clip_grad_norm, (int, float)) or recipe.clip_grad_norm < 0:
        _fail(path, f"clip_grad_norm must be a number of at least 0, got {recipe.clip_grad_norm!r}")
    if not isinstance(recipe.lr, (int, float)) or not recipe.lr > 0:
        _fail(path, f"lr must be a positive number, got {recipe.lr!r}")
    if recipe.variant not in ("gray", "color"):
        _fail(path, f"variant must be 'gray' or 'color', got {recipe.variant!r}")
    return recipe


def resolve_data_dir(data_dir: str | None) -> str | None:
    """Relative source paths live under MEDNET_DATA_DIR (default ../shared/data from the working directory)."""
    if data_dir is None or os.path.isabs(data_dir):
        return data_dir
    return str(Path(os.environ.get("MEDNET_DATA_DIR", "../shared/data")) / data_dir)
