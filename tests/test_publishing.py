"""Model cards from run records, `mednet push` against the loopback Hub, and the bundled `mednet/gray` and
`mednet/color` checkpoints loading offline."""

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, data_path, run_cli

from mednet_hf import MedNetImageProcessor, MedNetModel
from mednet_hf.bundled import BUNDLED_DIR, bundled_revision, install_bundled
from mednet_hf.model_card import check_card, render_model_card

RECORDS = REPO_ROOT / "model_cards" / "records"
XRAY = "cxr/00000001_000.png"


def _features(model_dir_or_id: str, image: str) -> list:
    model = MedNetModel.from_pretrained(model_dir_or_id).eval()
    with torch.no_grad():
        return model(**MedNetImageProcessor.from_pretrained(model_dir_or_id)(image, return_tensors="pt")).pooler_output[0].tolist()


def _digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("variant", ["gray", "color", "gray-3d"])
def test_cards_render_from_run_records_and_pass_the_metadata_check(variant):
    card = render_model_card(variant, RECORDS / variant, f"mednet/{variant}")
    check_card(card, RECORDS / variant)
    data = card.data.to_dict()
    assert data["license"] == "other" and data["library_name"] == "transformers"
    assert {"medical-imaging", "image-classification", "transformers"} <= set(data["tags"])
    three_d = variant == "gray-3d"
    assert ("timm" in data["tags"]) is not three_d  # timm cannot build a 3-D checkpoint
    assert data["model-index"][0]["results"], "the card has no measured results"
    text = str(card)
    for section in ("## How to use", "## Intended use", "## Training data", "## Evaluation", "## Limitations and bias",
                    "## Citation", "arXiv:2110.06512", *([] if three_d else ["## Preprocessing"])):
        assert section in text, section
    if three_d:  # the card says plainly how little 3-D data the pretraining saw, and that timm cannot build it
        assert "only a handful of volumes" in text and "timm cannot build this checkpoint" in text
    # The shipped card is this rendering.
    assert (BUNDLED_DIR / variant / "README.md").read_text() == text
    # A number that is in no record is caught.
    card.data.eval_results[0].metric_value = 0.123456
    with pytest.raises(ValueError, match="is in no run record"):
        check_card(type(card)(f"---\n{card.data.to_yaml()}\n---\n{card.text}"), RECORDS / variant)


def test_a_difference_within_the_seeds_spread_is_neither_a_win_nor_a_loss():
    from mednet_hf.model_card import comparison_rows

    def row(init, fraction, mean, std):
        return {"task": "t", "domain": "out", "init": init, "label_fraction": fraction, "seeds": 3,
                "test_auroc": [mean, std], "test_accuracy": [0.5, 0.0], "epochs_to_95": [1.0, 0.0]}

    summary = [row("mednet", 0.01, 0.80, 0.01), row("scratch", 0.01, 0.70, 0.05),  # +0.10 > 0.05: a win
               row("mednet", 0.1, 0.80, 0.02), row("scratch", 0.1, 0.79, 0.01),  # +0.01 within 0.02
               row("mednet", 1.0, 0.80, 0.005), row("scratch", 1.0, 0.81, 0.008)]  # -0.01 beyond 0.008: a loss
    rows = comparison_rows({"summary": summary})
    assert [(r["label_fraction"], r["wins"], r["loses"]) for r in rows] == [(0.01, True, False), (0.1, False, False), (1.0, False, True)]


def _summary_row(init, fraction, mean, std):
    return {"task": "t", "domain": "out", "init": init, "label_fraction": fraction, "seeds": 3,
            "test_auroc": [mean, std], "test_accuracy": [0.5, 0.0], "epochs_to_95": [1.0, 0.0]}


def _frozen(probe, knn):
    return {"linear_probe": {"test_auroc": probe}, "knn": {"test_auroc": knn}}


