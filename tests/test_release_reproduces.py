"""The shipped release and its study belong together: the study's runs started from the bundled weights, and one of
its rows, rerun from its recorded command in a fresh process that loads `mednet/gray` offline, gives the recorded
test AUROC within ±0.01."""

import json
import shlex

import pytest
from conftest import REPO_ROOT, data_path, run_cli

from mednet_hf.loading import weights_sha256

RECORDS = REPO_ROOT / "model_cards" / "records"


def _study(variant: str) -> dict:
    return json.loads((RECORDS / variant / "benchmark.json").read_text())


@pytest.mark.parametrize("variant", ["gray", "color", "gray-3d"])
def test_the_study_ran_on_the_bundled_weights(variant):
    bundled = weights_sha256(str(REPO_ROOT / "mednet_hf" / "bundled" / variant))
    runs = [r for r in _study(variant)["runs"] if r["init"] == "mednet"]
    assert runs and {r["weights_sha256"] for r in runs} == {bundled}


def _replace(args: list[str], flag: str, value: str) -> list[str]:
    at = args.index(flag)
    return [*args[: at + 1], value, *args[at + 2 :]]


@pytest.mark.slow
def test_a_study_row_reproduces_in_a_fresh_process_from_mednet_gray(tmp_path):
    run = next(r for r in _study("gray")["runs"]
               if (r["init"], r["label_fraction"], r["seed"]) == ("mednet", 0.01, 0))
    args = shlex.split(run["command"])
    assert args[:2] == ["mednet", "finetune"]
    args = _replace(args[2:], "--model", "mednet/gray")  # the hub id, from the bundled copy in a fresh HF_HOME
    args = _replace(args, "--data-dir", str(data_path("medmnist")))
    args = _replace(args, "--output-dir", str(tmp_path / "run"))
    result = run_cli(["finetune", *args], {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["test"]["test_auroc"] == pytest.approx(run["test_auroc"], abs=0.01)
