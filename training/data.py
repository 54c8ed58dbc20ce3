"""Pretraining data: the recipe's sources, from the dataset builders, mixed into one stream with
`datasets.interleave_datasets` (sampling weights), each row tagged with its source and a stable id."""

import datasets
from datasets import ClassLabel, Sequence, Value, interleave_datasets

from mednet_hf.data import load_medical_dataset

from .recipe import Recipe, resolve_data_dir

COMMON = datasets.Features(
    {
        "image": datasets.Image(),
        "label": Value("int64"),
        "source": Value("int64"),
        "window": Sequence(Value("float32"), length=2),
        "photometric_interpretation": Value("string"),
        "modality": Value("string"),
        "index": Value("int64"),
    }
)


def _source_split(recipe: Recipe, index: int):
    """One source's train split with the common columns; returns it and its number of classes (None if unlabelled)."""
    source = recipe.sources[index]
    split = load_medical_dataset(
        source.dataset, source.config, resolve_data_dir(source.data_dir), size=source.size,
        verification_mode=source.verification_mode, **source.options,
    )["train"]
    features, n = split.features, split.num_rows
    classes = None
    if source.labelled:
        if "labels" in features:
            raise ValueError(f"source {source.name!r} is multi-label; the supervised objective takes single-label "
                             "sources (set labelled: false to use its images without labels)")
        if not isinstance(features.get("label"), ClassLabel):
            raise ValueError(f"source {source.name!r} has no class labels; set labelled: false to use it unlabelled")
        classes = features["label"].num_classes
        if source.num_classes is not None and source.num_classes != classes:
            raise ValueError(f"source {source.name!r}: the recipe says num_classes={source.num_classes} but the dataset "
                             f"has {classes} classes {features['label'].names}")
    keep = [c for c in COMMON if c in split.column_names and c not in ("label", "source")]
    split = split.select_columns(keep + (["label"] if classes else []))
    if not classes:
        split = split.add_column("label", [-1] * n)
    split = split.add_column("source", [index] * n)
    # A stable id per example (source, row): seeds its augmentations and names it in the data-order log.
    split = split.add_column("index", [index * 10**9 + row for row in range(n)])
    for column in ("window", "photometric_interpretation", "modality"):
        if column not in split.column_names:
            split = split.add_column(column, [None] * n)
    return split.cast(COMMON), classes


def pretraining_dataset(recipe: Recipe):
    """The mixed stream and, per source, its number of classes (None for unlabelled sources)."""
    parts, classes = zip(*(_source_split(recipe, i) for i in range(len(recipe.sources))))
    weights = [s.weight for s in recipe.sources]
    mixed = interleave_datasets(
        list(parts), probabilities=[w / sum(weights) for w in weights], seed=recipe.seed, stopping_strategy="all_exhausted"
    ) if len(parts) > 1 else parts[0]
    return mixed, list(classes)
