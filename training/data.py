"""Pretraining data: every source decoded once, through the package's one intensity path (`medical_transform` with
a `MedNetImageProcessor`), into a uint8 `(N, C, S, S)` tensor cached on disk, then held whole on the device.

Each step's rows are drawn from a generator seeded by (seed, step): the source by its sampling weight, then a row
of it uniformly. All processes draw the same global batch and each takes its own slice, so ranks see different
examples and a resumed run sees exactly the batches an uninterrupted one would. A source too big to hold
(`dataset: hub` with `streaming: true`) is not in the tensor: its rows in a batch are the next ones of this process's
part of the stream (`streaming.py`), whose state travels with each checkpoint.
"""

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

import mednet_hf
from mednet_hf import MedNetImageProcessor
from mednet_hf.data import load_medical_dataset, medical_transform
from mednet_hf.intensity import to_uint8

from .augment import step_generator
from .recipe import Recipe, Source, resolve_data_dir
from .streaming import StreamedSource, open_stream

logger = logging.getLogger(__name__)
ROW_STRIDE = 10**9  # example id = source index * ROW_STRIDE + row: stable across runs, names a row in the order log
DECODE_BATCH = 256


def cache_root(recipe: Recipe) -> Path:
    return Path(recipe.cache_dir) if recipe.cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "mednet_pretrain"


def cache_processor(recipe: Recipe) -> MedNetImageProcessor:
    """The one rows → [0, 1] pixels path, at the recipe's size and variant; normalisation comes after augmenting.
    For MedNet-3D, whole volumes at the recipe's voxel spacing (sub-volumes are drawn from them at each step)."""
    if recipe.spatial_dims == 3:
        return MedNetImageProcessor(variant=recipe.variant, slice_policy="volume", spacing=list(recipe.volume_spacing),
                                    do_normalize=False)
    return MedNetImageProcessor(variant=recipe.variant, image_size=recipe.image_size, do_normalize=False)


def cache_key(source: Source, recipe: Recipe) -> str:
    """What the cached pixels depend on: the source's data, the decoded size and variant (and every other processor
    setting), and the package version, which fixes the intensity convention's code. Sampling and loss weights, names
    and whether labels are used are not part of it."""
    spec = {
        "dataset": source.dataset, "config": source.config, "size": source.size, "options": source.options,
        "verification_mode": source.verification_mode,
        "data_dir": str(Path(resolve_data_dir(source.data_dir)).resolve()) if source.data_dir else None,
        "image_size": recipe.image_size, "variant": recipe.variant, "version": mednet_hf.__version__,
        "processor": json.loads(cache_processor(recipe).to_json_string()),
    }
    if source.dataset == "hub":  # a branch moves: key on the data datasets downloaded (its own fingerprint)
        spec |= {"repo_id": source.repo_id, "revision": source.revision, "fingerprint": _train_split(source)._fingerprint}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def _train_split(source: Source) -> datasets.Dataset:
    if source.dataset == "hub":
        try:
            return datasets.load_dataset(source.repo_id, source.config, revision=source.revision, split="train")
        except Exception as e:  # offline, no such repo, no train split: all end the same way
            raise ValueError(f"source {source.name!r}: the train split of {source.repo_id!r} cannot be loaded "
                             f"({type(e).__name__}: {e})") from e
    return load_medical_dataset(
        source.dataset, source.config, resolve_data_dir(source.data_dir), size=source.size,
        verification_mode=source.verification_mode, **source.options,
    )["train"]


def _decode_volumes(split, recipe: Recipe) -> torch.Tensor:
    """Volume rows → one flat uint8 buffer of every volume at the recipe's spacing, in [0, 1] by the convention (the
    processor's volume path, uncropped and unnormalised), and their shapes `(N, 4)`."""
    from mednet_hf.data import row_to_medical_volume
    from mednet_hf.volumes import volume_pixel_values

    processor = cache_processor(recipe)
    flat, shapes = [], []
    for start in range(0, split.num_rows, 8):
        batch = split[start : start + 8]
        for i in range(len(batch["volume"])):
            unit = volume_pixel_values(row_to_medical_volume(batch, i), size=None, num_channels=processor.num_channels,
                                       image_mean=[0.0] * processor.num_channels, image_std=[1.0] * processor.num_channels,
                                       spacing=processor.spacing, intensity=processor.intensity, window=processor.window,
                                       percentiles=processor.percentiles)
            flat.append(to_uint8(unit).flatten())
            shapes.append(list(unit.shape))
    return torch.cat(flat), torch.tensor(shapes, dtype=torch.long)


