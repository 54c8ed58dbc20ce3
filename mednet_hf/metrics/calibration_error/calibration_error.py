"""Expected calibration error (ECE): the example-weighted mean gap between accuracy and confidence over
`n_bins` equal-width confidence bins, on the top-1 prediction (Guo et al., 2017)."""

import datasets
import evaluate
import numpy as np

CITATION = """@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks}, author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q},
  booktitle={ICML}, year={2017}
}"""


class CalibrationError(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=CITATION,
            inputs_description="prediction_scores: class-probability rows; references: true class indices.",
            features=datasets.Features(
                {"prediction_scores": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, prediction_scores, references, n_bins=15):
        scores = np.asarray(prediction_scores, dtype=np.float64)
        confidence = scores.max(axis=1)
        correct = (scores.argmax(axis=1) == np.asarray(references)).astype(np.float64)
        bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)  # (k/n, (k+1)/n]
        ece = 0.0
        for b in range(n_bins):
            inside = bins == b
            if inside.any():
                ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
        return {"calibration_error": float(ece)}
