"""`mednet export --format onnx`: ONNX Runtime agrees with PyTorch on real images, at any batch size."""

import numpy as np
import pytest
import onnxruntime as ort  # the onnx extra is part of dev: a missing install must fail here, not skip
import torch
from conftest import data_path

from mednet_hf import MedNetConfig, MedNetForImageClassification, MedNetImageProcessor
from mednet_hf.cli import main as cli_main

IMAGES = ["dicom/CT_small.dcm", "cxr/00000001_000.png", "dicom/MR_small.dcm", "cxr/Fake_MONOHR1.dcm", "nifti/anatomical.nii"]


@pytest.mark.slow
def test_onnx_runtime_matches_pytorch_on_real_images(tmp_path, capsys):
    model_dir, onnx_dir = tmp_path / "model", tmp_path / "onnx"
    torch.manual_seed(0)
    config = MedNetConfig(architecture="resnet18", image_size=64, num_labels=4)
    model = MedNetForImageClassification(config).eval()
    # Non-trivial BatchNorm statistics, so that the parity check covers them.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.save_pretrained(model_dir)
    MedNetImageProcessor.from_model_config(config, window="lung").save_pretrained(model_dir)

    assert cli_main(["export", "--model", str(model_dir), "--format", "onnx", "--output-dir", str(onnx_dir)]) == 0
    assert "dynamic batch, height, width" in capsys.readouterr().out
    assert {"model.onnx", "config.json", "preprocessor_config.json"} <= {p.name for p in onnx_dir.iterdir()}

    # The processor saved beside the graph prepares the inputs exactly as the model's own one.
    paths = [str(data_path(p)) for p in IMAGES]
    pixels = MedNetImageProcessor.from_pretrained(model_dir)(paths, return_tensors="pt").pixel_values
    beside = MedNetImageProcessor.from_pretrained(onnx_dir)
    assert beside.window == "lung"
    torch.testing.assert_close(beside(paths, return_tensors="pt").pixel_values, pixels, atol=0, rtol=0)

    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits.numpy()
    for batch in (1, 2, len(paths)):  # the batch dimension is dynamic
        got = session.run(None, {"pixel_values": pixels[:batch].numpy()})[0]
        assert got.shape == (batch, 4) and got.dtype == np.float32
        assert np.abs(got - expected[:batch]).max() <= 1e-4
    assert np.abs(expected).max() > 1e-2  # not a trivial all-zero comparison
    # Height and width are dynamic too: a user's images at another size run as in PyTorch.
    for side in (48, 96):
        other = torch.nn.functional.interpolate(pixels[:2], size=(side, side), mode="bilinear", align_corners=False)
        with torch.no_grad():
            reference = model(pixel_values=other).logits.numpy()
        assert np.abs(session.run(None, {"pixel_values": other.numpy()})[0] - reference).max() <= 1e-4
    # The wrong number of channels is refused by the graph with the input's name and the dimension it expects.
    with pytest.raises(Exception, match=r"pixel_values.*index: 1 Got: 3 Expected: 1|Got: 3.*Expected: 1"):
        session.run(None, {"pixel_values": np.zeros((1, 3, 64, 64), np.float32)})


def test_export_refuses_a_folder_that_is_not_mednet(tmp_path, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "resnet"}')
    assert cli_main(["export", "--model", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
