"""Test settings: offline, a throw-away HF_HOME, and real data from MEDNET_DATA_DIR (default ../shared/data).

Outside CI a test whose data is missing skips with the reason; under CI (CI=true) missing data fails.

Two tiers, as transformers splits its tests: `python -m pytest` runs the fast tier; end-to-end tests (training runs,
fresh interpreters, pushes to the loopback Hub, the browser) are marked `@pytest.mark.slow` and run with
`RUN_SLOW=1` (`RUN_SLOW=1 python -m pytest` runs everything, `-m slow` only them).
"""

import os
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub or transformers: nothing may reach (or wait for) the network.
_HF_HOME = tempfile.mkdtemp(prefix="mednet-test-hf-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MEDNET_DATA_DIR", REPO_ROOT.parent / "shared" / "data")).resolve()


def data_path(relative: str) -> Path:
    """A path under the real-data folder; skip (or, under CI, fail) when it is missing."""
    path = DATA_DIR / relative
    if not path.exists():
        message = f"real data {path} is missing (set MEDNET_DATA_DIR)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


RUN_SLOW = os.environ.get("RUN_SLOW", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    if RUN_SLOW:
        return
    skip = pytest.mark.skip(reason="slow (end-to-end) tier: set RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory) -> dict:
    """`mednet/gray` fine-tuned for a few steps on the real PneumoniaMNIST subset (normal / pneumonia), once per
    test run: the `mednet finetune` record (its checkpoint in `record["export"]`, as a user's `best/`) that the
    evaluate and demo tests use."""
    from mednet_hf.training.finetune import finetune

    out = tmp_path_factory.mktemp("finetuned")
    return finetune("mednet/gray", "medmnist:pneumoniamnist", data_path("medmnist"), out, max_steps=3, batch_size=32,
                    report_to="none", no_checks=True, options={"filename": "pneumoniamnist_subset.npz"})


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return data_path("")


@pytest.fixture(scope="session")
def tiny_config():
    """ResNet-18 at 32 px: the CPU-sized stand-in for the published backbone."""
    from mednet_hf import MedNetConfig

    def make(**overrides):
        kwargs = {"architecture": "resnet18", "image_size": 32, **overrides}
        return MedNetConfig(**kwargs)

    return make


@pytest.fixture(scope="module")
def hub():
    """A Hub-compatible server on 127.0.0.1 for this module's tests."""
    from hub_server import HubServer

    with HubServer() as server:
        yield server


def run_cli(args: list[str], env: dict, timeout: float = 600):
    """Run `mednet ...` in a fresh interpreter (huggingface_hub reads HF_ENDPOINT and offline mode at import)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "mednet_hf.cli", *args], env={**os.environ, **env}, capture_output=True, text=True,
        timeout=timeout, cwd=REPO_ROOT,
    )