def test_release_checks_hold_a_release_to_every_criterion():
    from mednet_hf.model_card import release_checks

    benchmark = {
        "summary": [_summary_row("mednet", 0.01, 0.90, 0.01), _summary_row("scratch", 0.01, 0.70, 0.05),  # +0.20 > 0.10
                    _summary_row("mednet", 0.1, 0.93, 0.01), _summary_row("scratch", 0.1, 0.91, 0.02),  # +0.02 < 0.04
                    _summary_row("mednet", 1.0, 0.94, 0.01), _summary_row("scratch", 1.0, 0.945, 0.01)],  # -0.005 within
        "frozen": {"t": {"mednet": _frozen(0.85, 0.80), "scratch": _frozen(0.76, 0.70)}},  # probe +0.09 < 0.10
        "acceleration": [{"task": "t", "label_fraction": 0.1, "seeds": 3, "reached": 3, "scratch_epoch": 10.0, "mednet_epoch": 4.0}],
    }
    previous = {"summary": [_summary_row("mednet", 0.01, 0.85, 0.01), _summary_row("mednet", 0.1, 0.95, 0.01)],
                "frozen": {"t": {"mednet": _frozen(0.80, 0.81)}}}
    met = {c["check"]: c["met"] for c in release_checks(benchmark, previous)}
    assert met == {
        "1% labels: beats scratch": True, "10% labels: beats scratch": False, "100% labels: not worse than scratch": True,
        "linear probe: above scratch's": False, "10% labels: epochs to scratch's best val. AUROC": True,
        "1% labels: beats the previous release": True, "10% labels: beats the previous release": False,
        "linear probe: beats the previous release": True, "kNN: beats the previous release": False,
    }
    # A seed where MedNet never reaches scratch's best fails the convergence check, whatever the others did.
    benchmark["acceleration"][0]["reached"] = 2
    assert not next(c for c in release_checks(benchmark) if "epochs" in c["check"])["met"]


def test_a_release_run_card_tells_its_hours_segments_points_and_checks(tmp_path):
    """A CPU release run's card: hours on how many cores, every segment, every benchmark point, the checks."""
    records = tmp_path / "records"
    shutil.copytree(RECORDS / "gray", records)
    pretrain = json.loads((records / "pretrain.json").read_text())
    segment = {"started": "2026-12-07T20:55:17+00:00", "start": "scratch", "from_step": 0, "to_step": 100, "images": 12800,
               "wall_seconds": 5400.0, "cpu_seconds": 10800.0, "processes": 1, "threads_per_process": 2, "precision": "bf16",
               "image_sizes": [28, 64], "skipped_steps": 0, "final_losses": {"loss": 0.4}, "source_epochs": {"organamnist": 1.5}}
    scores = {"finetune 1%": [0.91, 0.01], "finetune 10%": [0.95, 0.01], "linear probe": [0.93, 0.01], "kNN": [0.90, 0.01]}
    pretrain |= {
        "recipe": pretrain["recipe"] | {"image_size_schedule": [[80, 64]], "cycle_steps": 100},
        "segments": [segment, segment | {"start": "resumed from step-00000100 at step 100", "from_step": 100, "to_step": 200}],
        "wall_seconds_total": 10800.0, "cpu_seconds_total": 21600.0,
        "release": {"cores": 2, "final_share": 0.25, "started": "2026-12-07T20:55:11Z",
                    "evaluation": {"task": "pneumonia", "seeds": [0, 1, 2]},
                    "stopped": {"why": "6 hours of training reached", "compared": None, "rows": []},
                    "points": [{"cycle": 0, "steps": 100, "training_hours": 1.5, "scores": scores},
                               {"cycle": 1, "steps": 200, "training_hours": 3.0, "scores": scores}]},
    }
    (records / "pretrain.json").write_text(json.dumps(pretrain))
    benchmark = json.loads((records / "benchmark.json").read_text())
    (records / "previous.json").write_text(json.dumps({"description": "the 900-step release", "summary": benchmark["summary"],
                                                       "frozen": benchmark["frozen"]}))
    card = render_model_card("gray", records, "mednet/gray")
    check_card(card, records)
    text = str(card)
    assert "resnet18 at 64 px" in text and "**3.00 hours of wall-clock training on 2 cores** (6.0 CPU-hours) in 2 segment(s)" in text
    assert "The run stopped:\n> 6 hours of training reached." in text
    assert "| 1 | 2026-12-07T20:55 | resumed from step-00000100 at step 100 | 100–200 | 12,800 | 1.50 | 3.00 | 1 × 2 | bf16 | 28, 64 |" in text
    assert text.count("| 0.910 ± 0.010 | 0.950 ± 0.010 | 0.930 ± 0.010 | 0.900 ± 0.010 |") == 2  # both points
    assert "resize\nthe short side to 64 px" in text or "the short side to 64 px" in text
    # Against itself, the previous release is not beaten: the checks say so rather than hide it.
    assert "| pneumonia | 64 px | 1% labels: beats the previous release |" in text and "| **no** |" in text


