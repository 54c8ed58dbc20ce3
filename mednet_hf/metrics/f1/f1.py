"""F1: macro average of per-class F1 (each class counts the same), with the per-class values. Config
`"multilabel"` takes 0/1 indicator rows for both predictions and references."""

import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self):
        if self.config_name == "multilabel":
            kind = datasets.Sequence(datasets.Value("int64"))
        else:
            kind = datasets.Value("int64")
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions / references: class indices, or 0/1 rows with config 'multilabel'.",
            features=datasets.Features({"predictions": kind, "references": kind}),
        )

    def _compute(self, predictions, references, labels=None):
        per_class = f1_score(references, predictions, average=None, labels=labels, zero_division=0)
        return {"f1": float(per_class.mean()), "f1_per_class": [float(v) for v in per_class]}
