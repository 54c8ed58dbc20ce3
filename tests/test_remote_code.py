"""A saved checkpoint loads with `trust_remote_code=True` in a fresh interpreter that cannot import mednet_hf."""

import pytest
import json

import torch
from conftest import data_path
from helpers import run_python

from mednet_hf import MedNetForImageClassification, MedNetImageProcessor

pytestmark = pytest.mark.slow  # end to end: RUN_SLOW=1


def test_checkpoint_loads_without_the_package(tiny_config, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    model = MedNetForImageClassification(tiny_config(num_labels=3)).eval()
    processor = MedNetImageProcessor.from_model_config(model.config, window="lung")
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    inputs = [str(data_path("dicom/CT_small.dcm")), str(data_path("cxr/00000001_000.png"))]
    with torch.no_grad():
        expected = model(**processor(inputs, return_tensors="pt")).logits

    result = run_python(
        f"""
        import json, torch
        try:
            import mednet_hf
        except ModuleNotFoundError:
            pass
        else:
            raise SystemExit("mednet_hf is importable: the test proves nothing")
        from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoModel, pipeline
        ckpt = {str(checkpoint)!r}
        model = AutoModelForImageClassification.from_pretrained(ckpt, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(ckpt, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            logits = model(**processor({inputs!r}, return_tensors="pt")).logits
        base = AutoModel.from_pretrained(ckpt, trust_remote_code=True)
        pil = AutoImageProcessor.from_pretrained(ckpt, trust_remote_code=True, backend="pil")
        # The DICOM PIL plugin came along with the processor: a pipeline opens a DICOM path.
        pipe = pipeline("image-classification", model=ckpt, trust_remote_code=True)
        top = pipe({inputs[0]!r})
        print(json.dumps({{"logits": logits.tolist(), "base": type(base).__name__, "pil": type(pil).__name__,
                           "pipeline_labels": sorted(r["label"] for r in top)}}))
        """,
        blocked=("mednet_hf",),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    torch.testing.assert_close(torch.tensor(output["logits"]), expected, rtol=0, atol=0)
    assert output["base"] == "MedNetModel" and output["pil"] == "MedNetImageProcessorPil"
    assert output["pipeline_labels"] == ["LABEL_0", "LABEL_1", "LABEL_2"]
