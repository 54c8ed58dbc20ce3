"""A pretraining source too big to hold: a dataset on the Hub (its parquet files) streamed with `datasets`.

Each process reads its own part (`datasets.distributed.split_dataset_by_node`: whole parquet files per process when
their number divides evenly, every `world`-th row otherwise). Rows are decoded through the package's one intensity
path in chunks of `chunk_rows` into pinned uint8 tensors; the next chunk is decoded in a background thread while the
current one is used. Each chunk is shuffled by a generator seeded by (seed, rank, chunk), and the stream restarts at
its end (the next epoch). Not `IterableDataset.shuffle`: its `state_dict` leaves the shuffle buffer out, so a resumed
run would read other rows than an uninterrupted one.

A killed run resumes exactly: a checkpoint stores, per process, the stream's own `state_dict` at the start of the
chunk in use and the position in that chunk.
"""

import copy
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import datasets
import torch
from datasets.distributed import split_dataset_by_node

from mednet_hf.intensity import to_uint8

from .augment import step_generator

DECODE_BATCH = 256


def open_stream(name: str, repo_id: str, config: str | None = None,
                revision: str | None = None) -> tuple[datasets.IterableDataset, str | None]:
    """The `train` split of a Hub dataset (or a local folder `load_dataset` reads), as a stream, read at one commit:
    a branch that moves during a run must not change the rows a resumed run reads. Returns the stream and that
    commit (None for a local folder)."""
    try:
        if not Path(repo_id).is_dir():
            from huggingface_hub import HfApi

            revision = HfApi().dataset_info(repo_id, revision=revision).sha
        stream = datasets.load_dataset(repo_id, config, revision=revision, split="train", streaming=True)
    except Exception as e:  # offline, no such repo, no train split: all end the same way
        raise ValueError(f"streamed source {name!r} ({repo_id!r}): its train split cannot be opened "
                         f"({type(e).__name__}: {e})") from e
    if stream.features is None or "image" not in stream.features:
        found = list(stream.features) if stream.features else "unknown (no dataset_info in the card)"
        raise ValueError(f"streamed source {name!r} ({repo_id!r}) needs an `image` column; its columns are {found}")
    return stream, revision


