"""Balanced accuracy: the mean of per-class recall, robust to class imbalance (scikit-learn's
balanced_accuracy_score)."""

import datasets
import evaluate
from sklearn.metrics import balanced_accuracy_score


class BalancedAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: predicted class indices; references: true class indices.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"balanced_accuracy": float(balanced_accuracy_score(references, predictions))}
