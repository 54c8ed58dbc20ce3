"""`mednet evaluate` reproduces the `test` block `mednet finetune` wrote for the same checkpoint."""

import json
import shutil

import pytest
from conftest import data_path

from mednet_hf.cli import main as cli_main
from mednet_hf.evaluate_model import evaluate_model

pytestmark = pytest.mark.slow  # end to end: RUN_SLOW=1

# Trainer bookkeeping that differs between any two runs; everything else must be equal.
TIMING = ("test_runtime", "test_samples_per_second", "test_steps_per_second", "epoch")


def test_evaluate_matches_the_finetune_test_block(finetuned, tmp_path, capsys):
    out = tmp_path / "eval"
    code = cli_main(["evaluate", "--model", finetuned["export"], "--dataset", "medmnist:pneumoniamnist",
                     "--data-dir", str(data_path("medmnist")), "--option", "filename=pneumoniamnist_subset.npz",
                     "--no-checks", "--output-dir", str(out)])
    assert code == 0 and "test (" in capsys.readouterr().out
    record = json.loads((out / "results.json").read_text())
    theirs, ours = finetuned["test"], record["test"]
    compared = set(theirs) - set(TIMING)
    assert {"test_auroc", "test_accuracy", "test_loss", "test_f1_pneumonia"} <= compared
    assert compared <= set(ours)
    for key in sorted(compared):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), key
    # per-class table and the calibration plot
    assert set(record["per_class"]) == {"normal", "pneumonia"}
    assert record["per_class"]["pneumonia"]["f1"] == pytest.approx(theirs["test_f1_pneumonia"])
    png = out / "calibration.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum(record["calibration"]["bin_count"]) == record["rows"] == 624


def test_evaluate_refuses_a_model_for_other_classes(finetuned, tmp_path):
    folder = tmp_path / "images"
    for name in ("cat_a", "cat_b"):
        (folder / name).mkdir(parents=True)
        shutil.copy(data_path("cxr/00000001_000.png"), folder / name / "x.png")
    with pytest.raises(ValueError, match=r"no 'test' split"):
        evaluate_model(finetuned["export"], "imagefolder", folder, tmp_path / "out")
    with pytest.raises(ValueError, match=r"predicts \['normal', 'pneumonia'\].*\['cat_a', 'cat_b'\]"):
        evaluate_model(finetuned["export"], "imagefolder", folder, tmp_path / "out", split="train")
