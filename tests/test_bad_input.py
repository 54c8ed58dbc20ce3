"""Bad input gets a ValueError whose message names the file or array and says what is wrong; the table at the end
runs every malformed or edge-case input of issue 11 through both processor backends and the image-folder builder."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import real_variants as rv
import torch
from conftest import data_path
from helpers import run_python
from oracles import pydicom_unit
from PIL import Image

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


# ---------------------------------------------------------------------------------------------------- the table
#
# input → outcome, for the malformed and edge-case inputs of issue 11, each built from a real file. Every outcome is
# a tensor equal to an independent oracle (no NaN, no silent change) or a ValueError subclass whose message names
# the input and the problem. Anything else (another exception type, a NaN, a different image) fails the row.

SERIES = "dicom_series/mr_t1_vestibular_schwannoma"


def _series_files():
    folder = data_path(SERIES)
    return sorted(folder.glob("*.dcm"), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def _pil_unit(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image, dtype=np.float32)[None] / 255


def _same(reference, **kwargs):
    return ("same", reference, kwargs)


def _equal(array):
    return ("equal", np.asarray(array, dtype=np.float32))


def _refused(pattern):
    return ("refused", pattern)


# Each row: name → (tmp_path → (input, call kwargs, expected outcome)).
TABLE = {
    # 1. a file is read by its content, whatever its name; metadata never changes the pixels
    "dicom_named_png": lambda tmp: (str(rv.renamed_dicom(tmp / "export_0001.png")), {},
                                    _equal(pydicom_unit(data_path("dicom/MR_small.dcm"))[None])),
    "png_with_text_chunks": lambda tmp: (str(rv.png_with_text(tmp / "notes.png")), {},
                                         _equal(_pil_unit(data_path("cxr/00000001_000.png")))),
    "jpeg_with_exif": lambda tmp: (str(rv.jpeg_with_exif(tmp / "exif.jpg")), {}, _same(str(data_path("cxr/16747_3_1.jpg")))),
    # 2. a series slice is windowed with its own header, as the file alone
    "series_slice_own_window": lambda tmp: (str(data_path(SERIES)), {"slice_index": 60}, _same(str(_series_files()[60]))),
    # 3. header values DICOM forbids, and settings that cannot work
    "window_width_0": lambda tmp: (str(rv.dicom_with("dicom/MR_small.dcm", tmp / "ww0.dcm", WindowWidth=0)), {},
                                   _refused(r"WindowWidth 0(\.0)? is not a valid LINEAR window")),
    "window_width_nan": lambda tmp: (str(rv.dicom_with("dicom/MR_small.dcm", tmp / "wwnan.dcm", WindowWidth="NaN")), {},
                                     _refused(r"WindowWidth nan is not a valid|WindowWidth NaN is not a valid")),
    "window_width_negative": lambda tmp: (str(rv.dicom_with("dicom/MR_small.dcm", tmp / "wwneg.dcm", WindowWidth=-400)), {},
                                          _refused(r"WindowWidth -400(\.0)? is not a valid")),
    "rescale_slope_0": lambda tmp: (str(rv.dicom_with("dicom/CT_small.dcm", tmp / "slope0.dcm", RescaleSlope=0)), {},
                                    _refused(r"RescaleSlope is 0")),
    "percentiles_reversed": lambda tmp: (str(data_path("dicom/CT_small.dcm")), {"intensity": "percentile", "percentiles": (99, 1)},
                                         _refused(r"percentiles must be \(low, high\) with 0 ≤ low < high ≤ 100, got \(99, 1\)")),
    "bool_mask": lambda tmp: (_drive_mask() > 0, {}, _equal((_drive_mask() > 0)[None])),
    "nifti_with_nan": lambda tmp: (str(rv.nan_nifti(tmp / "nan.nii.gz")), {}, _refused(r"1 voxel\(s\) are NaN or infinite")),
    "tiff_with_nan": lambda tmp: (str(rv.nan_tiff(tmp / "nan.tif")), {}, _refused(r"1 pixel\(s\) are NaN or infinite")),
    # 4. implicit VR leaves LUT Data as raw bytes
    "implicit_vr_voi_lut": lambda tmp: (lambda made: (str(made[0]), {}, _equal(made[1][None])))(rv.implicit_vr_voi_lut(tmp / "implicit_lut.dcm")),
    # 5. two radiographs sharing a SeriesInstanceUID are no volume
    "fake_series_folder": lambda tmp: (str(rv.fake_series_pair(tmp / "pair")[0].parent), {}, _refused(r"not slices of one volume")),
    # 6. palettes are applied; an identity rescale changes nothing
    "palette_color": lambda tmp: (lambda made: (str(made[0]), {"num_channels": 3}, _equal(np.moveaxis(made[1], -1, 0) / 255)))(rv.palette_dicom(tmp / "palette.dcm")),
    "identity_rescale_uint8": lambda tmp: (str(rv.dicom_with(rv.CR_DICOM, tmp / "identity.dcm", RescaleSlope=1, RescaleIntercept=0)), {},
                                           _same(str(data_path(rv.CR_DICOM)))),
    # 10. error messages that say what is wrong
    "png_claims_30000_squared": lambda tmp: (str(rv.decompression_bomb_png(tmp / "huge.png")), {}, _refused(r"decompression bomb|exceeds limit")),
    "bits_allocated_8_on_16_bit": lambda tmp: (str(rv.dicom_with("dicom/CT_small.dcm", tmp / "bits8.dcm", BitsAllocated=8, BitsStored=8, HighBit=7)), {},
                                               _refused(r"PixelData holds 32768 bytes but the header describes 16384 .*BitsAllocated")),
    "url": lambda tmp: ("https://example.com/scans/chest.png", {}, _refused(r"URLs are not fetched")),
    # 11. issue 26: a signed VOI LUT (a dataset row holds its int16 pixels as uint16), a palette image without its
    # palette, and a header number that is not a number: read, or refused naming the file, on every route
    "signed_voi_lut": lambda tmp: (lambda made: (str(made), {}, _equal(pydicom_unit(made)[None])))(rv.signed_voi_lut(tmp / "signed_lut.dcm")),
    "palette_without_palette": lambda tmp: (str(rv.palette_without_palette(tmp / "no_palette.dcm")), {},
                                            _refused(r"cannot be read \(ValueError: No suitable Palette Color Lookup Table")),
    "number_of_frames_1A": lambda tmp: (str(rv.number_of_frames_not_a_number(tmp / "frames_1A.dcm")), {},
                                       _refused(r"cannot be read \(ValueError: invalid literal for int\(\) with base 10: '1A'\)")),
}


def _drive_mask() -> np.ndarray:
    with Image.open(data_path("fundus_drive/training/mask/21_training_mask.gif")) as mask:
        return np.asarray(mask.convert("L"))


def _plain(cls, num_channels: int = 1):
    variant = "gray" if num_channels == 1 else "color"
    return cls(variant=variant, do_resize=False, do_center_crop=False, do_normalize=False)


def _named(value) -> str:
    """What an error message must name for this input."""
    if isinstance(value, np.ndarray):
        return "<array"
    return Path(value).name if "://" not in value else value


@pytest.mark.parametrize("row", sorted(TABLE))
@pytest.mark.parametrize("cls", BACKENDS)
def test_bad_input_table(cls, row, tmp_path):
    value, kwargs, expected = TABLE[row](tmp_path)
    kwargs = dict(kwargs)
    processor = _plain(cls, kwargs.pop("num_channels", 1))
    if expected[0] == "refused":
        with pytest.raises(ValueError, match=expected[1]) as info:
            processor(value, return_tensors="pt", **kwargs)
        assert _named(value) in str(info.value), f"the message does not name the input: {info.value}"
        return
    out = processor(value, return_tensors="pt", **kwargs)["pixel_values"][0]
    assert torch.isfinite(out).all()
    if expected[0] == "same":
        reference = processor(expected[1], return_tensors="pt", **expected[2])["pixel_values"][0]
        torch.testing.assert_close(out, reference, rtol=0, atol=0)
    else:
        np.testing.assert_allclose(out.numpy(), expected[1], rtol=0, atol=1e-6)


FILE_ROWS = [row for row in sorted(TABLE) if row not in ("series_slice_own_window", "percentiles_reversed", "bool_mask",
                                                        "fake_series_folder", "url")]


def test_bad_input_table_through_the_image_folder_builder(tmp_path):
    """The same files in one image folder: refused ones are listed by name with the reader's reason, before any row
    is used; the rest give rows whose pixel_values equal the processor's for the file."""
    from mednet_hf.builders import DataFileError
    from mednet_hf.data import load_medical_dataset, medical_transform

    folder, made = tmp_path / "folder", {}
    for row in FILE_ROWS:
        value, kwargs, expected = TABLE[row](tmp_path / "made" / row)
        target = folder / f"{row}_{Path(value).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(value, target)
        made[target.name] = (kwargs, expected)
    cache = tmp_path / "cache"
    with pytest.raises(DataFileError) as info:
        load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache)
    lines = {line.strip().split(":", 1)[0]: line for line in str(info.value).splitlines() if line.startswith("  ")}
    refused = {name for name, (_, expected) in made.items() if expected[0] == "refused"}
    assert set(lines) == refused, str(info.value)
    for name in refused:
        assert re.search(made[name][1][1], lines[name]), lines[name]

    rows = load_medical_dataset("imagefolder", data_dir=folder, cache_dir=cache, on_error="skip")["train"]
    assert sorted(rows["source_file"]) == sorted(set(made) - refused)
    for index, name in enumerate(rows["source_file"]):
        kwargs, _ = made[name]
        processor = _plain(MedNetImageProcessor, kwargs.get("num_channels", 1))
        from_row = rows.with_transform(medical_transform(processor, rows.features))[index]["pixel_values"]
        from_file = processor(str(folder / name), return_tensors="pt")["pixel_values"][0]
        assert torch.isfinite(from_row).all()
        torch.testing.assert_close(from_row, from_file, rtol=0, atol=0, msg=name)