def _decode(source: Source, recipe: Recipe) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A source's train split → uint8 images, class labels (-1 where there are none) and its label metadata
    (MedNet-3D: every volume in one flat buffer, with their `shapes`)."""
    split = _train_split(source)
    metadata = _label_metadata(split.features)
    names = json.loads(metadata["classes"])
    labels = torch.tensor(split["label"], dtype=torch.long) if names else torch.full((split.num_rows,), -1, dtype=torch.long)
    if recipe.spatial_dims == 3:
        if "volume" not in split.features:
            raise ValueError(f"source {source.name!r}: MedNet-3D needs volumes (an image folder with options: "
                             "{volumes: true}, or a MedMNIST-3D config), its rows hold {sorted(split.features)}")
        images, shapes = _decode_volumes(split, recipe)
        return {"images": images, "labels": labels, "shapes": shapes}, metadata
    # Labels are read from the column above; the transform only makes pixels.
    pixels_only = split.remove_columns([c for c in ("label", "labels") if c in split.column_names])
    rows = pixels_only.with_transform(medical_transform(cache_processor(recipe), pixels_only.features))
    batches = BatchSampler(SequentialSampler(range(rows.num_rows)), DECODE_BATCH, drop_last=False)
    loader = DataLoader(rows, sampler=batches, batch_size=None, num_workers=recipe.num_workers)
    images = torch.cat([to_uint8(batch["pixel_values"]) for batch in loader])
    return {"images": images, "labels": labels}, metadata


def cache_path(source: Source, recipe: Recipe) -> Path:
    return cache_root(recipe) / f"{cache_key(source, recipe)}.safetensors"


def _read_entry(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """A complete cache entry, or None: absent, or unreadable (a damaged file is rebuilt, not trained on)."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata()
        tensors = load_file(path)
        if "shapes" in tensors:  # volumes: one flat buffer of every volume, their shapes, their labels
            if set(tensors) != {"images", "labels", "shapes"} or len(tensors["shapes"]) != len(tensors["labels"]) \
                    or int(tensors["shapes"].prod(dim=1).sum()) != len(tensors["images"]) or metadata is None:
                raise ValueError(f"holds {sorted(tensors)}: the volumes' shapes and the buffer disagree")
        elif set(tensors) != {"images", "labels"} or len(tensors["images"]) != len(tensors["labels"]) or metadata is None:
            raise ValueError(f"holds {sorted(tensors)} with {[len(t) for t in tensors.values()]} rows")
    except Exception as e:  # truncated, overwritten, not safetensors: all mean "build it again"
        logger.warning("%s: cache entry unreadable (%s: %s); decoding the source again", path, type(e).__name__, e)
        return None
    return tensors, metadata


