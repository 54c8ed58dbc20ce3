"""The project's evaluate modules against scikit-learn, on real predictions: logistic regression on the pixels of
real PneumoniaMNIST (binary) and OrganAMNIST (11 classes) images."""

import numpy as np
import pytest
from conftest import data_path
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    multilabel_confusion_matrix,
    recall_score,
    roc_auc_score,
)

from mednet_hf.metrics import classification_metrics, load_metric

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # a few iterations suffice


def _predictions(file: str, n_train: int, n_test: int):
    with np.load(data_path(f"medmnist/{file}")) as npz:
        x_train = npz["train_images"][:n_train].reshape(n_train, -1) / 255.0
        y_train = npz["train_labels"][:n_train, 0]
        x_test = npz["test_images"][:n_test].reshape(n_test, -1) / 255.0
        y_test = npz["test_labels"][:n_test, 0]
    model = LogisticRegression(max_iter=300).fit(x_train, y_train)
    return model.predict_proba(x_test), y_test


@pytest.fixture(scope="module")
def binary():
    return _predictions("pneumoniamnist_subset.npz", 3882, 624)


@pytest.fixture(scope="module")
def multiclass():
    return _predictions("organamnist.npz", 3000, 1500)


def _ece_reference(scores, labels, n_bins=15):
    confidence, correct = scores.max(1), (scores.argmax(1) == labels).astype(float)
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
    bins = np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], confidence)
    counts = np.bincount(bins, minlength=n_bins)
    return float(np.sum(counts[counts > 0] / len(labels) * np.abs(prob_true - prob_pred)))


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_metrics_match_scikit_learn(task, request):
    scores, labels = request.getfixturevalue(task)
    predictions = scores.argmax(1)
    classes = list(range(scores.shape[1]))
    assert load_metric("accuracy").compute(predictions=predictions, references=labels)["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert load_metric("balanced_accuracy").compute(predictions=predictions, references=labels)["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, predictions))
    f1 = load_metric("f1").compute(predictions=predictions, references=labels, labels=classes)
    assert f1["f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))
    np.testing.assert_allclose(f1["f1_per_class"], f1_score(labels, predictions, average=None, labels=classes))
    auroc = load_metric("auroc").compute(prediction_scores=scores, references=labels)
    if task == "binary":
        assert auroc["auroc"] == pytest.approx(roc_auc_score(labels, scores[:, 1]))
    else:
        assert auroc["auroc"] == pytest.approx(roc_auc_score(labels, scores, multi_class="ovr", average="macro"))
    np.testing.assert_allclose(auroc["auroc_per_class"], [roc_auc_score(labels == k, scores[:, k]) for k in classes])
    sens = load_metric("sensitivity_specificity").compute(predictions=predictions, references=labels, labels=classes)
    if task == "binary":
        assert sens["sensitivity"] == pytest.approx(recall_score(labels, predictions, pos_label=1))
        assert sens["specificity"] == pytest.approx(recall_score(labels, predictions, pos_label=0))
    else:
        assert sens["sensitivity"] == pytest.approx(recall_score(labels, predictions, average="macro"))
        matrices = multilabel_confusion_matrix(labels, predictions, labels=classes)
        np.testing.assert_allclose(sens["specificity_per_class"], [m[0, 0] / (m[0, 0] + m[0, 1]) for m in matrices])
    ece = load_metric("calibration_error").compute(prediction_scores=scores, references=labels)["calibration_error"]
    assert ece == pytest.approx(_ece_reference(scores, labels))


def test_multilabel_auroc_and_f1(multiclass):
    scores, labels = multiclass
    # Two real findings per image: its organ, and whether that organ is paired (left/right femur, kidney, lung).
    paired = np.isin(labels, [1, 2, 4, 5, 7, 8]).astype(int)
    truth = np.column_stack([np.eye(11, dtype=int)[labels], paired])
    paired_score = scores[:, [1, 2, 4, 5, 7, 8]].sum(1)
    all_scores = np.column_stack([scores, paired_score])
    auroc = load_metric("auroc", "multilabel").compute(prediction_scores=all_scores, references=truth)
    assert auroc["auroc"] == pytest.approx(roc_auc_score(truth, all_scores, average="macro"))
    hard = (all_scores > 0.5).astype(int)
    f1 = load_metric("f1", "multilabel").compute(predictions=hard, references=truth)
    assert f1["f1"] == pytest.approx(f1_score(truth, hard, average="macro", zero_division=0))


def test_classification_metrics_from_logits(binary):
    scores, labels = binary
    out = classification_metrics(np.log(scores), labels)  # log-probabilities are logits of the same softmax
    assert out["auroc"] == pytest.approx(roc_auc_score(labels, scores[:, 1]))
    assert out["accuracy"] == pytest.approx(accuracy_score(labels, scores.argmax(1)))
    assert {"balanced_accuracy", "f1", "sensitivity", "specificity", "calibration_error"} <= set(out)


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric 'dice'"):
        load_metric("dice")
