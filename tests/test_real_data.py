"""Every real sample in ../shared/data/{dicom,cxr,misc}, and a middle slice of every volume, either becomes a
correctly shaped tensor for both variants and both processor backends, or raises a clear ValueError; this file
says which, file by file."""

import numpy as np
import pydicom
import pytest
from conftest import DATA_DIR, data_path
from oracles import pydicom_unit

from mednet_hf import (
    MedicalImageError,
    MedNetImageProcessor,
    MedNetImageProcessorPil,
    read_dicom,
    read_dicom_series,
    read_nifti,
)

IMAGE = None  # the outcome "becomes a tensor"
OUTCOMES = {
    "dicom/CT_Explicit_Little.dcm": IMAGE,
    "dicom/CT_Implicit_Little_Headless_Retired.dcm": IMAGE,  # no File Meta, no SamplesPerPixel: still decodes
    "dicom/CT_JPEG70.dcm": IMAGE,  # JPEG lossless: needs the [dicom] decoders (test_bad_input covers their absence)
    "dicom/CT_small.dcm": IMAGE,
    "dicom/MG_Explicit_Little.dcm": IMAGE,
    "dicom/MR_Explicit_Little_MultiFrame.dcm": IMAGE,
    "dicom/MR_Implicit_Little.dcm": IMAGE,
    "dicom/MR_UnspecifiedLength.dcm": "Modality SEG is a Segmentation object",
    "dicom/MR_small.dcm": IMAGE,
    "dicom/OT_Implicit_Little_Headless.dcm": IMAGE,
    "dicom/US_Explicit_Big_RGB.dcm": IMAGE,
    "dicom/nibabel_0.dcm": IMAGE,
    "dicom/rtstruct.dcm": "Modality RTSTRUCT is an RT Structure Set",
    "cxr/00000001_000.png": IMAGE,
    "cxr/00027426_000.png": IMAGE,
    "cxr/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm": IMAGE,
    "cxr/16747_3_1.jpg": IMAGE,
    "cxr/Fake_MONOHR1.dcm": IMAGE,
    "cxr/covid-19-pneumonia-58-prior.jpg": IMAGE,
    "cxr/tbx11k_test_data/annotations/json/TBX11K_train.json": "not an image file",
    "cxr/tbx11k_test_data/imgs/health/h0001.png": IMAGE,
    "cxr/tbx11k_test_data/imgs/tb/tb0005.png": IMAGE,
    "cxr/tbx11k_test_data/imgs/tb/tb0007.png": IMAGE,
    "misc/ihc.png": IMAGE,
    "misc/microaneurysms.png": IMAGE,
    "misc/retina.jpg": IMAGE,
}
VOLUMES = [
    "nifti/CT_AVM.nii.gz",
    "nifti/CT_pitch.nii.gz",
    "nifti/MR_Gd.nii.gz",
    "nifti/anatomical.nii",
    "nifti/chris_MRA.nii.gz",
    "nifti/chris_PD.nii.gz",
    "nifti/chris_t1.nii.gz",
    "nifti/example4d.nii.gz",
    "nifti/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "dicom_series/mr_t1_vestibular_schwannoma",
]
SIZE = 32


def _processors(variant):
    return [cls(variant=variant, image_size=SIZE) for cls in (MedNetImageProcessor, MedNetImageProcessorPil)]


def test_the_table_covers_every_file(data_dir):
    on_disk = {
        str(p.relative_to(DATA_DIR))
        for folder in ("dicom", "cxr", "misc")
        for p in (DATA_DIR / folder).rglob("*")
        if p.is_file()
    }
    assert on_disk == set(OUTCOMES)
    assert {str(p.relative_to(DATA_DIR)) for p in (DATA_DIR / "nifti").iterdir()} == {
        v for v in VOLUMES if v.startswith("nifti/")
    }