def write_entry(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The one cache writer: a temporary file of this process, renamed into place, so that no process ever reads a
    half-written entry under its key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_source(source: Source, recipe: Recipe) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The cached tensors of a source, decoding (and caching) them on first use. Runs that start together on one
    cache folder decode each source once: the first takes the entry's file lock, the others wait and read."""
    path = cache_path(source, recipe)
    entry = _read_entry(path)
    if entry is not None:
        return entry
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        entry = _read_entry(path)  # another run may have written it while this one waited
        if entry is None:
            entry = _decode(source, recipe)
            write_entry(path, *entry)
    return entry


def _label_metadata(features: datasets.Features) -> dict[str, str]:
    label = features.get("label")
    names = list(label.names) if isinstance(label, datasets.ClassLabel) else None
    return {"classes": json.dumps(names), "multi_label": json.dumps("labels" in features)}


def _classes(source: Source, metadata: dict[str, str]) -> int | None:
    """The number of classes of a labelled source (None if unlabelled), checked against the recipe."""
    if not source.labelled:
        return None
    if json.loads(metadata["multi_label"]):
        raise ValueError(f"source {source.name!r} is multi-label; the supervised objective takes single-label "
                         "sources (set labelled: false to use its images without labels)")
    names = json.loads(metadata["classes"])
    if not names:
        raise ValueError(f"source {source.name!r} has no class labels; set labelled: false to use it unlabelled")
    if source.num_classes is not None and source.num_classes != len(names):
        raise ValueError(f"source {source.name!r}: the recipe says num_classes={source.num_classes} but the dataset "
                         f"has {len(names)} classes {names}")
    return len(names)


@dataclass
class PretrainingData:
    """All held sources in one tensor: `images (N, C, S, S)` uint8, `labels` and `sources` `(N,)`; streamed sources
    (`streams`, by source index) hold no rows here."""

    images: torch.Tensor
    labels: torch.Tensor
    sources: torch.Tensor
    offsets: torch.Tensor  # first row of each source
    counts: torch.Tensor  # rows of each source (0 for a streamed one)
    weights: torch.Tensor  # sampling probability of each source
    classes: list  # per source: number of classes, or None if unlabelled
    streams: dict[int, StreamedSource] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device, max_fraction: float = 0.5) -> "PretrainingData":
        """Move the tensors to `device` when the images take at most `max_fraction` of its free memory; otherwise
        keep them in pinned host memory, from which each batch is gathered and copied asynchronously."""
        device = torch.device(device)
        if device.type == "cpu":
            return self
        fits = device.type != "cuda" or self.images.nbytes <= max_fraction * torch.cuda.mem_get_info(device)[0]
        images = self.images.to(device) if fits else self.images.pin_memory()
        return PretrainingData(images, self.labels.to(device), self.sources.to(device), self.offsets, self.counts,
                               self.weights, self.classes, self.streams)

    def sample(self, seed: int, batch: int, size: int) -> torch.Tensor:
        """Row indices `(size,)` of global batch number `batch`, on the CPU: the same on every process and device.
        A row of streamed source `s` is `-(s + 1)`: the next row of this process's part of that stream."""
        generator = step_generator(seed, batch, 0, stream="batch")
        source = torch.multinomial(self.weights, size, replacement=True, generator=generator)
        row = (torch.rand(size, generator=generator, dtype=torch.float64) * self.counts[source]).long()
        index = self.offsets[source] + row
        if self.streams:
            streamed = torch.zeros(len(self.counts), dtype=torch.bool)
            streamed[list(self.streams)] = True
            index = torch.where(streamed[source], -(source + 1), index)
        return index

    def source_of(self, index: torch.Tensor) -> torch.Tensor:
        """The source of each row index that `sample` gave (streamed rows included)."""
        held = torch.searchsorted(self.offsets, index.clamp_min(0), right=True) - 1
        return torch.where(index < 0, -index - 1, held)

    def batch(self, index: torch.Tensor, device: torch.device, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Images, labels and sources of rows `index` (CPU), on `device`, without waiting for it; and `ids`, the
        rows' stable ids (source * ROW_STRIDE + row; for a streamed row, + this process's count of rows taken from
        that stream) for the data-order log."""
        if not self.streams:
            return self._held(index, device) | {"ids": self._held_ids(index)}
        held = index >= 0
        out = self._held(index[held], device)
        n = len(index)
        images = torch.empty((n, *self.images.shape[1:]), dtype=torch.uint8, device=device)
        labels = torch.empty(n, dtype=torch.long, device=device)
        sources, ids = torch.empty(n, dtype=torch.long, device=device), torch.empty(n, dtype=torch.long)
        positions = held.nonzero().squeeze(1)
        images[positions.to(device)], labels[positions.to(device)] = out["images"], out["label"]
        sources[positions.to(device)], ids[positions] = out["source"], self._held_ids(index[held])
        for s, stream in self.streams.items():
            positions = (index == -(s + 1)).nonzero().squeeze(1)
            if len(positions):
                rows, row_labels, row_ids = stream.take(len(positions))
                on_device = positions.to(device)
                images[on_device] = rows.to(device, non_blocking=True)
                labels[on_device], sources[on_device] = row_labels.to(device, non_blocking=True), s
                ids[positions] = s * ROW_STRIDE + row_ids
        return {"images": images, "label": labels, "source": sources, "ids": ids}

    def _held_ids(self, index: torch.Tensor) -> torch.Tensor:
        source = torch.searchsorted(self.offsets, index, right=True) - 1
        return source * ROW_STRIDE + index - self.offsets[source]

    def _held(self, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        on_device = index.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else index
        if self.images.device.type == device.type:
            images = self.images[on_device]
        else:  # pinned host copy: gather on the host, copy asynchronously
            images = self.images[index].pin_memory().to(device, non_blocking=True)
        return {"images": images, "label": self.labels[on_device], "source": self.sources[on_device]}

    def state_dict(self) -> dict:
        """Where each stream is (by source index): what a checkpoint needs beyond the step for an exact resume."""
        return {str(s): stream.state_dict() for s, stream in self.streams.items()}

    def load_state_dict(self, state: dict) -> None:
        for s, stream in self.streams.items():
            if str(s) not in state:
                raise ValueError(f"the checkpoint has no state for streamed source {stream.name!r}")
            stream.load_state_dict(state[str(s)])

    def close(self) -> None:
        for stream in self.streams.values():
            stream.close()


def _stream(source: Source, recipe: Recipe, rank: int, world: int) -> tuple[StreamedSource, dict[str, str]]:
    stream, revision = open_stream(source.name, source.repo_id, source.config, source.revision)
    make_transform = lambda features: medical_transform(cache_processor(recipe), features)  # noqa: E731
    streamed = StreamedSource(stream, source.name, make_transform, source.labelled, recipe.seed, rank, world,
                              recipe.stream_chunk_rows, revision)
    return streamed, _label_metadata(stream.features)


@dataclass
class PretrainingVolumes:
    """MedNet-3D's sources: whole volumes `(C, D, H, W)` uint8 at the recipe's spacing, held as they are; each step
    draws volumes as `PretrainingData` draws rows (source by weight, then a volume uniformly) and a random
    sub-volume of side `crop` in each (zero-padded where a volume is smaller)."""

    volumes: list
    labels: torch.Tensor
    sources: torch.Tensor
    offsets: torch.Tensor
    counts: torch.Tensor
    weights: torch.Tensor
    classes: list
    crop: int
    streams: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.volumes)

    def to(self, device: torch.device) -> "PretrainingVolumes":
        moved = [v.to(device) for v in self.volumes]
        return PretrainingVolumes(moved, self.labels.to(device), self.sources.to(device), self.offsets, self.counts,
                                  self.weights, self.classes, self.crop)

    sample = PretrainingData.sample
    source_of = PretrainingData.source_of
    _held_ids = PretrainingData._held_ids

    def batch(self, index: torch.Tensor, device: torch.device, generator: torch.Generator | None = None) -> dict:
        crops = []
        corners = torch.rand(len(index), 3, generator=generator, dtype=torch.float64)
        for i, corner in zip(index.tolist(), corners):
            volume = self.volumes[i]
            spatial = torch.tensor(volume.shape[1:])
            start = ((spatial - self.crop).clamp_min(0) * corner).long().tolist()
            block = volume[:, start[0]: start[0] + self.crop, start[1]: start[1] + self.crop, start[2]: start[2] + self.crop]
            pad = [v for side in reversed(block.shape[1:]) for v in (0, self.crop - side)]
            crops.append(torch.nn.functional.pad(block, pad) if any(pad) else block)
        on_device = index.to(device)
        return {"images": torch.stack(crops).to(device), "label": self.labels[on_device],
                "source": self.sources[on_device], "ids": self._held_ids(index)}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _pretraining_volumes(recipe: Recipe) -> PretrainingVolumes:
    volumes, labels, sources, counts, classes = [], [], [], [], []
    for index, source in enumerate(recipe.sources):
        tensors, metadata = load_source(source, recipe)
        shapes = tensors["shapes"].tolist()
        if not shapes:
            raise ValueError(f"source {source.name!r} has no volumes in its train split")
        pieces = tensors["images"].split([int(torch.tensor(shape).prod()) for shape in shapes])
        volumes += [piece.view(*shape) for piece, shape in zip(pieces, shapes)]
        classes.append(_classes(source, metadata))
        labels.append(tensors["labels"] if classes[-1] else torch.full_like(tensors["labels"], -1))
        sources.append(torch.full_like(labels[-1], index))
        counts.append(len(shapes))
    counts = torch.tensor(counts)
    weights = torch.tensor([source.weight for source in recipe.sources], dtype=torch.float64)
    return PretrainingVolumes(volumes, torch.cat(labels), torch.cat(sources), torch.cumsum(counts, 0) - counts, counts,
                              weights / weights.sum(), classes, recipe.image_size)


def pretraining_data(recipe: Recipe, rank: int = 0, world: int = 1) -> "PretrainingData | PretrainingVolumes":
    """Every source of the recipe, decoded (or read from the cache) and validated, in one `PretrainingData`;
    streamed sources are opened for process `rank` of `world`. MedNet-3D recipes get `PretrainingVolumes`."""
    if recipe.spatial_dims == 3:
        return _pretraining_volumes(recipe)
    parts, classes, streams = [], [], {}
    channels = 1 if recipe.variant == "gray" else 3
    empty = torch.empty((0, channels, recipe.image_size, recipe.image_size), dtype=torch.uint8)
    for index, source in enumerate(recipe.sources):
        if source.streaming:
            streams[index], metadata = _stream(source, recipe, rank, world)
            tensors = {"images": empty, "labels": torch.empty(0, dtype=torch.long)}
        else:
            tensors, metadata = load_source(source, recipe)
            if not len(tensors["images"]):
                raise ValueError(f"source {source.name!r} has no images in its train split")
        classes.append(_classes(source, metadata))
        labels = tensors["labels"] if classes[-1] else torch.full_like(tensors["labels"], -1)
        parts.append((tensors["images"], labels, torch.full_like(labels, index)))
    images, labels, sources = (torch.cat(column) for column in zip(*parts))
    counts = torch.tensor([len(part[0]) for part in parts])
    weights = torch.tensor([source.weight for source in recipe.sources], dtype=torch.float64)
    return PretrainingData(images, labels, sources, torch.cumsum(counts, 0) - counts, counts, weights / weights.sum(),
                           classes, streams)


__all__ = ["PretrainingData", "PretrainingVolumes", "cache_key", "cache_path", "cache_processor", "load_source", "pretraining_data", "write_entry"]
