"""One intensity path: for every readable real file, the processor given the path, the image-folder dataset with
`medical_transform`, and a transformers pipeline's preprocessing give identical `pixel_values` (max abs difference
0); and the header windows are pydicom's `apply_voi_lut`, mapped onto [0, 1]."""

import shutil

import numpy as np
import pydicom
import pytest
import torch
from conftest import DATA_DIR, data_path
from oracles import pydicom_unit
from test_real_data import OUTCOMES
from transformers import pipeline

from mednet_hf import MedNetForImageClassification, MedNetImageProcessor, read_path
from mednet_hf.phi import public_name
from mednet_hf.data import load_medical_dataset, medical_transform
from mednet_hf.pil_plugin import to_pil

SIZE = 32
READABLE = sorted(relative for relative, error in OUTCOMES.items() if error is None)
VOLUMES = sorted(f"nifti/{p.name}" for p in (DATA_DIR / "nifti").glob("*.nii*")) + ["dicom_series/mr_t1_vestibular_schwannoma"]


@pytest.fixture(scope="module", params=["gray", "color"])
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def classifier(variant, tmp_path_factory):
    """A saved classifier with its processor: what `pipeline()` loads."""
    from mednet_hf import MedNetConfig

    folder = tmp_path_factory.mktemp(f"clf-{variant}")
    torch.manual_seed(0)
    MedNetForImageClassification(MedNetConfig(architecture="resnet18", variant=variant, image_size=SIZE, num_labels=2)).save_pretrained(folder)
    processor = MedNetImageProcessor(variant=variant, image_size=SIZE)
    processor.save_pretrained(folder)
    return folder, processor


@pytest.fixture(scope="module")
def folder_rows(tmp_path_factory):
    """The image-folder dataset of every readable 2-D sample (flat: no labels), keyed by its source file."""
    root = tmp_path_factory.mktemp("samples")
    for relative in READABLE:
        (root / relative.replace("/", "__")).symlink_to(data_path(relative))
    dataset = load_medical_dataset("imagefolder", data_dir=str(root), cache_dir=str(tmp_path_factory.mktemp("cache")))["train"]
    rows = {}
    for i, (source, index) in enumerate(zip(dataset["source_file"], dataset["slice_index"])):
        rows.setdefault(source.replace("__", "/"), {})[index] = i
    return rows, dataset


def _dataset_pixels(dataset, index, processor):
    return dataset.with_transform(medical_transform(processor, dataset.features))[index]["pixel_values"]


@pytest.mark.parametrize("relative", READABLE)
def test_file_dataset_and_pipeline_give_identical_pixels(relative, classifier, folder_rows):
    folder, processor = classifier
    path = str(data_path(relative))
    from_path = processor(path, return_tensors="pt").pixel_values[0]
    frames, dataset = folder_rows[0][public_name(relative)], folder_rows[1]  # DICOM UIDs in names are hashed
    index = frames[None] if None in frames else frames[len(frames) // 2]  # a multi-frame file: its middle frame
    from_row = _dataset_pixels(dataset, index, processor)
    pipe = pipeline("image-classification", model=str(folder), image_processor=processor)
    from_pipeline = pipe.preprocess(path)["pixel_values"][0]
    assert torch.equal(from_path, from_row), (from_path - from_row).abs().max()
    assert torch.equal(from_path, from_pipeline), (from_path - from_pipeline).abs().max()


@pytest.mark.parametrize("relative", VOLUMES)
def test_volume_middle_slice_through_all_three_paths(relative, classifier, tmp_path):
    folder, processor = classifier
    source = data_path(relative)
    volume = read_path(source)
    n = volume.num_slices(2)
    from_path = processor(str(source), return_tensors="pt").pixel_values[0]  # default: the middle axial slice
    # The dataset: every (n // 2)-th slice, so the middle one is a row.
    root = tmp_path / "volume"
    root.mkdir()
    if source.is_dir():
        shutil.copytree(source, root / source.name, symlinks=True)
    else:
        (root / source.name).symlink_to(source)
    dataset = load_medical_dataset("imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "cache"), slice_stride=n // 2)["train"]
    index = dataset["slice_index"].index(n // 2)
    assert torch.equal(from_path, _dataset_pixels(dataset, index, processor))
    # The pipeline: a NIfTI path opens through the PIL plugin; a series folder is not a file, so hand it the slice.
    pipe = pipeline("image-classification", model=str(folder), image_processor=processor)
    image = str(source) if source.is_file() else to_pil(volume.slice())
    assert torch.equal(from_path, pipe.preprocess(image)["pixel_values"][0])


WINDOWED = ["dicom/CT_Explicit_Little.dcm", "dicom/CT_JPEG70.dcm", "dicom/MG_Explicit_Little.dcm", "dicom/MR_small.dcm",
            "dicom/nibabel_0.dcm"]


@pytest.mark.parametrize("relative", WINDOWED)
def test_header_window_is_pydicoms_voi(relative):
    path = data_path(relative)
    assert "WindowWidth" in pydicom.dcmread(path, stop_before_pixels=True)
    plain = MedNetImageProcessor(do_resize=False, do_center_crop=False, do_normalize=False)
    unit = plain(str(path), return_tensors="np").pixel_values[0, 0]
    np.testing.assert_allclose(unit, pydicom_unit(path), rtol=0, atol=1e-6)


def test_series_slices_keep_their_own_window():
    """The MR series has many different windows: each acquired slice is windowed with its own header."""
    folder = data_path("dicom_series/mr_t1_vestibular_schwannoma")
    volume = read_path(folder)
    assert len({str(voi) for voi in volume.slice_voi}) > 1
    files = sorted(folder.glob("*.dcm"), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    plain = MedNetImageProcessor(do_resize=False, do_center_crop=False, do_normalize=False)
    for k in (10, 60, 110):
        from_series = plain(str(folder), slice_index=k, return_tensors="np").pixel_values[0, 0]
        np.testing.assert_allclose(from_series, pydicom_unit(files[k]), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(from_series, plain(str(files[k]), return_tensors="np").pixel_values[0, 0])
