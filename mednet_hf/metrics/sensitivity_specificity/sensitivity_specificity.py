"""Sensitivity (recall, true-positive rate) and specificity (true-negative rate) of each class against the rest,
with their macro means; for two classes, those of class `pos_label` (default 1)."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import confusion_matrix


class SensitivitySpecificity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: predicted class indices; references: true class indices.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, labels=None, pos_label=1):
        labels = sorted(set(references) | set(predictions)) if labels is None else list(labels)
        matrix = confusion_matrix(references, predictions, labels=labels)
        tp = np.diag(matrix).astype(float)
        fn = matrix.sum(axis=1) - tp
        fp = matrix.sum(axis=0) - tp
        tn = matrix.sum() - tp - fn - fp
        with np.errstate(invalid="ignore", divide="ignore"):
            sensitivity, specificity = tp / (tp + fn), tn / (tn + fp)
        if len(labels) == 2:
            k = labels.index(pos_label)
            return {"sensitivity": float(sensitivity[k]), "specificity": float(specificity[k])}
        return {
            "sensitivity": float(np.nanmean(sensitivity)),
            "specificity": float(np.nanmean(specificity)),
            "sensitivity_per_class": sensitivity.tolist(),
            "specificity_per_class": specificity.tolist(),
        }
