"""The CPU release run's plan (model_cards/release_cpu.py): cycles that fit their CPU time and each end at the
final size, so every cycle's annealed weights are a model of that size."""

import importlib.util

import pytest
from conftest import REPO_ROOT

from mednet_hf.training.recipe import load_recipe


@pytest.fixture(scope="module")
def release_cpu():
    spec = importlib.util.spec_from_file_location("release_cpu", REPO_ROOT / "model_cards" / "release_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cycle_fits_its_cpu_time(release_cpu):
    costs = {28: 0.35, 64: 1.1}
    plan = release_cpu.cycle_plan(7200, costs, 28, 64, 0.25)
    head, tail = plan["head_steps"], plan["cycle_steps"] - plan["head_steps"]
    assert head * costs[28] == pytest.approx(0.75 * 7200, abs=costs[28])
    assert tail * costs[64] == pytest.approx(0.25 * 7200, abs=costs[64])
    one_size = release_cpu.cycle_plan(7200, costs, 28, None, 0.0)
    assert one_size == {"cycle_steps": int(7200 / 0.35), "head_steps": None}


def test_every_cycle_starts_at_the_first_size_and_ends_at_the_final(release_cpu):
    state = {"warmup_steps": 5, "cycle_steps": 40, "head_steps": 30, "first_size": 28, "final_size": 64}
    for cycle in range(4):
        schedule = release_cpu.size_schedule(state, cycle)
        end = state["warmup_steps"] + (cycle + 1) * state["cycle_steps"]
        # the schedule is one the recipe accepts, and the run it describes exports a 64 px model
        recipe = load_recipe(REPO_ROOT / "training/configs/budget/gray-supervised-progressive.yaml",
                             steps=end, image_size_schedule=schedule)
        assert recipe.image_sizes[-1] == 64
        for k in range(cycle + 1):
            start = 0 if k == 0 else 5 + 40 * k
            switch = 5 + 40 * k + 30
            assert {recipe.size_at(s) for s in range(start, switch)} == {28}, (cycle, k)
            assert {recipe.size_at(s) for s in range(switch, 5 + 40 * (k + 1))} == {64}, (cycle, k)
        # a resumed cycle keeps the schedule of the ones before it: it only grows
        if cycle:
            assert schedule[: len(release_cpu.size_schedule(state, cycle - 1))] == release_cpu.size_schedule(state, cycle - 1)
    assert release_cpu.size_schedule(state | {"head_steps": None}, 3) == []


def test_points_agree_only_within_the_spread(release_cpu):
    a = {"scores": {"finetune 1%": (0.90, 0.01), "kNN": (0.85, 0.02)}}
    assert release_cpu.agree(a, {"scores": {"finetune 1%": (0.905, 0.01), "kNN": (0.86, 0.01)}})[0]
    same, notes = release_cpu.agree(a, {"scores": {"finetune 1%": (0.93, 0.01), "kNN": (0.86, 0.01)}})
    assert not same and "differs" in notes[0] and "differs" not in notes[1]


def test_record_paths_are_portable_and_resolve_back_here(monkeypatch, tmp_path):
    """A run's folders are written into its records as `$HF_HOME/...` (or `$MEDNET_DATA_DIR/...`, or relative to the
    repository), never as this machine's absolute paths, and read back to the same folders."""
    from pathlib import Path

    from huggingface_hub import constants

    from mednet_hf.options import portable_path, resolve_portable_path

    monkeypatch.setenv("MEDNET_DATA_DIR", str(tmp_path / "data"))
    point = Path(constants.HF_HOME).resolve() / "mednet" / "release-gray-cpu" / "points" / "cycle-0"
    assert portable_path(str(point)) == "$HF_HOME/mednet/release-gray-cpu/points/cycle-0"
    assert resolve_portable_path(portable_path(str(point))) == str(point)
    data = tmp_path / "data" / "medmnist"
    assert resolve_portable_path(portable_path(str(data))) == str(data.resolve())
    assert resolve_portable_path("model_cards/records", base=REPO_ROOT) == str(REPO_ROOT / "model_cards/records")
