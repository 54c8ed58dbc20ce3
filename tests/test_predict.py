"""`mednet predict` on real DICOM, chest X-ray and NIfTI files: rows, unreadable files, pipeline parity, no PHI."""

import csv
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import data_path
from safetensors.torch import load_file
from transformers import pipeline

from mednet_hf import MedNetConfig, MedNetForImageClassification, MedNetImageProcessor
from mednet_hf.cli import main as cli_main
from mednet_hf.medical_io import MedicalVolume, is_dicom_file, read_dicom_header, read_path, reader_for
from mednet_hf.predict import predict

LABELS = {0: "normal", 1: "nodule", 2: "effusion"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small classifier saved with its processor, as a finetune run's best/ is."""
    path = tmp_path_factory.mktemp("predict-model")
    torch.manual_seed(0)
    config = MedNetConfig(architecture="resnet18", image_size=32, num_labels=3, id2label=LABELS)
    MedNetForImageClassification(config).eval().save_pretrained(path)
    MedNetImageProcessor.from_model_config(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    inputs = [data_path("dicom"), data_path("cxr"), data_path("nifti/anatomical.nii")]
    out = tmp_path_factory.mktemp("predict")
    code = cli_main(["predict", "--model", str(model_dir), *map(str, inputs), "--output", str(out / "p.csv"),
                     "--top-k", "3", "--batch-size", "8", "--features", str(out / "f.safetensors")])
    with (out / "p.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return code, inputs, rows, out


def _expected_images(inputs) -> dict[str, int]:
    """Oracle: images per readable file, counted from the readers themselves (slices, frames, or one)."""
    counts = {}
    for root in inputs:
        for path in ([root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())):
            if reader_for(path) is None:
                continue
            try:
                content = read_path(path)
            except ValueError:
                continue
            counts[path] = content.num_slices(2) if isinstance(content, MedicalVolume) else content.num_frames
    return counts


def test_one_row_per_readable_image_or_slice(run):
    code, inputs, rows, _ = run
    assert code == 0
    expected = _expected_images(inputs)
    assert len(rows) == sum(expected.values())
    volume = [r for r in rows if r["path"].endswith("anatomical.nii")]
    assert [int(r["slice"]) for r in volume] == list(range(expected[data_path("nifti/anatomical.nii")]))
    frames = [r for r in rows if r["path"].endswith("MR_Explicit_Little_MultiFrame.dcm")]
    assert len(frames) == expected[data_path("dicom/MR_Explicit_Little_MultiFrame.dcm")] > 1
    assert all(r["slice"] == "" for r in rows if r["path"].endswith((".png", ".jpg")))


def test_unreadable_files_are_listed_with_reasons(model_dir, tmp_path, capsys):
    inputs = [data_path("dicom"), data_path("cxr")]
    assert cli_main(["predict", "--model", str(model_dir), *map(str, inputs), "--output", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    listed = {line.split(": ", 1)[0].strip(): line.split(": ", 1)[1] for line in err.splitlines() if line.startswith("  ")}
    names = {path.rsplit("/", 1)[-1]: reason for path, reason in listed.items()}
    assert set(names) == {"rtstruct.dcm", "MR_UnspecifiedLength.dcm", "TBX11K_train.json"}
    assert "RTSTRUCT" in names["rtstruct.dcm"] and "SEG" in names["MR_UnspecifiedLength.dcm"]
    assert ".json" in names["TBX11K_train.json"]
    # --strict stops at the first one, naming it
    assert cli_main(["predict", "--model", str(model_dir), *map(str, inputs), "--output", str(tmp_path / "s.csv"), "--strict"]) == 2
    assert "TBX11K_train.json" in capsys.readouterr().err


def test_probabilities_equal_the_pipeline(run, model_dir):
    _, inputs, rows, _ = run
    classify = pipeline("image-classification", model=str(model_dir))
    by_path = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    checked = 0
    for path, group in by_path.items():
        if "uid-" in path:
            continue  # its real name is hashed in the CSV; the same pixels are checked through Fake_MONOHR1.dcm
        # The pipeline reads the middle slice/frame, as the processor does by default.
        row = group[len(group) // 2] if len(group) > 1 else group[0]
        expected = {r["label"]: r["score"] for r in classify(path, top_k=3)}
        got = {row[f"label_{i}"]: float(row[f"probability_{i}"]) for i in (1, 2, 3)}
        assert set(got) == set(LABELS.values())
        for label, score in got.items():
            assert score == pytest.approx(expected[label], abs=1e-6), (path, label)
        checked += 1
    assert checked >= 15


def test_features_match_the_rows(run, model_dir):
    _, _, rows, out = run
    features = load_file(str(out / "f.safetensors"))["features"]
    assert features.shape == (len(rows), 512)
    model = MedNetForImageClassification.from_pretrained(model_dir).eval()
    first = next(i for i, r in enumerate(rows) if r["path"].endswith("00000001_000.png"))
    pixels = MedNetImageProcessor.from_pretrained(model_dir)(rows[first]["path"], return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(pixels), pre_logits=True)[0]
    torch.testing.assert_close(features[first], expected, atol=1e-5, rtol=1e-5)


def _phi(inputs) -> set[str]:
    values = set()
    for root in inputs:
        for path in ([root] if root.is_file() else root.rglob("*")):
            if path.is_file() and is_dicom_file(path):
                header = read_dicom_header(path)
                values |= {str(header.get(k, "")) for k in ("PatientName", "PatientID")} - {""}
    return values


def test_no_phi_in_the_csv(run):
    _, inputs, rows, out = run
    phi = _phi(inputs)
    assert "CompressedSamples^CT1" in phi and "1234" in phi  # the oracle sees the headers
    text_cells = [v for r in rows for k, v in r.items() if not k.startswith("probability")]
    for value in phi:
        assert not any(value.lower() in cell.lower() for cell in text_cells), value
        assert all(v != value for r in rows for v in r.values()), value
    # A file named after its SOPInstanceUID appears with the UID hashed.
    assert not any("1.2.276.0.7230010" in r["path"] for r in rows)
    assert any(r["path"].endswith("cxr/uid-42aa8a198fac15b5.dcm") for r in rows)


def test_a_folder_named_after_the_patient_is_hidden(model_dir, tmp_path):
    folder = tmp_path / "CompressedSamples_CT1_study" / "CompressedSamples^CT1"
    folder.mkdir(parents=True)
    shutil.copy(data_path("dicom/CT_small.dcm"), folder / "image.dcm")
    rows, unreadable = predict(str(model_dir), [tmp_path], tmp_path / "p.csv", top_k=1, progress=False)
    text = (tmp_path / "p.csv").read_text()
    assert rows == 1 and not unreadable
    assert "CompressedSamples" not in text and "phi-" in text and text.count("/image.dcm") == 1


def test_every_file_in_a_patient_named_folder_is_hidden_not_only_the_dicom(model_dir, tmp_path):
    """A PNG or a note beside the DICOM, shown with the folder's name in clear, would undo the DICOM's `phi-<hash>`."""
    folder = tmp_path / "CompressedSamples_CT1"
    folder.mkdir()
    shutil.copy(data_path("dicom/CT_small.dcm"), folder / "image.dcm")
    shutil.copy(data_path("cxr/00000001_000.png"), folder / "screenshot.png")
    (folder / "notes.txt").write_text("seen")
    rows, unreadable = predict(str(model_dir), [tmp_path], tmp_path / "p.csv", top_k=1, progress=False)
    text = (tmp_path / "p.csv").read_text()
    assert rows == 2 and [Path(u.path).name for u in unreadable] == ["notes.txt"]
    assert "CompressedSamples" not in text + unreadable[0].path and text.count("phi-") == 2


def test_bad_options_name_the_problem(model_dir, tmp_path):
    with pytest.raises(ValueError, match="slice_stride"):
        predict(str(model_dir), [data_path("cxr")], tmp_path / "p.csv", slice_stride=0)
    with pytest.raises(ValueError, match="no inputs"):
        predict(str(model_dir), [], tmp_path / "p.csv")


def test_a_file_name_that_is_not_utf8_is_written_escaped_and_loses_nothing(model_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(data_path("cxr/00000001_000.png"), folder / "plain.png")
    latin1 = os.fsdecode(bytes(folder) + b"/caf\xe9_latin1.png")  # a Latin-1 name on a UTF-8 file system
    shutil.copy(data_path("cxr/00000001_000.png"), latin1)
    out = tmp_path / "p.csv"
    assert cli_main(["predict", "--model", str(model_dir), str(folder), "--output", str(out), "--features",
                     str(tmp_path / "f.safetensors")]) == 0
    with out.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(r["path"]).name for r in rows) == ["caf\\xe9_latin1.png", "plain.png"]
    assert rows[0]["probability_1"] == rows[1]["probability_1"]  # the same pixels
    assert load_file(str(tmp_path / "f.safetensors"))["features"].shape[0] == 2


def test_an_empty_folder_is_an_error_that_says_nothing_was_found(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["predict", "--model", str(model_dir), str(tmp_path / "empty"), "--output", str(tmp_path / "p.csv")]) == 2
    assert "no image, DICOM, NIfTI or series found in" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
