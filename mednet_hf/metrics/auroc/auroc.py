"""AUROC: area under the ROC curve of each class against the rest, and their macro mean.

Configs: `"multiclass"` (default; binary is the 2-class case) takes `prediction_scores` as one probability row per
example and `references` as class indices; `"multilabel"` takes score rows and 0/1 indicator rows. A class absent
from the references has no AUROC: it is reported as NaN and left out of the macro mean.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import roc_auc_score


class AUROC(evaluate.Metric):
    def _info(self):
        references = datasets.Sequence(datasets.Value("int64")) if self.config_name == "multilabel" else datasets.Value("int64")
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="prediction_scores: (num_classes,) scores per example; references: class index or 0/1 row.",
            features=datasets.Features(
                {"prediction_scores": datasets.Sequence(datasets.Value("float64")), "references": references}
            ),
        )

    def _compute(self, prediction_scores, references):
        scores = np.asarray(prediction_scores, dtype=np.float64)
        if self.config_name == "multilabel":
            truth = np.asarray(references)
        else:
            truth = np.eye(scores.shape[1], dtype=np.int64)[np.asarray(references)]
        per_class = [
            float(roc_auc_score(truth[:, k], scores[:, k])) if 0 < truth[:, k].sum() < len(truth) else float("nan")
            for k in range(scores.shape[1])
        ]
        macro = float(np.nanmean(per_class)) if not np.all(np.isnan(per_class)) else float("nan")
        if scores.shape[1] == 2 and self.config_name != "multilabel":
            macro = per_class[1]  # binary: the positive class's AUROC (both columns give the same)
        return {"auroc": macro, "auroc_per_class": per_class}