def _check_image(path, **kwargs):
    for variant, channels in (("gray", 1), ("color", 3)):
        outputs = [p(str(path), return_tensors="pt", **kwargs).pixel_values for p in _processors(variant)]
        for out in outputs:
            assert tuple(out.shape) == (1, channels, SIZE, SIZE)
            assert out.isfinite().all()
            assert out.std() > 0  # real content came through, not a constant
        # The two backends agree after normalisation.
        assert (outputs[0] - outputs[1]).abs().max().item() <= 1e-3


@pytest.mark.parametrize("relative", sorted(OUTCOMES))
def test_sample_file(relative):
    path = data_path(relative)
    expected_error = OUTCOMES[relative]
    if expected_error is IMAGE:
        _check_image(path)
    else:
        for processor in _processors("gray") + _processors("color"):
            with pytest.raises(ValueError, match=expected_error) as info:
                processor(str(path))
            assert str(path) in str(info.value)  # the message names the file


@pytest.mark.parametrize("relative", VOLUMES)
def test_volume_middle_slice(relative):
    _check_image(data_path(relative))  # default: middle slice along axis 2


def test_monochrome1_is_inverted_relative_to_raw_pixels():
    path = data_path("cxr/Fake_MONOHR1.dcm")
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    plain = MedNetImageProcessorPil(do_resize=False, do_center_crop=False, do_normalize=False)
    unit = plain(str(path), return_tensors="np").pixel_values[0, 0]
    np.testing.assert_allclose(unit, 1.0 - raw / 255.0, atol=1e-6)
    # Its MONOCHROME2 twin holds the same pixels, shown the other way round.
    twin = plain(str(data_path("cxr/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")), return_tensors="np")
    assert np.corrcoef(unit.ravel(), twin.pixel_values[0, 0].ravel())[0, 1] < -0.99


def test_ct_rescale_and_window_presets_use_hounsfield_units():
    path = data_path("dicom/CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    plain = MedNetImageProcessorPil(do_resize=False, do_center_crop=False, do_normalize=False)
    for preset, (center, width) in {"lung": (-600, 1500), "bone": (400, 1800)}.items():
        unit = plain(str(path), window=preset, return_tensors="np").pixel_values[0, 0]
        np.testing.assert_allclose(unit, np.clip((hu - (center - width / 2)) / width, 0, 1), atol=1e-6)
    explicit = plain(str(path), window=[40, 400], return_tensors="np").pixel_values[0, 0]
    np.testing.assert_allclose(explicit, np.clip((hu - (40 - 200)) / 400, 0, 1), atol=1e-6)


def test_header_window_is_the_default():
    """DICOM's LINEAR window (c - 0.5, w - 1), as pydicom applies it: not the HU presets' (c - w/2) / w."""
    path = data_path("dicom/CT_Explicit_Little.dcm")
    unit = MedNetImageProcessorPil(do_resize=False, do_center_crop=False, do_normalize=False)(
        str(path), return_tensors="np"
    ).pixel_values[0, 0]
    np.testing.assert_allclose(unit, pydicom_unit(path), rtol=0, atol=1e-6)
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    old = np.clip((hu - (float(ds.WindowCenter) - float(ds.WindowWidth) / 2)) / float(ds.WindowWidth), 0, 1)
    assert np.abs(unit - old).max() > 0.005  # the two formulas differ by grey levels on this file


def test_multiframe_frame_selection():
    path = data_path("dicom/MR_Explicit_Little_MultiFrame.dcm")
    frames = pydicom.dcmread(path).pixel_array
    plain = MedNetImageProcessorPil(do_resize=False, do_center_crop=False, do_normalize=False)
    assert read_dicom(path).num_frames == frames.shape[0] == 16
    for frame in (3, None):
        unit = plain(str(path), frame=frame, return_tensors="np").pixel_values[0, 0]
        expected = frames[8 if frame is None else frame] / 255.0  # uint8 data → ÷ 255; default: the middle frame
        np.testing.assert_allclose(unit, expected, atol=1e-6)
    with pytest.raises(ValueError, match="frame 16 requested but the image has 16"):
        plain(str(path), frame=16)


def test_color_to_gray_uses_luma():
    path = data_path("dicom/US_Explicit_Big_RGB.dcm")
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float32) / 255.0
    unit = MedNetImageProcessorPil(do_resize=False, do_center_crop=False, do_normalize=False)(
        str(path), return_tensors="np"
    ).pixel_values[0, 0]
    np.testing.assert_allclose(unit, rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32), atol=1e-6)


