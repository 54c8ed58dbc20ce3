"""Fine-tuning a MedNet checkpoint with the transformers `Trainer`, on any classification set the builders give.

Full fine-tuning or a linear probe, a stratified label fraction drawn with a fixed seed, early stopping and
best-model selection on validation macro AUROC, the project's own `evaluate` metrics, and a results JSON per run.

The training and validation splits go through the processor once, into tensors on the training device
(`TensorRows`), and every batch is gathered there with one index operation; the augmentation (random resized crop
and rotation, `augment.finetune_view`) is made on the device in batches, in the Trainer's `compute_loss`, from a
generator seeded by (seed, step, rank). A split too large for `TENSORIZE_MAX_BYTES` goes through the processor
batch by batch instead. The test split always does, exactly as `mednet evaluate` reads it.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    EarlyStoppingCallback,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from mednet_hf.data import class_names, load_dataset_spec, medical_transform
from mednet_hf.loading import load_processor
from mednet_hf.metrics import classification_metrics, per_class_scalars

from .augment import finetune_view, step_generator

# Above this a split is not held as tensors (float32 pixel_values): ~2 GiB is 680k images at 28 px, 10k at 224 px.
TENSORIZE_MAX_BYTES = 2 * 2**30


class TensorRows(torch.utils.data.Dataset):
    """A split already through the processor, held as tensors on one device. `__getitems__` gathers a whole batch
    with one index operation, which torch's DataLoader uses in place of one `__getitem__` per image."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}

    def __getitems__(self, indices) -> dict:
        index = torch.as_tensor(indices, device=self.labels.device)
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def _collate(batch):
    """Batches gathered by `TensorRows` pass as they are; rows of a `datasets` split are stacked as usual."""
    return batch if isinstance(batch, dict) else default_data_collator(batch)


def tensorize(split, transform, device, name: str, chunk: int = 512) -> "TensorRows | None":
    """`split` through the processor (`transform`, the same path as `with_transform`) once, onto `device`; `None`
    when it would take more than `TENSORIZE_MAX_BYTES`."""
    rows = split.with_transform(transform)
    first = rows[:1]
    if first["pixel_values"][0].numel() * 4 * split.num_rows > TENSORIZE_MAX_BYTES:
        return None
    pixels, labels = [], []
    for start in tqdm(range(0, split.num_rows, chunk), desc=f"preprocess {name}", unit="batch", leave=False):
        batch = rows[start : start + chunk]
        pixels.append(batch["pixel_values"])
        labels.append(batch["labels"])
    return TensorRows(torch.cat(pixels).to(device), torch.cat(labels).to(device))


def _check_classes(train, names: list[str], multi_label: bool, dataset: str, data_dir) -> None:
    """A single-label set whose training split has fewer than two classes is refused before any training (it would
    train, then report AUROC nan and accuracy 1.0)."""
    if multi_label:
        return
    present = sorted(set(train["label"]))
    if len(present) < 2:
        raise ValueError(
            f"{dataset} ({data_dir}): the training set has {len(present)} class(es) {[names[i] for i in present]} "
            f"of {len(names)} {names}; a classifier needs at least 2 (an image folder needs one sub-folder per class)"
        )


