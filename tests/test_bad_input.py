"""Bad input gets a ValueError whose message names the file or array and says what is wrong."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import data_path
from helpers import run_python

from mednet_hf import MedNetImageProcessor, MedNetImageProcessorPil, read_dicom, read_dicom_series, read_nifti

BACKENDS = [MedNetImageProcessor, MedNetImageProcessorPil]


def test_truncated_dicom(tmp_path):
    source = data_path("dicom/CT_small.dcm").read_bytes()
    header_only = tmp_path / "header_only.dcm"
    header_only.write_bytes(source[:300])
    half = tmp_path / "half_pixels.dcm"
    half.write_bytes(source[: len(source) - 10_000])
    for path, message in ((header_only, "header_only.dcm: "), (half, "half_pixels.dcm: pixel data cannot be decoded")):
        for cls in BACKENDS:
            with pytest.raises(ValueError, match=message):
                cls()(str(path))


def test_non_dicom_file_named_dcm(tmp_path):
    fake = tmp_path / "scan.dcm"
    shutil.copy(data_path("misc/ihc.png"), fake)
    with pytest.raises(ValueError, match="scan.dcm: not a DICOM file"):
        MedNetImageProcessor()(str(fake))
    with pytest.raises(ValueError, match="no such file"):
        MedNetImageProcessor()(str(tmp_path / "missing.png"))


def test_dicom_without_pixels():
    with pytest.raises(ValueError, match="rtstruct.dcm: Modality RTSTRUCT is an RT Structure Set"):
        read_dicom(data_path("dicom/rtstruct.dcm"))


def test_missing_jpeg_decoder_names_the_package(tmp_path):
    """With the pylibjpeg decoders hidden, JPEG-lossless CT says what to install (pydicom's Pillow plugin cannot
    decode process 14)."""
    path = str(data_path("dicom/CT_JPEG70.dcm"))
    result = run_python(
        f"""
        import json
        from mednet_hf import MedNetImageProcessor
        try:
            MedNetImageProcessor()({path!r})
        except ValueError as e:
            print(json.dumps({{"type": type(e).__name__, "message": str(e)}}))
        else:
            print(json.dumps({{"type": None}}))
        """,
        blocked=("pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm", "python_gdcm"),
        cwd=tmp_path,
    )
    # mednet_hf itself must stay importable here: run from the repository.
    assert result.returncode == 0, result.stderr[-2000:]
    error = json.loads(result.stdout.strip().splitlines()[-1])
    assert error["type"] == "MedicalImageError"
    assert "CT_JPEG70.dcm" in error["message"] and "JPEG Lossless" in error["message"]
    assert "pip install 'mednet-hf[dicom]'" in error["message"]


@pytest.mark.parametrize(
    "array,message",
    [
        (np.zeros((0, 10), np.float32), r"empty image"),
        (np.array([[0.0, np.nan], [1.0, 2.0]], np.float32), r"1 pixel\(s\) are NaN or infinite"),
        (np.array([[0.0, np.inf], [-np.inf, 2.0]], np.float32), r"2 pixel\(s\) are NaN or infinite"),
        (np.zeros((1, 2, 3, 4, 5), np.float32), r"too many dimensions \(5\)"),
        (np.zeros((64, 64, 64), np.int16), r"no channel axis of size 1, 3 or 4"),
        (np.zeros((8, 8, 5), np.uint8), r"no channel axis of size 1, 3 or 4"),
        (np.zeros((4, 4), np.complex64), r"unsupported dtype complex64"),
    ],
)
@pytest.mark.parametrize("cls", BACKENDS)
def test_bad_arrays(cls, array, message):
    with pytest.raises(ValueError, match=message) as info:
        cls()(array)
    assert "array" in str(info.value)  # names what it got


def test_nan_tensor_and_intensity_errors():
    with pytest.raises(ValueError, match=r"<tensor \(4, 4\)>: 1 pixel"):
        tensor = torch.zeros(4, 4)
        tensor[1, 2] = float("nan")
        MedNetImageProcessor()(tensor)
    with pytest.raises(ValueError, match="intensity='none' needs values in"):
        MedNetImageProcessor(intensity="none")(np.full((4, 4), 3.0, np.float32))
    with pytest.raises(ValueError, match="intensity='window' but no window"):
        MedNetImageProcessor(intensity="window")(np.ones((4, 4), np.float32))


def test_unknown_window_preset_and_settings():
    with pytest.raises(ValueError, match="unknown window preset 'lungs'; choose one of"):
        MedNetImageProcessor(window="lungs")
    with pytest.raises(ValueError, match="unknown window preset 'liverish'"):
        MedNetImageProcessor()(np.ones((4, 4), np.int16), window="liverish")
    with pytest.raises(ValueError, match="num_channels must be 1"):
        MedNetImageProcessor(num_channels=2, image_mean=[0.5, 0.5], image_std=[0.5, 0.5])
    with pytest.raises(ValueError, match="image_mean has 3 value"):
        MedNetImageProcessor(image_mean=[0.5, 0.5, 0.5])


def test_volume_and_series_errors(tmp_path):
    not_nifti = tmp_path / "broken.nii.gz"
    not_nifti.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="broken.nii.gz: not a readable NIfTI file"):
        read_nifti(not_nifti)
    with pytest.raises(ValueError, match="volume 9 requested, the file has 2"):
        read_nifti(data_path("nifti/example4d.nii.gz"), volume_index=9)
    with pytest.raises(ValueError, match="no DICOM files"):
        read_dicom_series(tmp_path)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(data_path("dicom/CT_small.dcm"), mixed / "a.dcm")
    shutil.copy(data_path("dicom/MR_small.dcm"), mixed / "b.dcm")
    with pytest.raises(ValueError, match="holds 2 DICOM series"):
        read_dicom_series(mixed)
