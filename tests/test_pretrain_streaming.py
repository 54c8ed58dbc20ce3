"""Pretraining from a streamed Hub dataset: PneumoniaMNIST pushed as parquet to the Hub-compatible server on loopback,
then read back as a stream (`dataset: hub`, `streaming: true`). The streamed rows are the held decode's rows, each
process reads its own part, and a killed run resumes with exactly the rows and views an uninterrupted one sees.

Everything that talks to the server runs in a fresh interpreter: huggingface_hub reads HF_ENDPOINT at import."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import DATA_DIR, REPO_ROOT, data_path, run_cli
from mednet_hf.model_card import check_card, render_model_card
from test_pretrain import _order  # batch number → example ids of a run's data-order log

REPO = "mednet-test/pneumoniamnist-stream"
TRAIN_ROWS = 3882  # PneumoniaMNIST subset, train split
PNEUMONIA = {
    "name": "pneumonia", "dataset": "medmnist", "config": "pneumoniamnist", "data_dir": "medmnist",
    "options": {"filename": "pneumoniamnist_subset.npz"}, "verification_mode": "no_checks", "num_classes": 2,
}
STREAMED = {"name": "pneumonia_hub", "dataset": "hub", "repo_id": REPO, "streaming": True, "num_classes": 2, "weight": 0.7}
SERIES = {"name": "mr_series", "dataset": "imagefolder", "data_dir": "dicom_series", "labelled": False, "weight": 0.3}

# Reads the stream as processes of a run would, and prints what the test checks.
PROBE = r"""
import hashlib, json, sys
import torch
from mednet_hf.training.data import load_source, pretraining_data
from mednet_hf.training.recipe import load_recipe

recipe = load_recipe(sys.argv[1])
held = load_recipe(sys.argv[2])

def digests(images, labels):
    return [hashlib.sha256(i.numpy().tobytes() + bytes([int(l)])).hexdigest() for i, l in zip(images, labels)]

def stream(rank, world, chunk):
    recipe.stream_chunk_rows = chunk
    data = pretraining_data(recipe, rank, world)
    return data, data.streams[0]

