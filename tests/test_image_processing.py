"""MedNetImageProcessor: the input types medical users have, the channel policy, and preprocessor_config.json."""

import json

import numpy as np
import pydicom
import pytest
import torch
from conftest import data_path
from PIL import Image
from transformers import AutoImageProcessor

from mednet_hf import MedNetConfig, MedNetImageProcessor, MedNetImageProcessorPil

BACKENDS = [MedNetImageProcessor, MedNetImageProcessorPil]


def _unit(processor_cls=MedNetImageProcessorPil, **kwargs):
    """A processor that stops after the intensity convention (no resize, crop or normalisation)."""
    return processor_cls(do_resize=False, do_center_crop=False, do_normalize=False, **kwargs)


@pytest.fixture(scope="module")
def xray():
    with Image.open(data_path("cxr/00000001_000.png")) as image:
        return np.array(image)  # uint8 (512, 512)


@pytest.fixture(scope="module")
def ct_hu():
    ds = pydicom.dcmread(data_path("dicom/CT_Explicit_Little.dcm"))
    return (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.int16)


@pytest.mark.parametrize("cls", BACKENDS)
def test_no_argument_processor_is_a_gray_default(cls, xray):
    out = cls()(Image.fromarray(xray), return_tensors="pt").pixel_values
    assert out.shape == (1, 1, 224, 224)


@pytest.mark.parametrize("cls", BACKENDS)
def test_every_input_type_gives_the_same_pixels(cls, xray):
    processor = cls(image_size=64)
    reference = processor(xray, return_tensors="pt").pixel_values
    rgb = np.repeat(xray[..., None], 3, axis=-1)
    same = [
        Image.fromarray(xray),  # L
        Image.fromarray(rgb),  # RGB, converted by luma (equal channels → the same gray)
        Image.fromarray(np.dstack([rgb, np.full_like(xray, 7)])),  # RGBA: alpha dropped
        xray[None],  # 1xHxW
        xray[..., None],  # HxWx1
        rgb.transpose(2, 0, 1),  # CxHxW
        torch.from_numpy(xray),
        xray.astype(np.float32) / 255.0,  # float already in [0, 1] is taken as is
        str(data_path("cxr/00000001_000.png")),
    ]
    for image in same:
        torch.testing.assert_close(processor(image, return_tensors="pt").pixel_values, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", BACKENDS)
def test_16_bit_and_hounsfield_inputs(cls, ct_hu):
    processor = _unit(cls)
    # int16 Hounsfield units with a preset; the same values as a float32 array and a torch tensor.
    lung = [processor(x, window="lung", return_tensors="pt").pixel_values for x in
            (ct_hu, ct_hu.astype(np.float32), torch.from_numpy(ct_hu))]
    expected = np.clip((ct_hu - (-600 - 750)) / 1500, 0, 1)
    for out in lung:
        np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-6)
    # uint16 as a PIL I;16 image and as an array: min-max by default.
    raw16 = (ct_hu.astype(np.int32) + 1024).clip(0).astype(np.uint16)
    for image in (Image.fromarray(raw16), raw16):
        out = processor(image, return_tensors="pt").pixel_values[0, 0].numpy()
        np.testing.assert_allclose(out, (raw16 - raw16.min()) / float(raw16.max() - raw16.min()), atol=1e-6)
    pct = processor(ct_hu, intensity="percentile", percentiles=[1, 99], return_tensors="pt").pixel_values
    low, high = np.percentile(ct_hu.astype(np.float32), [1, 99])
    np.testing.assert_allclose(pct[0, 0].numpy(), np.clip((ct_hu - low) / (high - low), 0, 1), atol=1e-5)


def test_gray_to_color_replicates(xray):
    out = _unit(variant="color")(xray, return_tensors="pt").pixel_values
    assert out.shape == (1, 3, 512, 512)
    torch.testing.assert_close(out[:, 0], out[:, 2])
    np.testing.assert_allclose(out[0, 1].numpy(), xray / 255.0, atol=1e-6)


