"""Long runs that survive faults, each ending with "nothing lost": a SIGKILL while a checkpoint is written, a full
disk (a file-size limit stands in for it), a SIGKILL during the first decode of the sources, two runs that start on
one cache folder at once, and two "nodes" on loopback of which one dies. All on the CPU, with real sources."""

import json
import os
import resource
import signal
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import DATA_DIR, REPO_ROOT, data_path

pytestmark = pytest.mark.slow

PNEUMONIA = {
    "name": "pneumonia", "dataset": "medmnist", "config": "pneumoniamnist", "data_dir": "medmnist",
    "options": {"filename": "pneumoniamnist_subset.npz"}, "verification_mode": "no_checks", "num_classes": 2,
}
LUNG_CT = {"name": "lung_ct", "dataset": "imagefolder", "data_dir": "lung_ct_iqothnccd", "num_classes": 3}


def _recipe(tmp_path: Path, **overrides) -> Path:
    recipe = {"variant": "gray", "backbone": "resnet18", "image_size": 28, "steps": 6, "batch_size": 8, "lr": 0.001,
              "checkpoint_every": 2, "log_every": 1, "mixed_precision": "no",  # fp32: exact comparisons (README)
              "cache_dir": str(tmp_path / "cache"), "sources": [PNEUMONIA],
              "objectives": {"supervised": {"weight": 1.0}}, **overrides}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env(**extra) -> dict:
    data_path("medmnist")
    return {**os.environ, "MEDNET_DATA_DIR": str(DATA_DIR), "PYTHONPATH": str(REPO_ROOT), **extra}