class _Trainer(Trainer):
    """The Trainer, with the augmentation made on the device in `compute_loss` (training steps only), and a last
    training batch of one image dropped (the order is shuffled, so it is a different image each epoch): BatchNorm
    cannot normalise a batch of one, and training would stop with its error. Evaluation keeps every image."""

    def __init__(self, *args, augment=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.augment = augment

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.augment is not None and model.training:
            pixels = inputs["pixel_values"]
            generator = step_generator(self.args.seed, self.state.global_step, self.args.process_index, pixels.device,
                                       stream="finetune")
            inputs = {**inputs, "pixel_values": self.augment(pixels, generator)}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def get_train_dataloader(self):
        single = len(self.train_dataset) % self.args.train_batch_size == 1
        if not single or self.args.dataloader_drop_last:
            return super().get_train_dataloader()
        self.args.dataloader_drop_last = True
        try:
            return super().get_train_dataloader()
        finally:
            self.args.dataloader_drop_last = False


def _check_head(model: str, names: list[str], new_head: bool) -> None:
    """A checkpoint trained for other classes is refused unless the user asks for a new head."""
    config = AutoConfig.from_pretrained(model)
    their_names = [config.id2label[i] for i in sorted(config.id2label)]
    if config.has_classifier and not new_head and their_names != names:
        raise ValueError(
            f"{model} has a classification head for {config.num_labels} labels {their_names}, the dataset has "
            f"{len(names)} {names}. Pass --new-head to train a new classifier on this backbone."
        )


def _subsample(train, fraction: float, multi_label: bool, seed: int):
    if fraction >= 1.0:
        return train
    if not 0 < fraction < 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if multi_label:  # no single class to stratify on
        return train.shuffle(seed=seed).select(range(max(1, int(round(fraction * train.num_rows)))))
    return train.train_test_split(train_size=fraction, stratify_by_column="label", seed=seed)["train"]


@dataclass
class FinetuneArguments:
    """Every option of a fine-tuning run, defined once: `finetune()` takes them and `mednet finetune` is built from
    them (the `help` texts are the command's)."""

    model: str = field(metadata={"help": "a saved MedNet folder (e.g. a pretrain run's final/) or a Hub id such as mednet/gray"})
    dataset: str = field(metadata={"help": "medmnist:<subset>, imagefolder, chestxray14"})
    data_dir: str | None = field(default=None, metadata={"help": "local files (image folder, MedMNIST .npz, ...)"})
    output_dir: str = field(default="runs/finetune", metadata={"help": "where checkpoints, results.json and best/ go"})
    size: int | None = field(default=None, metadata={"help": "MedMNIST image size (of the files: 28, 64, 128 or 224)"})
    image_size: int | None = field(
        default=None,
        metadata={"help": "the size the model sees (default: the checkpoint's, its pretraining size); the saved model "
                          "and processor keep it"},
    )
    spatial_dims: int | None = field(
        default=None,
        metadata={"help": "3: fine-tune a 2-D checkpoint as MedNet-3D on volumes, converted by --conversion (a 3-D "
                          "checkpoint is 3-D already)"},
    )
    conversion: str | None = field(default=None, metadata={"help": "with --spatial-dims 3: acs (default), i3d or 2.5d"})
    label_fraction: float = field(default=1.0, metadata={"help": "stratified, seeded fraction of the training labels"})
    linear_probe: bool = field(default=False, metadata={"help": "freeze the backbone, train the classifier only"})
    new_head: bool = field(default=False, metadata={"help": "replace a checkpoint's classifier trained for other labels"})
    epochs: float = field(default=3.0, metadata={"help": "training epochs"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many steps (overrides --epochs)"})
    batch_size: int = field(default=64, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    patience: int = field(default=3, metadata={"help": "early stopping: evaluations without improvement"})
    seed: int = field(default=0, metadata={"help": "seed of the label subset, the order, the augmentation and the initialisation"})
    augment: bool = field(default=True, metadata={"help": "random resized crop (0.7 to 1 of the area) and rotation (up to 10 degrees), "
                                                           "made on the device in batches"})
    hflip: bool = field(default=False, metadata={"help": "also flip left-right (off: laterality matters in radiographs)"})
    no_checks: bool = field(default=False, metadata={"help": "accept data files whose md5 differs from the official one"})
    options: dict = field(default_factory=dict, metadata={"help": "dataset builder option, e.g. filename=x.npz", "aliases": ["--option"]})
    report_to: str = field(default="tensorboard", metadata={"help": "Trainer loggers: tensorboard, none, ..."})


def _conversion(model: str, run: FinetuneArguments) -> dict:
    """The `from_pretrained` keywords that make `--spatial-dims 3 [--conversion]` MedNet-3D, checked first."""
    if run.spatial_dims not in (None, 2, 3):
        raise ValueError(f"--spatial-dims must be 2 or 3, got {run.spatial_dims}")
    if run.conversion is not None and run.spatial_dims != 3:
        raise ValueError(f"--conversion {run.conversion} converts a 2-D checkpoint to 3-D: add --spatial-dims 3")
    if run.conversion not in (None, "acs", "i3d", "2.5d"):
        raise ValueError(f"--conversion must be acs, i3d or 2.5d, got {run.conversion!r}")
    if run.spatial_dims == 2:
        from transformers import AutoConfig

        if getattr(AutoConfig.from_pretrained(model), "spatial_dims", 2) == 3:
            raise ValueError(f"{model}: a 3-D checkpoint cannot be fine-tuned in 2-D (--spatial-dims 2)")
    if run.spatial_dims != 3:
        return {}
    return {"spatial_dims": 3} | ({"conversion": run.conversion} if run.conversion else {})


def finetune(*args, **kwargs) -> dict:
    """Fine-tune `model` (a saved MedNet folder or Hub id) on `dataset` (`"medmnist:pneumoniamnist"`,
    `"imagefolder"`, `"chestxray14"`); returns and writes `output_dir/results.json`. Takes a `FinetuneArguments`
    or its fields (`finetune("mednet/gray", "medmnist:pneumoniamnist", data_dir, epochs=3)`)."""
    run = args[0] if len(args) == 1 and isinstance(args[0], FinetuneArguments) and not kwargs else FinetuneArguments(*args, **kwargs)
    model, dataset, output_dir = run.model, run.dataset, run.output_dir
    started = time.perf_counter()
    splits = load_dataset_spec(dataset, run.data_dir, size=run.size, no_checks=run.no_checks, options=run.options)
    names, multi_label = class_names(splits["train"].features, dataset)
    _check_classes(splits["train"], names, multi_label, dataset, run.data_dir)  # before any training
    _check_head(model, names, run.new_head)
    train = splits["train"]
    if "validation" not in splits:  # hold out 10% of train (stratified) to choose the best model
        held = train.train_test_split(test_size=0.1, seed=run.seed, stratify_by_column=None if multi_label else "label")
        train, splits["validation"] = held["train"], held["test"]
    train = _subsample(train, run.label_fraction, multi_label, run.seed)

    # The new head is initialised inside from_pretrained, before the Trainer seeds anything: seed it here, so a
    # run's recorded command gives the same model in a fresh process as inside a study that ran others first.
    set_seed(run.seed)
    classifier = AutoModelForImageClassification.from_pretrained(
        model, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
        ignore_mismatched_sizes=True, **({"image_size": run.image_size} if run.image_size else {}),
        **_conversion(model, run),
    )
    # The geometry follows the model's config (its one home), so another image_size reaches the processor and the
    # saved best/ alike; the medical options (intensity, window, slices) are the checkpoint's.
    processor = load_processor(model, classifier.config)
    if run.linear_probe:
        classifier.freeze_backbone()
    transform = medical_transform(processor, train.features)
    strategy = "steps" if run.max_steps > 0 else "epoch"
    eval_every = max(1, run.max_steps // 4) if run.max_steps > 0 else None
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=run.batch_size, per_device_eval_batch_size=2 * run.batch_size,
        learning_rate=run.lr, weight_decay=run.weight_decay, num_train_epochs=run.epochs, max_steps=run.max_steps,
        eval_strategy=strategy, save_strategy=strategy, eval_steps=eval_every, save_steps=eval_every,
        load_best_model_at_end=True, metric_for_best_model="auroc", greater_is_better=True, save_total_limit=2,
        logging_steps=10, seed=run.seed, data_seed=run.seed, remove_unused_columns=False, report_to=run.report_to,
        dataloader_num_workers=0, dataloader_pin_memory=torch.cuda.is_available(),
    )
    train_rows = tensorize(train, transform, args.device, "train")
    validation_rows = tensorize(splits["validation"], transform, args.device, "validation")
    if train_rows is not None or validation_rows is not None:
        args.dataloader_pin_memory = False  # their batches are on the device already (and CUDA tensors cannot be pinned)

    def compute_metrics(prediction) -> dict:
        return per_class_scalars(classification_metrics(prediction.predictions, prediction.label_ids, multi_label), names)

    trainer = _Trainer(
        model=classifier, args=args, train_dataset=train.with_transform(transform) if train_rows is None else train_rows,
        eval_dataset=splits["validation"].with_transform(transform) if validation_rows is None else validation_rows, compute_metrics=compute_metrics,
        data_collator=_collate, processing_class=processor,  # every checkpoint the Trainer writes carries the processor
        callbacks=[EarlyStoppingCallback(early_stopping_patience=run.patience)],
        # outside a rotated crop is black, as in pretraining: the normalised value of the convention's 0
        # (2-D only: volumes are fine-tuned as they are)
        augment=partial(finetune_view, flip=run.hflip, black=-torch.tensor(processor.image_mean) / torch.tensor(processor.image_std))
        if run.augment and classifier.config.spatial_dims == 2 else None,
    )
    trainer.train()
    # every evaluation during training (epoch, eval_auroc, ...), before the final ones: convergence curves
    history = [entry for entry in trainer.state.log_history if "eval_auroc" in entry]
    validation = trainer.evaluate()
    test = trainer.evaluate(splits["test"].with_transform(transform), metric_key_prefix="test") if "test" in splits else {}
    best = Path(output_dir) / "best"
    trainer.save_model(str(best))  # the processor too (processing_class)
    # The Trainer's pickled arguments do not belong in a model to publish (results.json records them).
    (best / "training_args.bin").unlink(missing_ok=True)
    record = {
        "model": str(model), "dataset": dataset, "label_fraction": run.label_fraction, "linear_probe": run.linear_probe,
        "arguments": asdict(run),
        "train_rows": train.num_rows, "tensorized": train_rows is not None, "steps": trainer.state.global_step, "best_checkpoint": trainer.state.best_model_checkpoint,
        "validation": validation, "test": test, "seconds": time.perf_counter() - started, "export": str(best),
        "history": history,
    }
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    # numpy scalars become numbers, paths text
    (Path(output_dir) / "results.json").write_text(json.dumps(record, indent=1, default=lambda v: str(v) if isinstance(v, Path) else float(v)))
    return record


__all__ = ["FinetuneArguments", "TensorRows", "finetune", "tensorize"]