def _build_release():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_release", REPO_ROOT / "model_cards" / "build_release.py")
    build_release = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_release)
    return build_release


def test_a_rebuild_keeps_comparing_against_the_release_it_replaced(tmp_path):
    build_release = _build_release()
    records = tmp_path / "color"
    shutil.copytree(RECORDS / "color", records)  # a 900-step release's records, with their study
    run = {"started": "2026-12-07T20:55:11Z", "init": "scratch"}
    old = build_release.previous_release(records, run)  # a new run replaces these records
    assert old["summary"] == json.loads((records / "benchmark.json").read_text())["summary"]
    assert old["description"].startswith("900 steps, 115,200 images at 28 px")
    # Built once: the records are the run's own, and previous.json says what they replaced; a rebuild keeps it.
    pretrain = json.loads((records / "pretrain.json").read_text()) | {"release": {"started": "2026-12-07T20:55:11Z"}}
    (records / "pretrain.json").write_text(json.dumps(pretrain))
    replaced = old | {"description": "the release before"}
    (records / "previous.json").write_text(json.dumps(replaced))
    assert build_release.previous_release(records, run) == replaced
    assert build_release.previous_release(records, run | {"started": "2027-01-01T00:00:00Z", "init": "mednet/gray"}) == replaced  # warm restart
    another = build_release.previous_release(records, run | {"started": "2027-01-01T00:00:00Z"})
    assert another["description"] == old["description"]  # another run from scratch replaces this one
    (records / "benchmark.json").unlink()  # a build stopped before its study finished: rerun, it still knows
    assert build_release.previous_release(records, run) == replaced


def test_a_build_stopped_during_its_study_runs_only_the_studies_it_lacks(tmp_path, monkeypatch):
    build_release = _build_release()
    import mednet_hf.training.benchmark as study

    records, bundle = tmp_path / "records" / "gray", tmp_path / "bundle"
    shutil.copytree(RECORDS / "gray", records)
    shutil.copytree(BUNDLED_DIR / "gray", bundle)
    monkeypatch.setattr(build_release, "HERE", tmp_path)
    monkeypatch.setattr(build_release, "README", tmp_path / "README.md")
    monkeypatch.setenv("MEDNET_RUNS", str(tmp_path / "runs"))
    (tmp_path / "README.md").write_text("before\n" + "\n\n".join(build_release.MARKERS) + "\nafter\n")
    ran = []

    def finished_study(variant, out, **options):  # stands in for the hour-long study: its recorded output
        ran.append(options.get("image_size"))
        out.mkdir(parents=True)
        for suffix in ("json", "md"):
            shutil.copy2(RECORDS / "gray" / f"benchmark-28.{suffix}", out / f"results.{suffix}")

    monkeypatch.setattr(study, "benchmark", finished_study)
    args = build_release.argparse.Namespace(variant="gray", benchmark=None, quick=False, task=["pneumonia"], seed=None,
                                            label_fraction=None, epochs=None, other_size=28)
    build_release.study_and_render(args, records, bundle)  # both studies are in the records: none reruns
    card = (tmp_path / "gray.md").read_text()
    assert ran == [] and (bundle / "README.md").read_text().count("| 28 px |") > 0 and "| 64 px |" in card
    (records / "benchmark-28.json").unlink()  # stopped after the first study: only the 28-px one runs
    build_release.study_and_render(args, records, bundle)
    assert ran == [28] and (records / "benchmark-28.json").read_bytes() == (RECORDS / "gray" / "benchmark-28.json").read_bytes()
    assert (tmp_path / "gray.md").read_text() == card and "Fine-tuned at 28 px" in (tmp_path / "README.md").read_text()


def test_readme_results_are_the_records():
    """The README's results block is what build_release.py renders from the records, not hand-edited numbers."""
    build_release = _build_release()
    text = (REPO_ROOT / "README.md").read_text()
    start, end = (text.index(m) for m in build_release.MARKERS)
    block = text[start + len(build_release.MARKERS[0]) : end]
    assert block == "\n" + build_release.readme_block() and "| pneumonia | out |" in block


