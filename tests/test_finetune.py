"""`mednet finetune` with the transformers Trainer on real PneumoniaMNIST images (28 px, CPU)."""

import json
import re
import shutil

import numpy as np
import pytest
import real_variants as rv
import torch
from conftest import data_path

from mednet_hf import MedNetConfig, MedNetForImageClassification, MedNetModel
from mednet_hf.cli import main as cli_main
from mednet_hf import MedNetImageProcessor
from mednet_hf.data import load_medical_dataset, medical_transform
from mednet_hf.training.finetune import _subsample, finetune, tensorize

PNEUMONIA = ["--dataset", "medmnist:pneumoniamnist", "--option", "filename=pneumoniamnist_subset.npz", "--no-checks"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A freshly initialised Gray-MedNet (ResNet-18 at 28 px): fine-tuning must learn from the data alone."""
    path = tmp_path_factory.mktemp("mednet-scratch")
    torch.manual_seed(0)
    MedNetModel(MedNetConfig(architecture="resnet18", image_size=28)).save_pretrained(path)
    return path


@pytest.mark.slow
def test_short_finetune_beats_chance_and_reports_test_metrics(backbone, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(["finetune", "--model", str(backbone), *PNEUMONIA, "--data-dir", str(data_path("medmnist")),
                     "--max-steps", "40", "--batch-size", "64", "--output-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test: auroc" in printed and "accuracy" in printed
    record = json.loads((out / "results.json").read_text())
    assert record["validation"]["eval_auroc"] > 0.75  # chance is 0.5
    assert 0 <= record["test"]["test_auroc"] <= 1 and "test_accuracy" in record["test"]
    assert record["steps"] == 40 and (out / "best" / "model.safetensors").is_file()
    assert (out / "best" / "preprocessor_config.json").is_file()
    # The Trainer's own checkpoints carry the processor too (processing_class).
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and all((c / "preprocessor_config.json").is_file() for c in checkpoints)


def test_label_fraction_is_stratified_and_seeded():
    train = load_medical_dataset("medmnist", "pneumoniamnist", data_dir=data_path("medmnist"),
                                 filename="pneumoniamnist_subset.npz", verification_mode="no_checks")["train"]
    small = _subsample(train, 0.1, multi_label=False, seed=3)
    assert small.num_rows == round(0.1 * train.num_rows)
    assert np.mean(small["label"]) == pytest.approx(np.mean(train["label"]), abs=0.01)  # class balance kept
    assert _subsample(train, 0.1, multi_label=False, seed=3)["label"] == small["label"]


def test_tensorized_split_is_exactly_the_processor_output():
    """Training data goes through the processor once into tensors; the values are those `with_transform` gives."""
    split = load_medical_dataset("medmnist", "pneumoniamnist", data_dir=data_path("medmnist"),
                                 filename="pneumoniamnist_subset.npz", verification_mode="no_checks")["validation"]
    split = split.select(range(70))
    transform = medical_transform(MedNetImageProcessor(variant="gray", image_size=32), split.features)
    rows = tensorize(split, transform, "cpu", "validation", chunk=16)
    expected = split.with_transform(transform)[:]
    assert len(rows) == 70 and torch.equal(rows.pixel_values, expected["pixel_values"])
    assert torch.equal(rows.labels, expected["labels"])
    batch = rows.__getitems__([3, 0, 69])  # one gather per batch
    assert torch.equal(batch["pixel_values"], expected["pixel_values"][[3, 0, 69]])
    assert torch.equal(batch["labels"], expected["labels"][[3, 0, 69]])


@pytest.mark.slow
def test_augmentation_is_seeded_and_can_be_turned_off(backbone, tmp_path):
    """Same seed, same run (the new head and the views are seeded), whatever the global generator held before;
    --no-augment trains on other inputs."""
    common = ["--model", str(backbone), *PNEUMONIA, "--data-dir", str(data_path("medmnist")), "--max-steps", "4",
              "--batch-size", "32", "--label-fraction", "0.1", "--report-to", "none"]
    losses = {}
    for name, extra in (("a", []), ("b", []), ("off", ["--no-augment"])):
        torch.manual_seed(len(name) + 7 * (name == "b"))  # whatever the process drew before: the run is its seed's
        assert cli_main(["finetune", *common, *extra, "--output-dir", str(tmp_path / name)]) == 0
        record = json.loads((tmp_path / name / "results.json").read_text())
        assert record["tensorized"] and record["arguments"]["augment"] is (name != "off")
        losses[name] = record["validation"]["eval_loss"]
    assert losses["a"] == losses["b"] and losses["a"] != losses["off"]


@pytest.mark.slow
def test_linear_probe_keeps_the_backbone(backbone, tmp_path):
    record = finetune(str(backbone), "medmnist:pneumoniamnist", data_path("medmnist"), tmp_path / "probe",
                      linear_probe=True, max_steps=6, batch_size=32, label_fraction=0.2, no_checks=True,
                      options={"filename": "pneumoniamnist_subset.npz"}, report_to="none")
    tuned = MedNetForImageClassification.from_pretrained(record["export"])
    original = MedNetModel.from_pretrained(backbone)
    tuned_state = tuned.timm_model.state_dict()
    for key, value in original.timm_model.state_dict().items():  # weights and BatchNorm statistics alike
        torch.testing.assert_close(tuned_state[key], value, rtol=0, atol=0, msg=key)


def test_head_for_other_labels_stops_before_training(tmp_path):
    config = MedNetConfig(architecture="resnet18", image_size=28, num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    trained = tmp_path / "three-classes"
    MedNetForImageClassification(config).save_pretrained(trained)
    with pytest.raises(ValueError, match=r"head for 3 labels \['a', 'b', 'c'\], the dataset has 2 .*--new-head"):
        finetune(str(trained), "medmnist:pneumoniamnist", data_path("medmnist"), tmp_path / "run",
                 no_checks=True, options={"filename": "pneumoniamnist_subset.npz"})
    assert not (tmp_path / "run").exists()


def test_not_a_classification_set(backbone, tmp_path):
    with pytest.raises(ValueError, match="drive has no class labels"):
        finetune(str(backbone), "drive", data_path("fundus_drive"), tmp_path / "run")


# ---------------------------------------------------------------------------------------------------- issue 11, item 8


def _image_folder(root, counts: dict, split_counts: dict | None = None):
    """An image folder of real brain MRI slices: `counts` {class: n} (under `train/` when `split_counts` gives a
    validation split too)."""
    sources = {c: sorted((data_path("brain_mri/train") / c).iterdir()) for c in ("glioma", "meningioma", "notumor", "pituitary")}
    layouts = {"": counts} if split_counts is None else {"train/": counts, "validation/": split_counts}
    offset = 0
    for prefix, per_class in layouts.items():
        for label, n in per_class.items():
            (root / f"{prefix}{label}").mkdir(parents=True, exist_ok=True)
            for source in sources[label][offset : offset + n]:
                shutil.copy(source, root / f"{prefix}{label}" / source.name)
        offset += 50
    return root


@pytest.mark.slow
def test_last_training_batch_of_one_image_trains(backbone, tmp_path, capsys):
    """18 training images at --batch-size 17 leave a last batch of one, which BatchNorm cannot train on: the run
    drops that batch (a different image each epoch) instead of stopping with BatchNorm's error."""
    folder = _image_folder(tmp_path / "mri", {"glioma": 9, "notumor": 9}, {"glioma": 2, "notumor": 2})
    out = tmp_path / "run"
    code = cli_main(["finetune", "--model", str(backbone), "--dataset", "imagefolder", "--data-dir", str(folder),
                     "--batch-size", "17", "--epochs", "2", "--output-dir", str(out), "--report-to", "none"])
    assert code == 0, capsys.readouterr().err[-3000:]
    record = json.loads((out / "results.json").read_text())
    assert record["train_rows"] == 18 and record["steps"] == 2  # one full batch per epoch


@pytest.mark.parametrize("problem", ["one_class", "bad_header_and_nan_volume", "stray_file"])
def test_unusable_folders_are_refused_before_training(problem, backbone, tmp_path, capsys):
    """A one-class folder, files whose header or voxels cannot give an image, and a stray file beside the class
    folders are refused while the dataset is built, naming the problem: nothing is trained or written."""
    if problem == "one_class":
        folder = _image_folder(tmp_path / "mri", {"glioma": 6})
        expected = r"the training set has 1 class\(es\) \['glioma'\] of 1 \['glioma'\]; a classifier needs at least 2"
    elif problem == "stray_file":
        folder = _image_folder(tmp_path / "mri", {"glioma": 3, "notumor": 3})
        shutil.copy(data_path("misc/retina.jpg"), folder / "retina.jpg")
        expected = r"1 image\(s\) lie beside the class sub-folders .*'retina.jpg'"
    else:
        folder = _image_folder(tmp_path / "mri", {"glioma": 3, "notumor": 3})
        rv.dicom_with("dicom/MR_small.dcm", folder / "glioma" / "ww0.dcm", WindowWidth=0)
        rv.nan_nifti(folder / "notumor" / "nan.nii.gz")
        expected = r"2 unreadable file\(s\)(?=(.|\n)*glioma/ww0.dcm: .*WindowWidth 0)(?=(.|\n)*notumor/nan.nii.gz: .*NaN or infinite)"
    out = tmp_path / "run"
    code = cli_main(["finetune", "--model", str(backbone), "--dataset", "imagefolder", "--data-dir", str(folder),
                     "--max-steps", "2", "--output-dir", str(out), "--report-to", "none"])
    assert code == 2
    assert re.search(expected, capsys.readouterr().err)
    assert not out.exists()