out = {}
tensors, _ = load_source(held.sources[0], held)
out["held"] = sorted(digests(tensors["images"], tensors["labels"]))
# The same repo not streamed: downloaded and cached like a local source, row for row the local decode.
downloaded = load_recipe(sys.argv[3])
from_hub, _ = load_source(downloaded.sources[0], downloaded)
out["downloaded_equal"] = all(torch.equal(from_hub[k], tensors[k]) for k in ("images", "labels"))
# Chunks of 647 rows divide an epoch (3882 = 6 x 647; 1941 per process of two), so no chunk mixes two epochs.
data, one = stream(0, 1, 647)
images, labels, ids = one.take(%(rows)d)
out["one_epoch"] = sorted(digests(images, labels))
out["ids"] = ids.tolist() == list(range(%(rows)d))
data.close()
parts = []
for rank in (0, 1):
    data, part = stream(rank, 2, 647)
    images, labels, _ = part.take(%(rows)d // 2)
    parts += digests(images, labels)
    data.close()
out["two_ranks"] = sorted(parts)

# Resume: take 700, save, take 1500 more (past the end of rank 1's 1941 rows); a new reader restored from the JSON
# state must give the same 1500.
data, part = stream(1, 2, 500)
part.take(700)
state = json.loads(json.dumps(data.state_dict()))
after = part.take(1500)
data.close()
data, again = stream(1, 2, 500)
data.load_state_dict(state)
resumed = again.take(1500)
out["resumed_equal"] = all(torch.equal(a, b) for a, b in zip(after, resumed))
out["crossed_epoch"] = again._epoch
data.close()
# Resumed twice: restore, take 3 rows, save inside the same chunk, restore that: the rest is still the same.
data, once = stream(1, 2, 500)
data.load_state_dict(state)
once.take(3)
state2 = json.loads(json.dumps(data.state_dict()))
data.close()
data, twice = stream(1, 2, 500)
data.load_state_dict(state2)
rest = twice.take(1497)
out["resumed_twice_equal"] = all(torch.equal(a[3:], b) for a, b in zip(after, rest))
data.close()
print(json.dumps(out))
""" % {"rows": TRAIN_ROWS}


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """The PneumoniaMNIST subset on the loopback Hub, and the environment of a process that reads it."""
    folder = data_path("medmnist")
    home = tmp_path_factory.mktemp("stream-home")
    args = ["data", "push", "medmnist", "--config", "pneumoniamnist", "--data-dir", str(folder),
            "--option", "filename=pneumoniamnist_subset.npz", "--no-checks", "--repo-id", REPO]
    result = run_cli(args, hub.env(home / "pusher"))
    assert result.returncode == 0, result.stderr[-3000:]
    return {**os.environ, **hub.env(home / "reader"), "MEDNET_DATA_DIR": str(DATA_DIR), "PYTHONPATH": str(REPO_ROOT)}


def _recipe(tmp_path: Path, name: str, sources: list, **overrides) -> Path:
    recipe = {
        "variant": "gray", "backbone": "resnet18", "image_size": 28, "steps": 4, "batch_size": 8, "lr": 0.001,
        "checkpoint_every": 2, "log_every": 1, "sources": sources,
        "objectives": {"supervised": {"weight": 1.0}, "contrastive": {"weight": 1.0, "prototypes": 16, "local_crops": 2}},
        **overrides,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_streamed_rows_are_the_held_rows_split_across_processes_and_resume_exactly(pushed, tmp_path):
    streamed = _recipe(tmp_path, "streamed", [STREAMED])
    held = _recipe(tmp_path, "held", [PNEUMONIA], cache_dir=str(tmp_path / "cache"))
    downloaded = _recipe(tmp_path, "downloaded", [{**STREAMED, "streaming": False}], cache_dir=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", PROBE, str(streamed), str(held), str(downloaded)], env=pushed,
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(out["held"]) == TRAIN_ROWS
    # One epoch of the stream is the held source, row for row (as a multiset: chunks are shuffled), through the
    # same intensity path; two processes read disjoint halves that make it up together.
    assert out["downloaded_equal"]
    assert out["one_epoch"] == out["held"] and out["ids"]
    assert out["two_ranks"] == out["held"]
    assert out["resumed_equal"] and out["crossed_epoch"] == 1 and out["resumed_twice_equal"]


@pytest.mark.slow
def test_killed_run_with_a_streamed_source_resumes_with_the_same_rows(pushed, tmp_path):
    data_path("dicom_series")
    # Chunks of 16 rows: about 5.6 streamed rows a step, so the kill lands inside a chunk after the first, and the
    # stream turns over several chunks in the run.
    # fp32: bf16 on a multi-threaded CPU is not bitwise repeatable (see test_pretrain's kill test)
    recipe = _recipe(tmp_path, "mixed", [STREAMED, SERIES], steps=12, checkpoint_every=4, stream_chunk_rows=16,
                     mixed_precision="no")
    command = [sys.executable, "-m", "mednet_hf.cli", "pretrain", "--recipe", str(recipe), "--output-dir"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    run = subprocess.Popen([*command, str(killed)], env=pushed, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-00000008").exists():
        assert run.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.01)
    run.kill()
    run.wait()
    assert not (killed / "results.json").exists()
    assert (killed / "checkpoints" / "step-00000008" / "streams-rank0.json").is_file()

    resumed = subprocess.run([*command, str(killed), "--resume"], env=pushed, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    straight = subprocess.run([*command, str(whole)], env=pushed, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-4000:]

    a, b = json.loads((killed / "results.json").read_text()), json.loads((whole / "results.json").read_text())
    order = _order(whole)
    assert _order(killed) == order and len(order) == 12
    streamed_ids = [i for ids in order.values() for i in ids if i < 10**9]  # source 0: the stream
    assert len(streamed_ids) > 16 * 3  # several chunks were used
    for name, value in b["final_losses"].items():
        assert a["final_losses"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    assert b["data"][0] == {"name": "pneumonia_hub", "dataset": "hub", "rows": None, "labelled": True,
                            "repo_id": REPO, "streamed": True, "drawn": len(streamed_ids), "epochs": None}
    assert b["epochs"] is None
    # A card rendered from this run's record (with a shipped transfer study) names the Hub dataset and says its
    # images were streamed, where a local source names its folder and count.
    records = tmp_path / "records"
    records.mkdir()
    (records / "pretrain.json").write_text(json.dumps(b))
    shutil.copy(REPO_ROOT / "model_cards" / "records" / "gray" / "benchmark.json", records)
    card = render_model_card("gray", records, "mednet/gray")
    check_card(card, records)
    assert card.data.datasets == sorted([REPO, "imagefolder:dicom_series"])
    hub_row = next(line for line in str(card).splitlines() if line.startswith("| pneumonia_hub |"))
    assert f"[{REPO}](https://huggingface.co/datasets/{REPO})" in hub_row and "| streamed |" in hub_row
    assert "None" not in hub_row and "epochs are not counted" in str(card)


# A run stopped mid-way (Ctrl-C at the third step) stops its stream's reader thread as the interrupt propagates.
INTERRUPTED = r"""
import sys, threading
from mednet_hf.training.objectives import PretrainModel
from mednet_hf.training.pretrain import pretrain

forward, calls = PretrainModel.forward, []
def interrupted(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        raise KeyboardInterrupt
    return forward(self, *args, **kwargs)
PretrainModel.forward = interrupted
try:
    pretrain(sys.argv[1], sys.argv[2])
except KeyboardInterrupt:
    # Still inside the handler, where the run's frames are alive (as when the CLI reports the interrupt): the
    # reader must already be stopped, not left to finish its chunk when the interpreter exits.
    print(len(calls), [t.name for t in threading.enumerate() if t.name.startswith("stream-")])
"""


@pytest.mark.slow
def test_interrupted_run_stops_its_stream_reader(pushed, tmp_path):
    recipe = _recipe(tmp_path, "interrupted", [STREAMED], steps=10, stream_chunk_rows=16)
    result = subprocess.run([sys.executable, "-c", INTERRUPTED, str(recipe), str(tmp_path / "run")], env=pushed,
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == "3 []"  # interrupted at the third step; no reader left


# A run, then a commit that moves the dataset's main branch (a file beside the parquet shards, as a card edit would
# add), then the same resume unpinned and pinned to the commit the run read. One interpreter: each start costs seconds.
MOVED_BRANCH = r"""
import json, sys
import yaml
from huggingface_hub import HfApi
from mednet_hf.training.pretrain import pretrain

recipe, run, repo = sys.argv[1], sys.argv[2], sys.argv[3]
pretrain(recipe, run)
api = HfApi()
read = api.dataset_info(repo).sha
api.upload_file(path_or_fileobj=b"moved", path_in_repo="NOTES.txt", repo_id=repo, repo_type="dataset")
out = {"read": read, "head": api.dataset_info(repo).sha}
try:
    pretrain(recipe, run, resume="latest", steps=4)
except ValueError as e:
    out["refused"] = str(e)
spec = yaml.safe_load(open(recipe))
spec["sources"][0]["revision"] = read
open(recipe, "w").write(yaml.safe_dump(spec))
out["resumed_steps"] = pretrain(recipe, run, resume="latest", steps=4)["steps"]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_resume_after_the_branch_moved_stops_and_names_the_commit_to_pin(pushed, tmp_path):
    recipe = _recipe(tmp_path, "pinned", [STREAMED], steps=2, checkpoint_every=2, stream_chunk_rows=16)
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", MOVED_BRANCH, str(recipe), str(run), REPO], env=pushed,
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    read, head = out["read"], out["head"]
    assert read != head
    assert json.loads((run / "checkpoints" / "step-00000002" / "streams-rank0.json").read_text())["0"]["revision"] == read
    # Unpinned, the resume stops before a step and says which commit to pin; pinned to it, the same resume goes on.
    assert f"set `revision: {read}`" in out["refused"] and head in out["refused"]
    assert out["resumed_steps"] == 4
    assert (run / "checkpoints" / "step-00000004" / "streams-rank0.json").is_file()


@pytest.mark.slow
def test_two_processes_each_read_their_part_of_the_stream(pushed, tmp_path):
    recipe, out = _recipe(tmp_path, "two", [STREAMED], steps=2), tmp_path / "run"
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mednet_hf.cli", "pretrain",
               "--recipe", str(recipe), "--output-dir", str(out)]
    result = subprocess.run(command, env={**pushed, "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    record = json.loads((out / "results.json").read_text())
    assert record["processes"] == 2 and record["ranks_identical"]
    checkpoint = out / "checkpoints" / "step-00000002"
    states = [json.loads((checkpoint / f"streams-rank{r}.json").read_text())["0"] for r in (0, 1)]
    assert [s["world"] for s in states] == [2, 2] and all(s["taken"] == 16 for s in states)


@pytest.mark.slow
def test_stream_errors_name_the_source(pushed, tmp_path):
    missing = _recipe(tmp_path, "missing", [{**STREAMED, "repo_id": "mednet-test/no-such-set"}])
    result = run_cli(["pretrain", "--recipe", str(missing), "--output-dir", str(tmp_path / "run")], pushed)
    assert result.returncode != 0
    assert "streamed source 'pneumonia_hub' ('mednet-test/no-such-set')" in result.stderr
    assert "Traceback" not in result.stderr[-300:]


@pytest.mark.parametrize(
    "source,message",
    [
        ({**STREAMED, "repo_id": None}, "dataset: hub needs one"),
        ({**PNEUMONIA, "streaming": True}, r"\['streaming'\] only apply to dataset: hub"),
        ({**STREAMED, "data_dir": "medmnist"}, r"\['data_dir'\] do not apply to dataset: hub"),
    ],
)
def test_hub_source_recipe_errors(tmp_path, source, message):
    from mednet_hf.training.recipe import load_recipe

    with pytest.raises(ValueError, match=message):
        load_recipe(_recipe(tmp_path, "bad", [source]))
