"""transformers pipelines on a saved MedNet, with a PNG path and a DICOM path."""

import pytest
import torch
from conftest import data_path
from transformers import pipeline

from mednet_hf import MedNetForImageClassification, MedNetImageProcessor


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from mednet_hf import MedNetConfig

    config = MedNetConfig(architecture="resnet18", image_size=32, num_labels=2, id2label={0: "normal", 1: "abnormal"})
    model = MedNetForImageClassification(config).eval()
    path = tmp_path_factory.mktemp("pipeline-checkpoint")
    model.save_pretrained(path)
    return path, model


@pytest.mark.parametrize("relative", ["cxr/00000001_000.png", "dicom/CT_small.dcm", "cxr/Fake_MONOHR1.dcm"])
def test_image_classification_pipeline(checkpoint, relative):
    path, model = checkpoint
    image = str(data_path(relative))
    results = pipeline("image-classification", model=str(path))(image)
    assert sorted(r["label"] for r in results) == ["abnormal", "normal"]
    # The pipeline's PIL route (load_image → .convert("RGB")) gives what the processor gives on the path itself:
    # the full-precision DICOM data, not the 8-bit display copy.
    with torch.no_grad():
        logits = model(**MedNetImageProcessor.from_pretrained(path)(image, return_tensors="pt")).logits
    expected = dict(zip(["normal", "abnormal"], logits.softmax(-1)[0].tolist()))
    for r in results:
        assert r["score"] == pytest.approx(expected[r["label"]], abs=1e-6)


@pytest.mark.parametrize("relative", ["cxr/00000001_000.png", "dicom/CT_small.dcm"])
def test_image_feature_extraction_pipeline(checkpoint, relative):
    path, model = checkpoint
    image = str(data_path(relative))
    pooled = pipeline("image-feature-extraction", model=str(path), pool=True)(image)
    with torch.no_grad():
        pixels = MedNetImageProcessor.from_pretrained(path)(image, return_tensors="pt").pixel_values
        expected = model.forward_head(model.forward_features(pixels), pre_logits=True)
    torch.testing.assert_close(torch.tensor(pooled), expected, atol=1e-5, rtol=1e-5)
