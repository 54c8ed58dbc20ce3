"""`mednet data push` against a Hub-compatible server on loopback, then `load_dataset` of the pushed repo."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import data_path, run_cli

from mednet_hf.data import load_medical_dataset

pytestmark = pytest.mark.slow  # end to end: RUN_SLOW=1

READ_BACK = """
import hashlib, json, sys
import numpy as np
from datasets import load_dataset

ds = load_dataset(sys.argv[1])
out = {}
for split, part in ds.items():
    digest = hashlib.sha256()
    for row in part:
        digest.update(np.asarray(row["image"]).tobytes()); digest.update(str(row["label"]).encode())
    out[split] = [part.num_rows, digest.hexdigest(), part.features["label"].names]
print(json.dumps(out))
"""


def _digests(dataset) -> dict:
    out = {}
    for split, part in dataset.items():
        digest = hashlib.sha256()
        for row in part:
            digest.update(np.asarray(row["image"]).tobytes())
            digest.update(str(row["label"]).encode())
        out[split] = [part.num_rows, digest.hexdigest(), part.features["label"].names]
    return out


def test_push_then_load_gives_the_same_rows(hub, tmp_path):
    folder = data_path("medmnist")
    args = ["data", "push", "medmnist", "--config", "pneumoniamnist", "--data-dir", str(folder),
            "--option", "filename=pneumoniamnist_subset.npz", "--no-checks", "--repo-id", "mednet-test/pneumoniamnist"]
    pushed = run_cli(args, hub.env(tmp_path / "pusher-home"))
    assert pushed.returncode == 0, pushed.stderr[-3000:]

    env = {**hub.env(tmp_path / "reader-home")}
    read = subprocess.run([sys.executable, "-c", READ_BACK, "mednet-test/pneumoniamnist"], env={**__import__("os").environ, **env},
                          capture_output=True, text=True, timeout=600)
    assert read.returncode == 0, read.stderr[-3000:]
    local = load_medical_dataset("medmnist", "pneumoniamnist", data_dir=folder, filename="pneumoniamnist_subset.npz",
                                 verification_mode="no_checks", cache_dir=tmp_path / "cache")
    assert json.loads(read.stdout.strip().splitlines()[-1]) == _digests(local)

    repo = hub.state.repos[("dataset", "mednet-test/pneumoniamnist")]
    files = repo.commits[repo.branches["main"]]["files"]
    assert {f"data/{s}-00000-of-00001.parquet" for s in ("train", "validation", "test")} <= set(files)
    card = files["README.md"].decode()
    for expected in ("license: cc-by-4.0", "- medical-imaging", "image-classification", "| train | 3882 |",
                     "- `1`: pneumonia", "@article{medmnistv2", "md5 checks were turned off"):
        assert expected in card, expected