def test_dicom_series_is_a_volume_in_position_order():
    folder = data_path("dicom_series/mr_t1_vestibular_schwannoma")
    volume = read_dicom_series(folder)
    assert volume.array.shape == (512, 512, 120)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    by_position = sorted(headers, key=lambda h: float(h.ImagePositionPatient[2]))
    # Slice k of the volume is the file at the k-th position along the normal.
    for k in (0, 57, 119):
        expected = pydicom.dcmread(by_position[k].filename).pixel_array
        np.testing.assert_array_equal(volume.array[..., k], expected)
    z = [float(h.ImagePositionPatient[2]) for h in by_position]
    assert volume.spacing[2] == pytest.approx(abs(np.median(np.diff(z))))


def test_nifti_slicing_by_axis():
    volume = read_nifti(data_path("nifti/CT_AVM.nii.gz"))
    x, y, z = volume.array.shape
    for axis, shape in ((0, (z, y)), (1, (z, x)), (2, (y, x))):
        assert volume.slice(axis=axis).pixels.shape == shape  # rotated: superior/anterior at the top
    with pytest.raises(ValueError, match="slice 9999 requested along axis 2"):
        volume.slice(9999)
    four_d = read_nifti(data_path("nifti/example4d.nii.gz"), volume_index=1)
    assert four_d.array.ndim == 3


def test_patient_identifiers_stay_out_unless_asked():
    path = data_path("dicom/CT_small.dcm")
    name = str(pydicom.dcmread(path).PatientName)
    image = read_dicom(path)
    assert image.phi is None
    assert name not in repr(vars(image))
    from PIL import Image

    with Image.open(path) as pil:  # the PIL plugin carries no identifiers either
        assert name not in repr(pil.info)
    assert read_dicom(path, include_phi=True).phi["PatientName"] == name
    series = read_dicom_series(data_path("dicom_series/mr_t1_vestibular_schwannoma"))
    assert series.phi is None and series.slice().phi is None


def test_reader_errors_are_value_errors():
    assert issubclass(MedicalImageError, ValueError)


def test_voi_lut_sequence_is_applied_to_modality_values(tmp_path):
    """No sample here carries a VOI LUT, so give one to a real CT: a square-root curve over [-1024, 1023] HU."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(data_path("dicom/CT_small.dcm"))
    first, entries, bits = -1024, 2048, 12
    table = np.round(np.sqrt(np.linspace(0, 1, entries)) * (2**bits - 1)).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "SS", [entries, first, bits])  # LUT Descriptor: signed, the first value is negative
    item.add_new(0x00283006, "US", table.tolist())  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    path = tmp_path / "ct_voi_lut.dcm"
    ds.save_as(path)
    hu = pydicom.dcmread(path).pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    unit = MedNetImageProcessorPil(do_resize=False, do_center_crop=False, do_normalize=False)(str(path), return_tensors="np")
    expected = table[np.clip(np.rint(hu) - first, 0, entries - 1).astype(int)] / (2**bits - 1)
    np.testing.assert_allclose(unit.pixel_values[0, 0], expected, atol=1e-6)
    # An explicit window still wins over the header's LUT.
    lung = MedNetImageProcessorPil(do_resize=False, do_center_crop=False, do_normalize=False)(str(path), window="lung", return_tensors="np")
    np.testing.assert_allclose(lung.pixel_values[0, 0], np.clip((hu + 1350) / 1500, 0, 1), atol=1e-6)
