"""`mednet benchmark --quick` on real data: the output's structure, and every number traced back to a run."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, data_path

from mednet_hf.cli import main as cli_main
from mednet_hf.options import resolve_portable_path
from mednet_hf.training.benchmark import epochs_to_reach, load_study, study_file
from mednet_hf.training.finetune import FinetuneArguments


def test_epochs_to_reach_the_share_of_the_best():
    history = [{"epoch": 1.0, "eval_auroc": 0.6}, {"epoch": 2.0, "eval_auroc": 0.86}, {"epoch": 3.0, "eval_auroc": 0.9}]
    assert epochs_to_reach(history, 0.95) == 2.0  # 0.86 ≥ 0.95 × 0.9
    assert epochs_to_reach(history, 1.0) == 3.0
    assert epochs_to_reach([], 0.95) is None


def test_recorded_command_reproduces_every_option(monkeypatch, tmp_path):
    """The command a run records parses back, through the command's own parser, to the same arguments: a
    True-default option turned off, a dict option holding a non-string value, and a path under MEDNET_DATA_DIR
    written as $MEDNET_DATA_DIR/... included."""
    import os
    import shlex

    from mednet_hf.cli import build_parser
    from mednet_hf.options import command_line, options_from

    data = tmp_path / "data"
    monkeypatch.setenv("MEDNET_DATA_DIR", str(data))
    arguments = FinetuneArguments(model="m", dataset="medmnist:pneumoniamnist", augment=False, no_checks=True,
                                  label_fraction=0.1, options={"filename": "x.npz", "on_error": "skip", "slice_stride": 2},
                                  data_dir=str(data / "medmnist"))
    command = command_line("finetune", arguments)
    assert "--no-augment" in command and "--no-checks" in command and '"$MEDNET_DATA_DIR"/medmnist' in command
    expanded = os.path.expandvars(" ".join(shlex.split(command.replace('"$MEDNET_DATA_DIR"', "$MEDNET_DATA_DIR"))))
    parsed = build_parser().parse_args(shlex.split(expanded)[1:])
    assert options_from(parsed, FinetuneArguments) == arguments


def test_packaged_studies_load_and_quick_replaces_what_it_names():
    for name in ("gray", "color"):
        full, quick = load_study(study_file(name)), load_study(study_file(name), quick=True)
        assert full.seeds == [0, 1, 2] and full.label_fractions == [0.01, 0.1, 1.0]
        assert quick.seeds == [0] and quick.finetune["epochs"] < full.finetune["epochs"]
        assert quick.finetune["batch_size"] == full.finetune["batch_size"]  # the rest of the recipe is kept
        assert any(t.domain == "out" for t in full.tasks) and any(t.domain == "in" for t in full.tasks)


def test_unknown_study_keys_are_refused(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"variant": "gray", "model": "mednet/gray", "tasks": [], "epochz": 3}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epochz'\]"):
        load_study(path)


@pytest.mark.slow
def test_quick_benchmark_on_real_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDNET_DATA_DIR", str(data_path("")))
    study = yaml.safe_load((REPO_ROOT / "training/configs/benchmark_gray.yaml").read_text())
    study["quick"] = {"seeds": [0], "label_fractions": [0.05], "finetune": {"epochs": 2, "batch_size": 64}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "bench"
    code = cli_main(["benchmark", "--study", str(path), "--output-dir", str(out), "--quick", "--task", "pneumonia"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "imagenet" in printed and "skipped" in printed  # offline: timm's weights are not reachable, and it says so
    results = json.loads((out / "results.json").read_text())
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.md", "label_fractions.png", "convergence.png"}
    assert (out / "label_fractions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {(r["init"], r["label_fraction"], r["seed"]) for r in results["runs"]} == {("mednet", 0.05, 0), ("scratch", 0.05, 0)}
    for run in results["runs"]:
        # Every number comes from the run's own record, written by `mednet finetune`.
        record = json.loads(open(resolve_portable_path(run["record"])).read())
        assert run["test_auroc"] == record["test"]["test_auroc"] and run["test_accuracy"] == record["test"]["test_accuracy"]
        assert [h["eval_auroc"] for h in run["history"]] == [h["eval_auroc"] for h in record["history"]]
        assert len(run["history"]) == 2 and run["epochs_to_95"] in (1.0, 2.0)
        assert run["command"].startswith("mednet finetune --model ") and "--label-fraction 0.05" in run["command"]
        assert 0.0 <= run["test_auroc"] <= 1.0
    for row in results["summary"]:
        members = [r["test_auroc"] for r in results["runs"] if r["init"] == row["init"]]
        assert row["test_auroc"][0] == pytest.approx(np.mean(members))
        assert f"{row['test_auroc'][0]:.3f}" in (out / "results.md").read_text()
    for init in ("mednet", "scratch"):
        frozen = results["frozen"]["pneumonia"][init]
        assert 0.0 <= frozen["linear_probe"]["test_auroc"] <= 1.0 and 0.0 <= frozen["knn"]["test_auroc"] <= 1.0
        # traceable: the command that reruns it, and the digest `sha256sum` gives for the weights it started from
        assert "--task pneumonia" in frozen["command"] and f"--init {init}" in frozen["command"]
        assert 0 < frozen["linear_probe"]["test_auroc_bootstrap_std"] < 0.1
    from mednet_hf.loading import file_sha256

    assert results["frozen"]["pneumonia"]["mednet"]["weights_sha256"] == file_sha256(REPO_ROOT / "mednet_hf/bundled/gray/model.safetensors")
    assert results["frozen"]["pneumonia"]["mednet"]["linear_probe"]["test_auroc"] != results["frozen"]["pneumonia"]["scratch"]["linear_probe"]["test_auroc"]
    # The same study again in the same folder reuses the finished runs (same arguments) instead of repeating them.
    stamps = {run["record"]: Path(resolve_portable_path(run["record"])).stat().st_mtime_ns for run in results["runs"]}
    assert cli_main(["benchmark", "--study", str(path), "--output-dir", str(out), "--quick", "--task", "pneumonia"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["test_auroc"] for r in again["runs"]] == [r["test_auroc"] for r in results["runs"]]
    assert {record: Path(resolve_portable_path(record)).stat().st_mtime_ns for record in stamps} == stamps
    # Not when the starting weights at the same path have changed (here: the digest the run started from differs).
    scratch = next(Path(resolve_portable_path(r["record"])) for r in results["runs"] if r["init"] == "scratch")
    assert len((scratch.parent / "start-weights.sha256").read_text()) == 64
    (scratch.parent / "start-weights.sha256").write_text("0" * 64)
    assert cli_main(["benchmark", "--study", str(path), "--output-dir", str(out), "--quick", "--task", "pneumonia",
                     "--init", "scratch"]) == 0
    assert scratch.stat().st_mtime_ns != stamps[next(r["record"] for r in results["runs"] if r["init"] == "scratch")]
    assert (scratch.parent / "start-weights.sha256").read_text() != "0" * 64


@pytest.mark.slow
def test_an_interrupted_study_writes_what_finished_and_keeps_no_checkpoints(tmp_path, monkeypatch):
    """Ctrl-C (or a time limit's SIGINT) in the middle of a run: the finished runs are written, marked interrupted,
    and the interrupted run's Trainer checkpoints (optimizer states, hundreds of MB) are gone."""
    from mednet_hf.training import benchmark as module

    monkeypatch.setenv("MEDNET_DATA_DIR", str(data_path("")))
    real, calls = module.finetune, []

    def interrupted_second_run(arguments):
        calls.append(arguments)
        if len(calls) == 2:
            (Path(arguments.output_dir) / "checkpoint-7").mkdir(parents=True)
            (Path(arguments.output_dir) / "checkpoint-7" / "optimizer.pt").write_bytes(b"0" * 1024)
            raise KeyboardInterrupt
        return real(arguments)

    monkeypatch.setattr(module, "finetune", interrupted_second_run)
    results = module.benchmark("gray", tmp_path / "bench", tasks=["pneumonia"], inits=["scratch"], seeds=[0, 1],
                               label_fractions=[0.05], finetune={"epochs": 1, "batch_size": 64})
    assert results["interrupted"] and len(results["runs"]) == 1
    assert not list((tmp_path / "bench").rglob("checkpoint-*"))
