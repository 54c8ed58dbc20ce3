"""`mednet data prepare` and `mednet data push`: build a public medical dataset, or push it to the Hub."""

from dataclasses import dataclass, field

from . import Command


def _builder_names() -> list[str]:
    from ..builders import BUILDERS

    return sorted(BUILDERS)


@dataclass
class DataArguments:
    name: str = field(metadata={"help": "the dataset builder", "positional": True, "choices": _builder_names()})
    config: str | None = field(default=None, metadata={"help": "MedMNIST subset, e.g. organamnist"})
    size: int | None = field(default=None, metadata={"help": "MedMNIST size: 28, 64, 128 or 224"})
    data_dir: str | None = field(default=None, metadata={"help": "local files (the image folder, DRIVE, ChestX-ray14; MedMNIST .npz files)"})
    cache_dir: str | None = field(default=None, metadata={"help": "where the prepared arrow files go (default: the datasets cache)"})
    no_checks: bool = field(default=False, metadata={"help": "accept files whose md5 differs from the official one"})
    rebuild: bool = field(default=False, metadata={"help": "ignore a cached build"})
    options: dict = field(default_factory=dict, metadata={
        "help": "builder option, e.g. slice_stride=2, labels_csv=labels.csv, filename=x.npz, on_error=skip", "aliases": ["--option"]})

    def load(self):
        from ..data import load_medical_dataset

        return load_medical_dataset(
            self.name, self.config, self.data_dir, size=self.size, cache_dir=self.cache_dir,
            verification_mode="no_checks" if self.no_checks else None,
            download_mode="force_redownload" if self.rebuild else None, **self.options,
        )


@dataclass
class DataPrepareArguments(DataArguments):
    output: str | None = field(default=None, metadata={"help": "also save the DatasetDict here (save_to_disk)"})


@dataclass
class DataPushArguments(DataArguments):
    repo_id: str | None = field(default=None, metadata={"help": "the dataset repository, e.g. you/organamnist", "required": True})
    private: bool = field(default=False, metadata={"help": "create the repository private"})
    revision: str | None = field(default=None, metadata={"help": "branch to push to (created if needed)"})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: HF_TOKEN or the saved login)"})
    max_shard_size: str | None = field(default=None, metadata={"help": "parquet shard size, e.g. 500MB"})
    allow_phi: bool = field(default=False, metadata={"help": "push a dataset built with include_phi=true"})


def _summary(dataset) -> None:
    for split, part in dataset.items():
        print(f"{split}: {part.num_rows} rows")
    print("columns:", ", ".join(f"{k}={v!r}" for k, v in next(iter(dataset.values())).features.items()))


def prepare(args: DataPrepareArguments) -> None:
    dataset = args.load()
    _summary(dataset)
    if args.output:
        dataset.save_to_disk(args.output)
        print(f"saved to {args.output}")


def push(args: DataPushArguments) -> None:
    from ..builders import BUILDERS
    from ..hub import push_dataset

    dataset = args.load()
    _summary(dataset)
    commit = push_dataset(
        dataset, args.repo_id, builder=args.name, builder_class=BUILDERS[args.name].__name__, private=args.private,
        token=args.token, revision=args.revision, max_shard_size=args.max_shard_size, allow_phi=args.allow_phi,
        checksums_verified=not args.no_checks,
    )
    print(f"pushed {args.repo_id}: {commit}")


COMMANDS = [
    Command("data prepare", "build the dataset (cached) and print its splits", DataPrepareArguments, prepare),
    Command("data push", "build it and push it to the Hub as parquet with a dataset card", DataPushArguments, push),
]
