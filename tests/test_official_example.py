"""transformers' own image-classification example (`tests/run_image_classification.py`, upstream's script with only
what transformers 5 / datasets 5 removed adapted) fine-tunes `mednet/gray` and `mednet/color` unchanged, offline,
on real images: its preprocessing converts every image to RGB and builds torchvision transforms from the
processor's `size`, `image_mean` and `image_std` (issue 11, item 9)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, data_path

from mednet_hf import MedNetConfig, MedNetForImageClassification
from mednet_hf.bundled import install_bundled
from mednet_hf.intensity import LUMA_WEIGHTS

SCRIPT = REPO_ROOT / "tests" / "run_image_classification.py"


def _folder(root, source: str, classes: tuple[str, ...], per_class: int = 12):
    for label in classes:
        (root / label).mkdir(parents=True)
        for path in sorted((data_path(source) / label).iterdir())[:per_class]:
            shutil.copy(path, root / label / path.name)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("variant,source,classes", [
    ("gray", "brain_mri/train", ("glioma", "notumor")),
    ("color", "histo_lc25000", ("lung_aca", "lung_n")),
])
def test_official_script_runs_unchanged(variant, source, classes, tmp_path):
    install_bundled()  # into this session's HF_HOME, which the script's process shares
    train = _folder(tmp_path / "images", source, classes)  # 24 images: 20 train (15% held out), batches of 4
    # The script loads its metric with evaluate.load("accuracy"), which finds a local module folder of that name
    # before asking the Hub: the project's own accuracy module, as an offline user would place it.
    shutil.copytree(REPO_ROOT / "mednet_hf" / "metrics" / "accuracy", tmp_path / "accuracy")
    args = [sys.executable, str(SCRIPT), "--model_name_or_path", f"mednet/{variant}", "--trust_remote_code", "True",
            "--ignore_mismatched_sizes", "True", "--train_dir", str(train), "--output_dir", str(tmp_path / "out"),
            "--do_train", "--do_eval", "--max_steps", "20", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "4", "--remove_unused_columns", "False", "--save_strategy", "no",
            "--report_to", "none", "--seed", "0", "--logging_steps", "5"]
    result = subprocess.run(args, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 20
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses and all(0 < float(loss) < 100 for loss in losses)
    metrics = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert 0 <= metrics["eval_accuracy"] <= 1
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "mednet" and config["variant"] == variant
    assert sorted(config["label2id"]) == sorted(classes)


def test_gray_model_takes_three_channels_as_luma(tiny_config):
    """The rule the script relies on: a gray MedNet given 3 channels sees their luma (0.299, 0.587, 0.114), and a
    gray image stored as 3 equal channels exactly that gray."""
    torch.manual_seed(0)
    model = MedNetForImageClassification(tiny_config(num_labels=2)).eval()
    rgb = torch.randn(2, 3, 32, 32)
    luma = torch.einsum("c,bchw->bhw", torch.tensor(LUMA_WEIGHTS), rgb)[:, None]
    gray = rgb[:, :1].repeat(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(rgb).logits, model(luma).logits)
        torch.testing.assert_close(model(gray).logits, model(rgb[:, :1]).logits, rtol=0, atol=0)
    color = MedNetForImageClassification(MedNetConfig(architecture="resnet18", image_size=32, variant="color"))
    with pytest.raises(ValueError, match=r"expects pixel_values of shape \(batch, 3, height, width\)"):
        color(rgb[:, :1])