class StreamedSource:
    """Rows of one streamed source for one process: `take(n)` → uint8 images, labels and row ids.

    `make_transform(features)` returns the batch transform (rows → `pixel_values` in [0, 1]); `labelled` keeps the
    `label` column (class indices), otherwise every label is -1.
    """

    def __init__(self, stream: datasets.IterableDataset, name: str, make_transform: Callable, labelled: bool,
                 seed: int, rank: int, world: int, chunk_rows: int, revision: str | None = None):
        if chunk_rows < 1:
            raise ValueError(f"streamed source {name!r}: chunk_rows must be at least 1, got {chunk_rows}")
        self.name, self.labelled, self.seed, self.rank, self.world = name, labelled, seed, rank, world
        self.chunk_rows, self.revision = chunk_rows, revision
        self._stop = threading.Event()  # set by close(): the reading thread stops between rows
        self.dataset = split_dataset_by_node(stream, rank=rank, world_size=world)
        pixels = stream.features.copy()
        for column in ("label", "labels"):
            pixels.pop(column, None)
        self._transform = make_transform(pixels)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"stream-{name}")
        self._epoch, self._rows_in_epoch, self._iterator = 0, 0, None
        self._chunk_index = 0
        self._current: dict | None = None  # the chunk in use: its start state, tensors and first row id
        self._position = 0
        self._taken = 0  # rows this process has taken from the stream: the id of the next one
        self._next: Future | None = None

    # ------------------------------------------------------------------------------------------ reading

    def _start_epoch(self, epoch: int, state: dict | None = None) -> None:
        self._epoch, self._rows_in_epoch = epoch, 0
        self.dataset.set_epoch(epoch)
        if state is not None:
            self.dataset.load_state_dict(state["dataset"])
            self._rows_in_epoch = state["rows_in_epoch"]
        self._iterator = iter(self.dataset)

    def _start_state(self) -> dict:
        """Where the next chunk begins; `dataset` is None at an epoch's first row (nothing has been read yet)."""
        dataset = copy.deepcopy(self.dataset.state_dict()) if self._rows_in_epoch else None
        return {"epoch": self._epoch, "rows_in_epoch": self._rows_in_epoch, "dataset": dataset}

    def _read(self, n: int) -> list[dict]:
        rows, restarted = [], False
        while len(rows) < n:
            if self._stop.is_set():
                raise RuntimeError(f"streamed source {self.name!r} was closed")
            try:
                rows.append(next(self._iterator))
                self._rows_in_epoch += 1
                restarted = False
            except StopIteration:
                if restarted:  # a whole epoch gave nothing
                    raise ValueError(f"streamed source {self.name!r} has no rows for process {self.rank} of "
                                     f"{self.world}") from None
                self._start_epoch(self._epoch + 1)
                restarted = True
        return rows

    def _decode_chunk(self, index: int) -> dict:
        """Read and decode chunk `index` (in the background thread): its start state, uint8 images and labels."""
        try:
            return self._decode_chunk_unnamed(index)
        except Exception as e:  # unreadable row, missing column, network: say which source and chunk
            if isinstance(e, ValueError) and str(e).startswith(f"streamed source {self.name!r}"):
                raise
            raise ValueError(f"streamed source {self.name!r}, chunk {index}: {type(e).__name__}: {e}") from e

    def _decode_chunk_unnamed(self, index: int) -> dict:
        start = self._start_state()
        rows = self._read(self.chunk_rows)
        images = []
        for begin in range(0, len(rows), DECODE_BATCH):
            part = rows[begin : begin + DECODE_BATCH]
            batch = {key: [row[key] for row in part] for key in part[0] if key not in ("label", "labels")}
            pixels = self._transform(batch)["pixel_values"]
            images.append(to_uint8(pixels))
        if self.labelled:
            labels = torch.tensor([row["label"] for row in rows], dtype=torch.long)
        else:
            labels = torch.full((len(rows),), -1, dtype=torch.long)
        order = torch.randperm(len(rows), generator=step_generator(self.seed, index, self.rank, stream=f"chunk/{self.name}"))
        images = torch.cat(images)[order]
        return {"start": start, "images": images.pin_memory() if torch.cuda.is_available() else images,
                "labels": labels[order], "index": index}

    def _advance(self) -> None:
        """Make the next chunk current (waiting for it if it is not decoded yet) and start decoding the one after."""
        if self._iterator is None:
            self._start_epoch(0)
        future = self._next or self._pool.submit(self._decode_chunk, self._chunk_index)
        self._current, self._position = future.result(), 0
        self._chunk_index += 1
        self._next = self._pool.submit(self._decode_chunk, self._chunk_index)

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next `n` rows: images `(n, C, S, S)` uint8, labels `(n,)` and ids `(n,)` (this process's row count)."""
        images, labels = [], []
        while n > 0:
            if self._current is None or self._position == len(self._current["labels"]):
                self._advance()
            k = min(n, len(self._current["labels"]) - self._position)
            images.append(self._current["images"][self._position : self._position + k])
            labels.append(self._current["labels"][self._position : self._position + k])
            self._position += k
            n -= k
        ids = torch.arange(self._taken, self._taken + sum(len(part) for part in labels))
        self._taken += len(ids)
        if len(images) == 1:  # a view of the pinned chunk: copied to the device asynchronously
            return images[0], labels[0], ids
        return torch.cat(images), torch.cat(labels), ids

    # ------------------------------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        current = self._current
        return {
            "world": self.world, "chunk_rows": self.chunk_rows, "revision": self.revision, "taken": self._taken,
            "chunk": current["index"] if current else None, "position": self._position,
            "start": current["start"] if current else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`: reread the chunk in use from its start state and skip its used rows."""
        for key in ("world", "chunk_rows"):
            if state[key] != getattr(self, key):
                raise ValueError(f"streamed source {self.name!r}: the checkpoint was written with {key}={state[key]}, "
                                 f"this run has {getattr(self, key)}; resume with the same setting")
        if state.get("revision") != self.revision:
            raise ValueError(f"streamed source {self.name!r}: the checkpoint read commit {state.get('revision')}, the "
                             f"dataset is now at {self.revision}; set `revision: {state.get('revision')}` in the "
                             "recipe to resume with the same rows")
        self.close()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"stream-{self.name}")
        self._taken, self._current, self._next, self._position = state["taken"], None, None, 0
        self._epoch, self._rows_in_epoch, self._iterator, self._chunk_index = 0, 0, None, 0
        if state["chunk"] is None:
            return
        start = state["start"]
        self._start_epoch(start["epoch"], start if start["dataset"] is not None else None)
        self._chunk_index = state["chunk"]
        self._advance()
        # Until the stream yields a row, its own state_dict is its initial one, so the re-decoded chunk's start is
        # the checkpoint's (a later checkpoint inside this chunk must point at the same place).
        self._current["start"] = copy.deepcopy(start)
        self._position = state["position"]

    def close(self) -> None:
        """Stop reading (between rows) and end the background thread."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["StreamedSource", "open_stream"]
