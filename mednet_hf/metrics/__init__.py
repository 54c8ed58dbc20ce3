"""The project's medical metrics as `evaluate` modules, loaded from this folder (offline):
`evaluate.load(metric_path("auroc"), "multilabel")`, or all at once with `classification_metrics`.

Each metric is one self-contained script (`evaluate.load` copies a single file), so they share no helper module
and repeat their small `_info` boilerplate; the computations are scikit-learn's."""

import functools
from pathlib import Path

import numpy as np

METRICS_DIR = Path(__file__).resolve().parent
NAMES = ("accuracy", "auroc", "balanced_accuracy", "calibration_error", "f1", "sensitivity_specificity")


def metric_path(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown metric {name!r}; the project ships {NAMES}")
    return str(METRICS_DIR / name / f"{name}.py")


@functools.lru_cache(maxsize=None)  # loading a module costs far more than computing it; they keep no state
def load_metric(name: str, config_name: str | None = None):
    import evaluate

    return evaluate.load(metric_path(name), config_name)


def probabilities(logits, multi_label: bool = False) -> np.ndarray:
    """Logits `(N, C)` → probabilities, the one rule (what `pipeline("image-classification")` reports): a sigmoid per
    class for multi-label models and single-logit ones, a softmax over the classes otherwise. In float64."""
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label or logits.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, multi_label: bool = False) -> dict:
    """All the metrics that fit the task, from raw logits `(N, C)` and labels (indices, or 0/1 rows)."""
    scores = probabilities(logits, multi_label)
    if multi_label:
        labels = np.asarray(labels).astype(np.int64)
        out = load_metric("auroc", "multilabel").compute(prediction_scores=scores, references=labels)
        out.update(load_metric("f1", "multilabel").compute(predictions=(scores > 0.5).astype(np.int64), references=labels))
        return out
    predictions = scores.argmax(axis=1)
    classes = list(range(scores.shape[1]))
    out = {}
    out.update(load_metric("accuracy").compute(predictions=predictions, references=labels))
    out.update(load_metric("balanced_accuracy").compute(predictions=predictions, references=labels))
    out.update(load_metric("auroc").compute(prediction_scores=scores, references=labels))
    out.update(load_metric("f1").compute(predictions=predictions, references=labels, labels=classes))
    out.update(load_metric("sensitivity_specificity").compute(predictions=predictions, references=labels, labels=classes))
    out.update(load_metric("calibration_error").compute(prediction_scores=scores, references=labels))
    return out


def per_class_scalars(metrics: dict, names: list[str]) -> dict:
    """Per-class lists become one scalar per class (`f1_per_class` → `f1_<class>`), which loggers and results.json
    take."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, list):
            out.update({f"{key.removesuffix('_per_class')}_{name}": v for name, v in zip(names, value)})
        else:
            out[key] = value
    return out


__all__ = ["METRICS_DIR", "NAMES", "classification_metrics", "load_metric", "metric_path", "per_class_scalars", "probabilities"]