@pytest.mark.slow
def test_bundled_checkpoints_load_offline_in_a_fresh_process(tmp_path):
    image = str(data_path(XRAY))
    code = f"""
import json, time
started = time.perf_counter()
import mednet_hf
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification
times = {{"import": time.perf_counter() - started}}
start = time.perf_counter(); gray = AutoModel.from_pretrained("mednet/gray").eval(); times["gray"] = time.perf_counter() - start
start = time.perf_counter(); color = AutoModelForImageClassification.from_pretrained("mednet/color", num_labels=5); times["color"] = time.perf_counter() - start
start = time.perf_counter(); processor = AutoImageProcessor.from_pretrained("mednet/gray"); times["processor"] = time.perf_counter() - start
import torch
with torch.no_grad():
    features = gray(**processor({image!r}, return_tensors="pt")).pooler_output[0].tolist()
print(json.dumps({{"times": times, "features": features, "dtype": str(gray.dtype), "color_logits": color.timm_model.get_classifier().out_features,
                   "gray_class": type(gray).__name__}}))
"""
    # A fresh HF_HOME, offline, and an endpoint nobody listens on: any network attempt would fail, not wait.
    env = {**os.environ, "HF_HOME": str(tmp_path / "fresh-home"), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["gray_class"] == "MedNetModel" and out["dtype"] == "torch.float32" and out["color_logits"] == 5
    torch.testing.assert_close(torch.tensor(out["features"]), torch.tensor(_features(str(BUNDLED_DIR / "gray"), str(data_path(XRAY)))))
    print("offline load times (s):", out["times"])  # reported in the notes; not asserted


def test_install_bundled_layout(tmp_path):
    written = install_bundled(cache_dir=tmp_path)
    assert set(written) == {"mednet/gray", "mednet/color", "mednet/gray-3d"}
    for repo, variant in (("mednet--gray", "gray"), ("mednet--color", "color"), ("mednet--gray-3d", "gray-3d")):
        revision = (tmp_path / f"models--{repo}" / "refs" / "main").read_text()
        assert revision == bundled_revision(variant)
        snapshot = tmp_path / f"models--{repo}" / "snapshots" / revision
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_mednet.py"} <= {p.name for p in snapshot.iterdir()}
        assert (snapshot / "model.safetensors").stat().st_size <= 25 * 2**20
    assert install_bundled(cache_dir=tmp_path) == {}  # already there: nothing rewritten


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> dict:
    """The bundled checkpoints as complete folders (weights, configs, card, remote code), as the cache holds them."""
    return install_bundled(cache_dir=tmp_path_factory.mktemp("hub-cache"))


@pytest.mark.slow
def test_push_then_from_pretrained_gives_the_same_model(hub, tmp_path, snapshots):
    gray = snapshots["mednet/gray"]
    pushed = run_cli(["push", "--model", str(gray), "--repo-id", "mednet-test/gray"], hub.env(tmp_path / "pusher"))
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    files = hub.state.repos[("model", "mednet-test/gray")]
    files = files.commits[files.branches["main"]]["files"]
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "modeling_mednet.py"} <= set(files)
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert files["model.safetensors"] == (BUNDLED_DIR / "gray" / "model.safetensors").read_bytes()

    image = str(data_path(XRAY))
    code = f"""
import json, torch, mednet_hf
from transformers import AutoImageProcessor, AutoModel
model = AutoModel.from_pretrained("mednet-test/gray").eval()
processor = AutoImageProcessor.from_pretrained("mednet-test/gray")
with torch.no_grad():
    print(json.dumps(model(**processor({image!r}, return_tensors="pt")).pooler_output[0].tolist()))
"""
    pulled = subprocess.run([sys.executable, "-c", code], env={**os.environ, **hub.env(tmp_path / "reader")},
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(json.loads(pulled.stdout.strip().splitlines()[-1])),
                               torch.tensor(_features(str(BUNDLED_DIR / "gray"), image)), rtol=0, atol=0)

    branch = run_cli(["push", "--model", str(gray), "--repo-id", "mednet-test/gray", "--revision", "v0.1",
                      "--message", "release v0.1"], hub.env(tmp_path / "pusher"))
    assert branch.returncode == 0, branch.stderr[-3000:]
    repo = hub.state.repos[("model", "mednet-test/gray")]
    assert "v0.1" in repo.branches and repo.commits[repo.branches["v0.1"]]["message"] == "release v0.1"