def test_batches_and_mixed_sizes(xray):
    processor = MedNetImageProcessor(image_size=48)
    batch = processor([xray, xray[:300, :200], str(data_path("dicom/MR_small.dcm"))], return_tensors="pt")
    assert batch.pixel_values.shape == (3, 1, 48, 48)
    stacked = processor(np.stack([xray, xray])[..., None], return_tensors="pt")  # a 4-D (N, H, W, 1) batch
    assert stacked.pixel_values.shape == (2, 1, 48, 48)
    with pytest.raises(ValueError, match=r"\(2, 512, 512\) has no channel axis"):  # (N, H, W): batch or volume?
        processor(np.stack([xray, xray]))


@pytest.mark.parametrize("cls", BACKENDS)
def test_preprocessor_config_round_trip(cls, tmp_path, ct_hu):
    processor = cls(variant="color", image_size=40, crop_pct=0.875, window=[40, 400], intensity="window", frame=2)
    processor.save_pretrained(tmp_path)
    for backend, expected_cls in (("torchvision", MedNetImageProcessor), ("pil", MedNetImageProcessorPil)):
        loaded = AutoImageProcessor.from_pretrained(tmp_path, backend=backend)
        assert type(loaded) is expected_cls
        assert loaded.to_dict() | {"auto_map": None} == processor.to_dict() | {"auto_map": None}
        assert (loaded.num_channels, loaded.window, loaded.intensity, loaded.frame) == (3, [40, 400], "window", 2)
        assert loaded.size.shortest_edge == 46 and loaded.crop_size.height == 40
        out = loaded(ct_hu, return_tensors="pt").pixel_values
        torch.testing.assert_close(out, processor(ct_hu, return_tensors="pt").pixel_values, atol=1e-3, rtol=0)


def test_processor_from_model_config():
    config = MedNetConfig(architecture="resnet18", variant="color", image_size=96, crop_pct=0.9)
    processor = MedNetImageProcessor.from_model_config(config)
    assert processor.num_channels == 3 and list(processor.image_mean) == config.image_mean
    assert processor.crop_size.height == 96 and processor.size.shortest_edge == round(96 / 0.9)


def test_geometry_has_one_home_the_model_config(tmp_path):
    from mednet_hf import MedNetModel
    from mednet_hf.image_processing_mednet import GEOMETRY_KEYS

    MedNetModel(MedNetConfig(architecture="resnet18", image_size=48, crop_pct=0.875, interpolation="bicubic")).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["pretrained_cfg"]["input_size"] == [1, 48, 48]
    # A model folder without a processor file: the processor is built from config.json alone.
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert (loaded.crop_size.height, loaded.size.shortest_edge, loaded.resample) == (48, 55, 3)
    # Saved beside the model, a processor keeps only its medical options; a conflicting size is not kept.
    MedNetImageProcessor(intensity="percentile", image_size=999).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert not set(GEOMETRY_KEYS) & set(saved) and saved["intensity"] == "percentile"
    again = AutoImageProcessor.from_pretrained(tmp_path)
    assert (again.crop_size.height, again.intensity) == (48, "percentile")
    # Explicit arguments still win.
    assert AutoImageProcessor.from_pretrained(tmp_path, crop_size={"height": 40, "width": 40}).crop_size.height == 40


def test_pydicom_dataset_tiff_and_nifti_inputs():
    from mednet_hf import read_nifti

    processor = _unit()
    path = data_path("dicom/MR_small.dcm")
    from_dataset = processor(pydicom.dcmread(path), return_tensors="np").pixel_values
    np.testing.assert_array_equal(from_dataset, processor(str(path), return_tensors="np").pixel_values)

    tiff = data_path("fundus_drive/training/images/21_training.tif")
    color = _unit(variant="color")(str(tiff), return_tensors="np").pixel_values
    with Image.open(tiff) as image:
        np.testing.assert_allclose(color[0], np.moveaxis(np.asarray(image), -1, 0) / 255.0, atol=1e-6)

    nifti = data_path("nifti/MR_Gd.nii.gz")
    for axis, index in ((2, 10), (0, None)):
        out = processor(str(nifti), slice_axis=axis, slice_index=index, return_tensors="np").pixel_values[0, 0]
        plane = read_nifti(nifti).slice(index, axis).pixels
        np.testing.assert_allclose(out, (plane - plane.min()) / (plane.max() - plane.min()), atol=1e-6)
