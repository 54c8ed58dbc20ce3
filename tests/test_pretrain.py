"""Pretraining: two processes under `accelerate launch` (gloo on CPU) for each objective, a run killed after a
checkpoint and resumed, the grouped forward, the uint8 source cache, and the errors that must stop a run before it
trains."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA_DIR, REPO_ROOT, data_path

from mednet_hf.training import data as pretraining_data_module
from mednet_hf.training.augment import step_generator
from mednet_hf.training.data import pretraining_data
from mednet_hf.training.objectives import pretrain_views
from mednet_hf.training.pretrain import CheckpointError, build_model, pretrain
from mednet_hf.training.recipe import load_recipe

PNEUMONIA = {
    "name": "pneumonia", "dataset": "medmnist", "config": "pneumoniamnist", "data_dir": "medmnist",
    "options": {"filename": "pneumoniamnist_subset.npz"}, "verification_mode": "no_checks", "num_classes": 2, "weight": 0.7,
}
SERIES = {"name": "mr_series", "dataset": "imagefolder", "data_dir": "dicom_series", "labelled": False, "weight": 0.3}


def _recipe(tmp_path: Path, objectives: dict, **overrides) -> Path:
    recipe = {
        "variant": "gray", "backbone": "resnet18", "image_size": 28, "steps": 4, "batch_size": 8, "lr": 0.001,
        "checkpoint_every": 2, "log_every": 1, "sources": [PNEUMONIA, SERIES], "objectives": objectives, **overrides,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env() -> dict:
    data_path("medmnist")  # skip or fail here, not inside the subprocess
    return {**os.environ, "MEDNET_DATA_DIR": str(DATA_DIR), "PYTHONPATH": str(REPO_ROOT)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "objectives",
    [
        {"supervised": {"weight": 1.0}},
        {"contrastive": {"weight": 1.0, "prototypes": 16, "local_crops": 2}},
        {"restoration": {"weight": 1.0}},
    ],
    ids=["supervised", "contrastive", "restoration"],
)
def test_two_processes_end_with_identical_weights(tmp_path, objectives):
    recipe, out = _recipe(tmp_path, objectives), tmp_path / "run"
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mednet_hf.cli", "pretrain",
               "--recipe", str(recipe), "--output-dir", str(out)]
    # torchrun starts the processes; ACCELERATE_USE_CPU makes each Accelerator join a gloo group on the CPU.
    result = subprocess.run(command, env={**_env(), "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    record = json.loads((out / "results.json").read_text())
    assert record["processes"] == 2 and record["steps"] == 4
    assert len(record["rank_checksums"]) == 2 and record["ranks_identical"]
    assert all(v == v for v in record["final_losses"].values())  # no NaN
    # The two ranks trained on different examples (each takes its own slice of every global batch).
    seen = [{i for line in (out / f"data_order-rank{r}.jsonl").read_text().splitlines() for i in json.loads(line)["index"]} for r in (0, 1)]
    assert seen[0] and seen[1] and seen[0] != seen[1]
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "preprocessor_config.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


ALL_OBJECTIVES = {
    "supervised": {"weight": 1.0},
    "contrastive": {"weight": 1.0, "prototypes": 16, "local_crops": 2},
    "restoration": {"weight": 1.0},
}


@pytest.mark.parametrize("labelled_rows", [True, False], ids=["mixed-batch", "no-labelled-row"])
def test_one_backbone_call_per_resolution_and_a_gradient_for_every_parameter(tmp_path, labelled_rows):
    recipe = load_recipe(_recipe(tmp_path, ALL_OBJECTIVES))
    torch.manual_seed(0)
    model = build_model(recipe, heads=[(0, 2, 1.0)])
    calls = []
    model.backbone.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    views = pretrain_views(28, recipe.objectives)(images, step_generator(0, 0, 0))
    source = torch.tensor([0, 0, 1, 0, 1, 1]) if labelled_rows else torch.ones(6, dtype=torch.long)
    label = torch.where(source == 0, torch.tensor([1, 0, -1, 1, -1, -1]), -1)
    losses = model(views | {"label": label, "source": source})
    # Full size: supervised view, 2 global crops, Genesis input; half size: 2 local crops.
    assert calls == [(6 * 4, 1, 28, 28), (6 * 2, 1, 14, 14)]
    assert set(losses) == {"supervised", "contrastive", "restoration", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert (losses["supervised"] > 0) == labelled_rows
    losses["loss"].backward()
    # What lets DDP run with find_unused_parameters=False.
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.slow
def test_sources_are_decoded_once_into_a_uint8_cache_that_later_runs_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDNET_DATA_DIR", str(DATA_DIR))
    data_path("medmnist")
    cache = tmp_path / "cache"
    recipe = load_recipe(_recipe(tmp_path, {"supervised": {"weight": 1.0}}, cache_dir=str(cache)))
    decoded, decode = [], pretraining_data_module._decode
    monkeypatch.setattr(pretraining_data_module, "_decode", lambda source, *args: decoded.append(source.name) or decode(source, *args))
    first = pretraining_data(recipe)
    assert decoded == ["pneumonia", "mr_series"] and len(list(cache.glob("*.safetensors"))) == 2
    second = pretraining_data(recipe)
    assert decoded == ["pneumonia", "mr_series"]  # nothing decoded again
    assert first.images.dtype == torch.uint8 and first.images.shape == (3882 + 120, 1, 28, 28)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.classes == [2, None] and set(first.labels[:3882].tolist()) == {0, 1} and (first.labels[3882:] == -1).all()
    assert torch.equal(first.sample(0, 5, 64), second.sample(0, 5, 64))
    bigger = load_recipe(_recipe(tmp_path, {"supervised": {"weight": 1.0}}, cache_dir=str(cache), image_size=32))
    assert pretraining_data(bigger).images.shape[-1] == 32 and len(decoded) == 4  # another size, another entry


@pytest.mark.slow
def test_a_model_that_fails_to_compile_trains_eagerly_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDNET_DATA_DIR", str(DATA_DIR))
    data_path("medmnist")

    def compile_that_fails(module, **kwargs):
        def first_call(*args, **kwargs):
            raise AssertionError("stride mismatch in convolution_backward")  # as torch 2.11 did with channels_last

        return first_call

    monkeypatch.setattr(torch, "compile", compile_that_fails)
    recipe = _recipe(tmp_path, {"supervised": {"weight": 1.0}}, steps=2, checkpoint_every=2, compile=True)
    with pytest.warns(UserWarning, match="compile: true failed .*stride mismatch.*training eagerly instead"):
        record = pretrain(recipe, tmp_path / "run")
    assert record["steps"] == 2 and all(v == v for v in record["final_losses"].values())


def _order(out: Path) -> dict:
    """Batch number → example ids, the last write winning (a resumed run rewrites the batches after its checkpoint)."""
    order = {}
    for line in (out / "data_order-rank0.jsonl").read_text().splitlines():
        entry = json.loads(line)
        order[entry["batch"]] = entry["index"]
    return order


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_data_order(tmp_path):
    objectives = {"supervised": {"weight": 1.0}, "contrastive": {"weight": 1.0, "prototypes": 16, "local_crops": 2}}
    # fp32: bf16 on a CPU with more than one thread is not bitwise repeatable (its kernels reduce across threads in
    # varying order), so two uninterrupted bf16 runs already differ in the 3rd digit of the loss
    recipe = _recipe(tmp_path, objectives, steps=24, checkpoint_every=4, mixed_precision="no")
    command = [sys.executable, "-m", "mednet_hf.cli", "pretrain", "--recipe", str(recipe), "--output-dir"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    run = subprocess.Popen([*command, str(killed)], env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-00000008").exists():
        assert run.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.01)
    run.kill()  # SIGKILL: no clean-up, no final save
    run.wait()
    assert run.returncode == -9 and not (killed / "results.json").exists()

    resumed = subprocess.run([*command, str(killed), "--resume"], env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    straight = subprocess.run([*command, str(whole)], env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-4000:]

    a, b = json.loads((killed / "results.json").read_text()), json.loads((whole / "results.json").read_text())
    assert a["steps"] == b["steps"] == 24
    assert _order(killed) == _order(whole) and len(_order(whole)) == 24
    for name, value in b["final_losses"].items():
        assert a["final_losses"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


@pytest.mark.slow
def test_corrupt_checkpoint_and_existing_runs_stop_before_training(tmp_path):
    recipe = _recipe(tmp_path, {"restoration": {"weight": 1.0}}, steps=2, checkpoint_every=2)
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "mednet_hf.cli", "pretrain", "--recipe", str(recipe), "--output-dir", str(out)],
                            env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with pytest.raises(CheckpointError, match="already holds checkpoints: pass --resume"):
        pretrain(recipe, out)
    broken = tmp_path / "broken"
    shutil.copytree(out / "checkpoints" / "step-00000002", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint .*broken is corrupt or incomplete"):
        pretrain(recipe, tmp_path / "other", resume=str(broken))
    (broken / "trainer_state.json").unlink()
    with pytest.raises(CheckpointError, match="corrupt or incomplete .*trainer_state.json"):
        pretrain(recipe, tmp_path / "other", resume=str(broken))
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        pretrain(recipe, tmp_path / "empty", resume="latest")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"sources": [{**PNEUMONIA, "dataset": "isic"}]}, r"source 'pneumonia' names unknown dataset 'isic'"),
        ({"objectives": {"jigsaw": {}}}, r"unknown objective 'jigsaw'"),
        ({"learning_rate": 0.1}, r"unknown key\(s\) \['learning_rate'\]"),
        ({"sources": [SERIES], "objectives": {"supervised": {}}}, "supervised objective needs at least one labelled source"),
        ({"spatial_dims": 3, "image_size_schedule": [[2, 32]]}, "MedNet-3D pretrains at one size"),
        ({"spatial_dims": 3, "objectives": {"contrastive": {}}}, "multi-crop views are 2-D only"),
    ],
)
def test_recipe_errors(tmp_path, change, message):
    change = dict(change)
    path = _recipe(tmp_path, change.pop("objectives", {"supervised": {"weight": 1.0}}), **change)
    with pytest.raises(ValueError, match=message):
        load_recipe(path)


def test_label_count_mismatch_and_unreachable_imagenet_stop_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDNET_DATA_DIR", str(DATA_DIR))
    data_path("medmnist")
    mismatch = _recipe(tmp_path, {"supervised": {"weight": 1.0}}, sources=[{**PNEUMONIA, "num_classes": 3}])
    with pytest.raises(ValueError, match=r"recipe says num_classes=3 but the dataset has 2 classes \['normal', 'pneumonia'\]"):
        pretrain(mismatch, tmp_path / "a")
    assert not (tmp_path / "a" / "checkpoints").exists()
    imagenet = _recipe(tmp_path, {"restoration": {"weight": 1.0}}, init="imagenet")
    with pytest.raises(ValueError, match="init: imagenet needs timm's pretrained weights for 'resnet18'.*use init: scratch"):
        pretrain(imagenet, tmp_path / "b")  # the tests run offline: the weights are not reachable
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_recipe_extends_another_and_sizes_are_checked_before_any_work(tmp_path):
    base = _recipe(tmp_path, ALL_OBJECTIVES)
    arm = tmp_path / "arm.yaml"
    arm.write_text(yaml.safe_dump({"extends": base.name, "objectives": {"supervised": {"weight": 1.0}}, "steps": 7}))
    recipe = load_recipe(arm)
    assert list(recipe.objectives) == ["supervised"] and recipe.steps == 7  # replaced whole
    assert [s.name for s in recipe.sources] == ["pneumonia", "mr_series"] and recipe.batch_size == 8  # from the base
    loop = tmp_path / "loop.yaml"
    loop.write_text(yaml.safe_dump({"extends": "loop.yaml"}))
    with pytest.raises(ValueError, match="extends: makes a loop"):
        load_recipe(loop)
    with pytest.raises(ValueError, match=r"recipe .*missing\.yaml: no such file"):
        load_recipe(tmp_path / "missing.yaml")
    for key, value in [("batch_size", 0), ("batch_size", -4), ("steps", 0), ("grad_accum", 0), ("lr", 0)]:
        with pytest.raises(ValueError, match=rf"recipe .*{key} must be"):
            load_recipe(base, **{key: value})
    with pytest.raises(ValueError, match="image_size_schedule takes"):
        load_recipe(base, image_size_schedule=[[4, 32], [2, 64]])
    schedule = load_recipe(base, image_size_schedule=[[2, 32], [5, 64]])
    assert [schedule.size_at(s) for s in range(7)] == [28, 28, 32, 32, 32, 64, 64] and schedule.image_sizes == [28, 32, 64]


def test_learning_rate_cycles_restart_and_depend_on_the_step_alone(tmp_path):
    from mednet_hf.training.pretrain import lr_schedule

    def factors(steps):
        recipe = load_recipe(_recipe(tmp_path, {"supervised": {}}), steps=steps, warmup_steps=2, cycle_steps=10)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return [lr_schedule(optimizer, recipe).lr_lambdas[0](s) for s in range(steps)]

    short, long = factors(12), factors(32)
    assert long[:12] == short  # a resume with more steps goes on with the same cycles
    assert long[2] == 1.0 and long[12] == 1.0 and long[22] == 1.0  # each cycle starts at the peak ...
    assert long[11] < 0.03 and long[21] < 0.03  # ... and ends annealed


@pytest.mark.slow
def test_progressive_sizes_warm_restart_and_segments_in_the_record(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDNET_DATA_DIR", str(DATA_DIR))
    data_path("medmnist")
    objectives = {"supervised": {"weight": 1.0}, "restoration": {"weight": 1.0}}
    recipe = _recipe(tmp_path, objectives, steps=4, checkpoint_every=2, image_size_schedule=[[2, 32]],
                     cache_dir=str(tmp_path / "cache"))
    first = pretrain(recipe, tmp_path / "a")
    assert [s["image_sizes"] for s in first["segments"]] == [[28, 32]]
    assert first["segments"][0]["start"] == "scratch" and first["segments"][0]["images"] == 4 * 8
    assert sum(d["drawn"] for d in first["data"]) == 4 * 8 and first["cpu_seconds_total"] > 0
    config = json.loads((tmp_path / "a" / "final" / "config.json").read_text())
    assert config["pretrained_cfg"]["input_size"] == [1, 32, 32]  # exported for the last size it trained at

    # Resumed with more steps: a second segment, and the first one as its checkpoint recorded it.
    resumed = pretrain(recipe, tmp_path / "a", resume="latest", steps=6)
    assert [(s["from_step"], s["to_step"]) for s in resumed["segments"]] == [(0, 4), (4, 6)]
    assert resumed["segments"][1]["start"] == "resumed from step-00000004 at step 4"
    assert sum(d["drawn"] for d in resumed["data"]) == 6 * 8
    for source in resumed["data"]:  # each segment's share of every source's epochs adds up to the run's
        assert sum(s["source_epochs"][source["name"]] for s in resumed["segments"]) == pytest.approx(source["epochs"])
    second = resumed["segments"][1]["source_epochs"]
    assert sum(second[d["name"]] * d["rows"] for d in resumed["data"]) == pytest.approx(2 * 8)  # its own 2 steps

    # A warm restart on a new machine: the backbone starts from the saved weights, and the record says which.
    from mednet_hf import MedNetModel
    from mednet_hf.loading import file_sha256

    export = tmp_path / "a" / "final"
    warm = pretrain(recipe, tmp_path / "b", init=str(export), steps=1, image_size_schedule=[])
    assert warm["segments"][0]["start"] == f"warm restart from {export} (weights sha256 {file_sha256(export / 'model.safetensors')})"
    model = build_model(load_recipe(recipe, image_size_schedule=[]), heads=[(0, 2, 1.0)], init=str(export))
    saved = MedNetModel.from_pretrained(export).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in model.backbone.state_dict().items())
    with pytest.raises(ValueError, match=r"init: .*nowhere.*neither scratch, imagenet nor a MedNet checkpoint"):
        pretrain(recipe, tmp_path / "c", init=str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_a_step_with_non_finite_gradients_is_skipped_and_a_diverged_run_stops(tmp_path, monkeypatch):
    from mednet_hf.training import objectives
    from mednet_hf.training.pretrain import MAX_SKIPPED_IN_A_ROW, DivergedError

    monkeypatch.setenv("MEDNET_DATA_DIR", str(DATA_DIR))
    data_path("medmnist")
    forward, calls = objectives.PretrainModel.forward, []

    def poisoned(bad_calls):
        def wrapped(self, views):
            out = forward(self, views)
            calls.append(1)
            if len(calls) in bad_calls:  # as a bf16 overflow would: the loss and every gradient become NaN
                out = out | {"loss": out["loss"] * float("nan")}
            return out
        return wrapped

    monkeypatch.setattr(objectives.PretrainModel, "forward", poisoned({2}))
    recipe = _recipe(tmp_path, {"supervised": {"weight": 1.0}}, steps=3, checkpoint_every=3, mixed_precision="no")
    with pytest.warns(UserWarning, match="step 2: the gradients are not finite"):
        record = pretrain(recipe, tmp_path / "a")
    assert record["segments"][0]["skipped_steps"] == 1 and record["steps"] == 3
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "a" / "final" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())  # the NaN step never reached the weights

    calls.clear()
    monkeypatch.setattr(objectives.PretrainModel, "forward", poisoned(set(range(1, 100))))
    with pytest.warns(UserWarning), pytest.raises(DivergedError, match=f"{MAX_SKIPPED_IN_A_ROW} steps in a row"):
        pretrain(_recipe(tmp_path, {"supervised": {"weight": 1.0}}, steps=20, checkpoint_every=50), tmp_path / "b")


@pytest.mark.slow
def test_a_new_objective_is_one_class_and_one_registry_entry(tmp_path, monkeypatch):
    """The extension point: an objective declares the views it reads and encodes; nothing else changes."""
    from mednet_hf.training import objectives

    class FeatureVariance(objectives.Objective):
        """A toy objective: keep the pooled features of the global crops spread out."""

        reads = encodes = ("global_crops",)

        @classmethod
        def build(cls, config, heads, reduction, **options):
            return cls()

        def loss(self, encoded, batch):
            return -encoded["global_crops"][1].float().var(dim=0).mean()

    monkeypatch.setitem(objectives.OBJECTIVES, "feature_variance", FeatureVariance)
    monkeypatch.setenv("MEDNET_DATA_DIR", str(DATA_DIR))
    data_path("medmnist")
    recipe = _recipe(tmp_path, {"supervised": {"weight": 1.0}, "feature_variance": {"weight": 0.1}}, steps=2, checkpoint_every=2)
    record = pretrain(recipe, tmp_path / "run")
    assert set(record["final_losses"]) == {"supervised", "feature_variance", "loss"}
    assert all(v == v for v in record["final_losses"].values())