def _pretrain(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mednet_hf.cli", "pretrain", "--recipe", str(recipe), "--output-dir", str(out), *extra]


def _order(out: Path, rank: int = 0) -> dict:
    order = {}
    for line in (out / f"data_order-rank{rank}.jsonl").read_text().splitlines():
        entry = json.loads(line)
        order[entry["batch"]] = entry["index"]
    return order


def _same_run(a: Path, b: Path) -> None:
    """Two runs of one recipe ended alike: the same data order and the same final losses (fp32, one thread)."""
    first, second = json.loads((a / "results.json").read_text()), json.loads((b / "results.json").read_text())
    assert first["steps"] == second["steps"] and _order(a) == _order(b)
    for name, value in second["final_losses"].items():
        assert first["final_losses"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_sigkill_while_a_checkpoint_is_written_resumes_from_the_last_complete_one(tmp_path):
    recipe, killed, whole = _recipe(tmp_path), tmp_path / "killed", tmp_path / "whole"
    env = _env(OMP_NUM_THREADS="1")
    run = subprocess.Popen(_pretrain(recipe, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    writing, deadline = killed / "checkpoints" / ".tmp-step-00000004", time.time() + 300
    while not writing.exists():  # the second checkpoint is being written: kill it half-way
        assert run.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.001)
    run.kill()
    run.wait()
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) in (
        [".tmp-step-00000004", "step-00000002"], ["step-00000002", "step-00000004"])  # killed mid-write, or just after
    resumed = subprocess.run([*_pretrain(recipe, killed), "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list((killed / "checkpoints").glob(".tmp-*"))  # the half-written one was never used, and is gone
    straight = subprocess.run(_pretrain(recipe, whole), env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    _same_run(killed, whole)


def test_a_full_disk_stops_the_run_with_the_previous_checkpoint_intact_and_resume_goes_on(tmp_path):
    recipe, out, whole = _recipe(tmp_path), tmp_path / "run", tmp_path / "whole"
    env = _env(OMP_NUM_THREADS="1")

    def ignore_file_size_signal():  # so that a write past the limit fails with EFBIG, as a full disk fails a write
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    run = subprocess.Popen(_pretrain(recipe, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True, preexec_fn=ignore_file_size_signal)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-00000002").exists():
        assert run.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.01)
    resource.prlimit(run.pid, resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # from now on no file may pass 1 MiB
    _, err = run.communicate(timeout=600)
    assert run.returncode == 2, err[-3000:]
    assert "the checkpoint of step 4 could not be written" in err and "step-00000002, is intact" in err
    assert "--resume" in err and "Traceback" not in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    resumed = subprocess.run([*_pretrain(recipe, out), "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = subprocess.run(_pretrain(recipe, whole), env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    _same_run(out, whole)


DECODE = """
import json, sys
from mednet_hf.training import data
from mednet_hf.training.recipe import load_recipe
decode = data._decode
def counted(*args):
    print("DECODED", flush=True)
    return decode(*args)
data._decode = counted
recipe = load_recipe(sys.argv[1])
tensors, _ = data.load_source(recipe.sources[0], recipe)
print(json.dumps({"rows": len(tensors["images"]), "sum": int(tensors["images"].sum())}))
"""


def _decode(recipe: Path, env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DECODE, str(recipe)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigkill_during_the_first_decode_leaves_no_entry_and_the_next_run_rebuilds_it(tmp_path):
    data_path("lung_ct_iqothnccd")
    recipe = _recipe(tmp_path, sources=[LUNG_CT])
    env, cache = _env(), tmp_path / "cache"
    first = _decode(recipe, env)
    deadline = time.time() + 120
    while not list(cache.glob("*.lock")) or not first.stdout.readline().startswith("DECODED"):
        assert first.poll() is None and time.time() < deadline, "the decode never started"
    time.sleep(0.5)  # decoding, not yet written
    first.kill()
    first.wait()
    assert not list(cache.glob("*.safetensors")), "a killed decode must leave no entry under its key"
    again = _decode(recipe, env)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert out.splitlines()[0] == "DECODED"  # rebuilt, not read from a partial file
    clean = _decode(_recipe(tmp_path / "clean", sources=[LUNG_CT]), env)
    clean_out, _ = clean.communicate(timeout=600)
    assert json.loads(out.splitlines()[-1]) == json.loads(clean_out.splitlines()[-1])
    assert json.loads(out.splitlines()[-1])["rows"] == 1097


def test_two_runs_started_together_on_one_cache_decode_each_source_once(tmp_path):
    data_path("lung_ct_iqothnccd")
    recipe, env = _recipe(tmp_path, sources=[LUNG_CT]), _env()
    runs = [_decode(recipe, env) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outputs]
    assert sum(out.count("DECODED") for out, _ in outputs) == 1  # one decoded, the other waited and read it
    assert json.loads(outputs[0][0].splitlines()[-1]) == json.loads(outputs[1][0].splitlines()[-1])
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(recipe: Path, out: Path, rank: int, port: int, *extra: str) -> subprocess.Popen:
    """One "node" of a two-node run on loopback: its own `accelerate launch`, one gloo process."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
               "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "mednet_hf.cli", "pretrain", "--recipe", str(recipe), "--output-dir", str(out), *extra]
    env = _env(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out.parent)


def _both(nodes, timeout=600):
    results = [node.communicate(timeout=timeout) for node in nodes]
    for node, (_, err) in zip(nodes, results):
        assert node.returncode == 0, err[-3000:]


def test_two_nodes_on_loopback_train_alike_stop_cleanly_when_one_dies_and_resume_with_the_same_data(tmp_path):
    """Two launchers, one process each, as two machines of a cluster would be, writing to one output folder (on a
    cluster: storage both nodes see); the main node writes the checkpoints and the record."""
    recipe = _recipe(tmp_path, steps=8, collective_timeout=30)
    whole, run = tmp_path / "whole", tmp_path / "run"
    port = _free_port()
    _both([_node(recipe, whole, rank, port) for rank in (0, 1)])
    record = json.loads((whole / "results.json").read_text())
    assert record["processes"] == 2 and record["ranks_identical"]  # the same parameters on both nodes

    # Node 1 dies after the first checkpoint: node 0 stops within the collective timeout, saying what to do.
    port = _free_port()
    nodes = [_node(recipe, run, rank, port) for rank in (0, 1)]
    deadline = time.time() + 300
    while not (run / "checkpoints" / "step-00000004").exists():
        assert all(n.poll() is None for n in nodes) and time.time() < deadline, "the run ended before its checkpoint"
        time.sleep(0.05)
    doomed = _children(nodes[1].pid)
    nodes[1].kill()
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    killed_at = time.time()
    _, err = nodes[0].communicate(timeout=300)
    waited = time.time() - killed_at
    assert nodes[0].returncode != 0 and waited < 30 + 60, waited
    assert "lost contact with the others" in err and "--resume" in err, err[-3000:]

    # Both restart with --resume: the run goes on from the checkpoint with the data order of an uninterrupted one.
    port = _free_port()
    _both([_node(recipe, run, rank, port, "--resume") for rank in (0, 1)])
    assert _order(run, 0) == _order(whole, 0) and _order(run, 1) == _order(whole, 1)
    resumed = json.loads((run / "results.json").read_text())
    assert resumed["ranks_identical"] and resumed["steps"] == 8


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (the launcher's torchrun and its worker)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(c) for c in out] + [g for c in out for g in _children(int(c))]


def test_a_run_killed_between_its_last_checkpoint_and_its_export_resumes_into_the_export(tmp_path):
    """The drivers rerun the same command after the end of a session: a checkpoint at the last step must finish the
    run (export and record), not ask for more steps."""
    recipe, out = _recipe(tmp_path, steps=4), tmp_path / "run"
    done = subprocess.run(_pretrain(recipe, out), env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads((out / "results.json").read_text())
    weights = (out / "final" / "model.safetensors").read_bytes()
    shutil.rmtree(out / "final")
    (out / "results.json").unlink()  # as if killed after the step-4 checkpoint, before the export
    again = subprocess.run(_pretrain(recipe, out, "--resume"), env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((out / "results.json").read_text())
    assert (out / "final" / "model.safetensors").read_bytes() == weights
    # the segment as its last checkpoint saw it (the uninterrupted record adds the seconds of that checkpoint)
    def timeless(record):
        return [{k: v for k, v in s.items() if k not in ("wall_seconds", "cpu_seconds")} for s in record["segments"]]

    assert second["steps"] == 4 and timeless(second) == timeless(first) and len(second["segments"]) == 1
    assert second["final_losses"] == first["final_losses"]