@pytest.mark.slow
def test_failed_commit_keeps_local_files_and_a_retry_succeeds(hub, tmp_path, snapshots):
    folder = tmp_path / "model"
    shutil.copytree(snapshots["mednet/color"], folder)
    before = _digest(folder)
    hub.state.fail_commits = 1
    failed = run_cli(["push", "--model", str(folder), "--repo-id", "mednet-test/color"], hub.env(tmp_path / "pusher"))
    assert failed.returncode == 2
    assert "failed at: commit the files (HTTP 500" in failed.stderr and "Nothing local was changed" in failed.stderr
    assert _digest(folder) == before
    retried = run_cli(["push", "--model", str(folder), "--repo-id", "mednet-test/color"], hub.env(tmp_path / "pusher"))
    assert retried.returncode == 0, retried.stderr[-3000:]
    repo = hub.state.repos[("model", "mednet-test/color")]
    assert repo.commits[repo.branches["main"]]["files"]["model.safetensors"] == (folder / "model.safetensors").read_bytes()


def test_push_refuses_pickled_weights(tmp_path, snapshots):
    from mednet_hf.hub import check_model_folder

    folder = tmp_path / "model"
    shutil.copytree(snapshots["mednet/gray"], folder)
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"pickled weights \['pytorch_model.bin'\]"):
        check_model_folder(folder)


def _readme_commands() -> list[str]:
    """The README's fine-tune command (the main job's code block) and its push command (Publishing), as written."""
    readme = (REPO_ROOT / "README.md").read_text()
    main_job = readme.split("## The main job", 1)[1]
    block = main_job.split("```bash\n", 1)[1].split("```", 1)[0]
    finetune = " ".join(line.rstrip("\\").strip() for line in block.strip().splitlines())
    push = re.search(r"`(mednet push --model [^`]+)`", readme.split("## Publishing", 1)[1]).group(1)
    assert finetune.startswith("mednet finetune ") and "runs/" in push
    return [finetune, push]


@pytest.mark.slow
def test_readme_finetune_then_push_works_as_written(hub, tmp_path):
    """Issue 11, item 7: the README's `mednet finetune` and then its `mednet push --model runs/.../best`, run as
    written (only the data folder and `runs/` placed in a temporary folder), publish the fine-tuned model; the
    Trainer's pickled `training_args.bin` is not uploaded."""
    finetune, push = (command.replace("${MEDNET_DATA_DIR:-../shared/data}", str(data_path("")).rstrip("/"))
                      .replace("runs/", f"{tmp_path}/runs/") for command in _readme_commands())
    trained = run_cli(shlex.split(finetune)[1:], {})
    assert trained.returncode == 0, trained.stderr[-3000:]
    best = tmp_path / push.split("--model ", 1)[1].split()[0].split(f"{tmp_path}/", 1)[1]
    assert (best / "model.safetensors").is_file()
    pushed = run_cli(shlex.split(push)[1:], hub.env(tmp_path / "pusher"))
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    repo_id = push.split("--repo-id ", 1)[1].split()[0]
    repo = hub.state.repos[("model", repo_id)]
    files = repo.commits[repo.branches["main"]]["files"]
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "modeling_mednet.py"} <= set(files)
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files), sorted(files)
    assert files["model.safetensors"] == (best / "model.safetensors").read_bytes()
    assert "## Test metrics (medmnist:pneumoniamnist" in files["README.md"].decode()


def test_push_skips_the_trainers_arguments_but_refuses_other_pickles(tmp_path, snapshots):
    from mednet_hf.hub import check_model_folder

    folder = tmp_path / "model"
    shutil.copytree(snapshots["mednet/gray"], folder)
    (folder / "training_args.bin").write_bytes(b"pickle")
    assert "training_args.bin" not in {p.name for p in check_model_folder(folder)}
    (folder / "optimizer.pt").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"pickled weights \['optimizer.pt'\]"):
        check_model_folder(folder)
