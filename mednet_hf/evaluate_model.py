"""`mednet evaluate`: score a saved MedNet classifier on a split of a dataset the builders give.

The metrics are the ones `mednet finetune` reports, computed the same way (the `Trainer`'s evaluation loop, the
project's `evaluate` metrics, per-class values flattened to one key per class), so the `test` block of
`results.json` here equals the one finetune wrote for the same checkpoint. Also written: a `per_class` table and a
calibration (reliability) plot.
(Not called `evaluate.py`: that would shadow the `evaluate` package the metrics load through.)
"""

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from .data import class_names, load_dataset_spec, medical_transform
from .loading import load_for_use
from .metrics import classification_metrics, per_class_scalars, probabilities

PER_CLASS_SUFFIX = "_per_class"
CALIBRATION_BINS = 15  # the `calibration_error` metric's default: the plot and the reported error bin alike


def _per_class(metrics: dict, names: list[str]) -> dict:
    """{class: {metric: value}} from the metrics' per-class lists."""
    table = {name: {} for name in names}
    for key, values in metrics.items():
        if key.endswith(PER_CLASS_SUFFIX) and isinstance(values, list):
            for name, value in zip(names, values):
                table[name][key.removesuffix(PER_CLASS_SUFFIX)] = value
    return table


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """scikit-learn's reliability bins (`calibration_curve`, equal width, right-closed `(k/n, (k+1)/n]` as the
    `calibration_error` metric bins them): mean confidence, observed frequency and count per bin, `None` for empty
    bins."""
    from sklearn.calibration import calibration_curve

    edges = np.linspace(0, 1, bins + 1)
    which = np.searchsorted(edges[1:-1], confidence)  # the bin calibration_curve puts each score in
    counts = np.bincount(which, minlength=bins)
    observed, mean_confidence = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
    filled = np.flatnonzero(counts)
    drawn = {"bin_confidence": [None] * bins, "bin_accuracy": [None] * bins, "bin_count": counts.tolist()}
    for b, seen, conf in zip(filled, observed, mean_confidence):
        drawn["bin_confidence"][b], drawn["bin_accuracy"][b] = float(conf), float(seen)
    return drawn


def calibration_plot(scores: np.ndarray, labels: np.ndarray, multi_label: bool, path, bins: int = CALIBRATION_BINS) -> dict:
    """Reliability diagram: confidence of the predicted class (every class's score, for multi-label) against how
    often it is right, in the `calibration_error` metric's bins (`calibration_bins`). Saves a PNG and returns the
    bins drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    if multi_label:
        confidence, correct = scores.ravel(), np.asarray(labels).ravel().astype(float)
    else:
        confidence, correct = scores.max(axis=1), (scores.argmax(axis=1) == np.asarray(labels)).astype(float)
    drawn = calibration_bins(confidence, correct, bins)
    edges = np.linspace(0, 1, bins + 1)
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
    filled = [b for b in range(bins) if drawn["bin_count"][b]]
    axis.bar([(edges[b] + edges[b + 1]) / 2 for b in filled], [drawn["bin_accuracy"][b] for b in filled],
             width=1 / bins, edgecolor="black", alpha=0.7, label="observed")
    axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability" if multi_label else "confidence",
             ylabel="fraction positive" if multi_label else "accuracy", title="Calibration")
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return drawn


def evaluate_model(
    model: str,
    dataset: str,
    data_dir=None,
    output_dir="runs/evaluate",
    *,
    split: str = "test",
    size: int | None = None,
    batch_size: int = 128,
    no_checks: bool = False,
    options: dict | None = None,
) -> dict:
    """Evaluate the classifier saved in `model` on `split` of `dataset` (as `mednet finetune` names it:
    `medmnist:<subset>`, `imagefolder`, ...). Writes `output_dir/results.json` and `output_dir/calibration.png`."""
    from transformers import Trainer, TrainingArguments

    splits = load_dataset_spec(dataset, data_dir, size=size, no_checks=no_checks, options=options)
    if split not in splits:
        raise ValueError(f"{dataset}: no {split!r} split; it has {sorted(splits)}")
    names, multi_label = class_names(splits[split].features, dataset)
    classifier, processor, _ = load_for_use(model, "classifier", device="cpu")  # the Trainer places it
    theirs = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    if theirs != names:
        raise ValueError(f"{model}: its classifier predicts {theirs}, but {dataset} has the classes {names}")
    transform = medical_transform(processor, splits[split].features)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    kept = {}

    def compute_metrics(prediction) -> dict:
        kept["logits"], kept["labels"] = prediction.predictions, prediction.label_ids
        kept["metrics"] = classification_metrics(prediction.predictions, prediction.label_ids, multi_label)
        return per_class_scalars(kept["metrics"], names)

    with tempfile.TemporaryDirectory() as scratch:  # the Trainer wants an output_dir; it writes nothing we keep
        args = TrainingArguments(output_dir=scratch, per_device_eval_batch_size=batch_size, report_to="none",
                                 remove_unused_columns=False, dataloader_num_workers=0,
                                 dataloader_pin_memory=torch.cuda.is_available())
        trainer = Trainer(model=classifier, args=args, compute_metrics=compute_metrics, processing_class=processor)
        prefix = "eval" if split == "validation" else split  # finetune's names: eval_* for validation, test_* for test
        metrics = trainer.evaluate(splits[split].with_transform(transform), metric_key_prefix=prefix)
    scores = probabilities(kept["logits"], multi_label)
    calibration = calibration_plot(scores, kept["labels"], multi_label, output_dir / "calibration.png")
    record = {
        "model": str(model), "dataset": dataset, "split": split, "rows": splits[split].num_rows, "labels": names,
        split: metrics, "per_class": _per_class(kept["metrics"], names),
        "calibration": {**calibration, "plot": "calibration.png"},
    }
    (output_dir / "results.json").write_text(json.dumps(record, indent=1, default=float))
    return record


__all__ = ["calibration_plot", "evaluate_model"]
