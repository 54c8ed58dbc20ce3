"""The package's shape: one import root, imports that only go down the data path, and a builder import that touches
neither torch nor the Hugging Face cache."""

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT

# The data path, bottom to top: a module may import only modules of its own rank or below.
# file → reader → intensity → processor → model → objective → metric, with the datasets beside the reader and
# the applications (publishing, registration, the command line) on top.
RANKS = {
    "mednet_hf": 0,  # the root: lazy names only (PEP 562), nothing imported eagerly
    "mednet_hf.bundled": 0,
    "mednet_hf.medical_image": 1,  # the readers: types, privacy rules, one module per format, the table, the walk
    "mednet_hf.phi": 1,
    "mednet_hf.dicom": 1,
    "mednet_hf.dicom_series": 1,
    "mednet_hf.nifti": 1,
    "mednet_hf.pil_image": 1,
    "mednet_hf.medical_io": 1,
    "mednet_hf.medical_files": 1,
    "mednet_hf.builders": 2,
    "mednet_hf.intensity": 2,
    "mednet_hf.pil_plugin": 3,
    "mednet_hf.volumes": 3,  # volumes → (C, D, H, W): reader, intensity, spacing, size
    "mednet_hf.configuration_mednet": 3,
    "mednet_hf.data": 3,
    "mednet_hf.image_processing_mednet": 4,
    "mednet_hf.conversion_3d": 5,  # the 2-D timm network → MedNet-3D, module by module
    "mednet_hf.modeling_mednet": 5,
    "mednet_hf.metrics": 6,
    "mednet_hf.loading": 6,  # where a saved model lives and how it loads for use
    "mednet_hf.options": 6,  # options as dataclasses: parsed (HfArgumentParser) and written back as a command line
    "mednet_hf.training": 7,
    "mednet_hf.model_card": 8,
    "mednet_hf.hub": 8,
    "mednet_hf.predict": 8,  # the model-using applications: predict, evaluate, export
    "mednet_hf.evaluate_model": 8,
    "mednet_hf.export": 8,
    "mednet_hf.demo": 8,  # the web demo, built on predict's loading and scoring
    "mednet_hf.registration": 9,
    "mednet_hf.commands": 10,  # one module per command group, and the registry
    "mednet_hf.cli": 10,
}
SOURCES = {"mednet_hf": REPO_ROOT / "mednet_hf", "mednet_hf.builders": REPO_ROOT / "dataset_scripts",
           "mednet_hf.commands": REPO_ROOT / "mednet_hf" / "commands",
           "mednet_hf.training": REPO_ROOT / "training", "mednet_hf.metrics": REPO_ROOT / "mednet_hf" / "metrics"}


def _rank(module: str) -> int:
    while module not in RANKS:
        module = module.rpartition(".")[0]
        if not module:
            raise AssertionError("unranked module")
    return RANKS[module]


def _modules():
    for package, folder in SOURCES.items():
        for path in sorted(folder.glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            yield name, path


def _imports(name: str, path: Path):
    """The package modules `name` imports, absolute or relative, anywhere in the file."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] if base in SOURCES or base == "mednet_hf" else [base]
            yield from (t for t in targets if t.startswith("mednet_hf"))
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("mednet_hf"))


def _resolve(target: str) -> str:
    """`mednet_hf.data.load_medical_dataset` → `mednet_hf.data`; `mednet_hf.builders.DRIVE` → `mednet_hf.builders`;
    a public name of the root (`mednet_hf.MedNetModel`) → the module that defines it."""
    import mednet_hf

    public = target.removeprefix("mednet_hf.")
    if public in mednet_hf._PUBLIC:
        return f"mednet_hf.{mednet_hf._PUBLIC[public]}"
    known = {name for name, _ in _modules()}
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return target


@pytest.mark.parametrize("name,path", list(_modules()), ids=[n for n, _ in _modules()])
def test_imports_only_go_down_the_data_path(name, path):
    if name == "mednet_hf":
        return  # the package root imports nothing of its own eagerly (PEP 562); checked below
    upward = sorted({t for t in map(_resolve, _imports(name, path)) if t != name and _rank(t) > _rank(name)})
    assert not upward, f"{name} (rank {_rank(name)}) imports modules further up the data path: {upward}"


def test_the_model_never_imports_the_processor_and_hub_never_the_builders():
    graph = {name: {_resolve(t) for t in _imports(name, path)} for name, path in _modules()}
    assert "mednet_hf.image_processing_mednet" not in graph["mednet_hf.modeling_mednet"]
    assert not {"mednet_hf.builders", "mednet_hf.data"} & graph["mednet_hf.hub"]
    core = [n for n in graph if not n.startswith(("mednet_hf.training", "mednet_hf.cli", "mednet_hf.commands"))]
    assert not [n for n in core if any(t.startswith("mednet_hf.training") for t in graph[n])]
    assert not [n for n in graph if n.startswith("mednet_hf.builders") and "mednet_hf" in graph[n]]


@pytest.mark.slow
def test_importing_a_builder_loads_no_torch_and_writes_no_cache(tmp_path):
    home = tmp_path / "hf-home"
    code = ("import sys, mednet_hf.builders, mednet_hf.builders.medical_imagefolder; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HF_HOME": str(home)}, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert not home.exists() or not any(home.rglob("*"))
    # transformers imported later still finds MedNet registered and the bundled checkpoints in the cache.
    code += "; from transformers import AutoConfig; print(type(AutoConfig.from_pretrained('mednet/gray')).__name__)"
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "MedNetConfig"


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_package(tmp_path):
    """What `pip install` would put in site-packages: `mednet_hf` and nothing else (builders and training inside)."""
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                             str(REPO_ROOT)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel = next(tmp_path.glob("mednet_hf-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = archive.read(next(n for n in names if n.endswith("top_level.txt"))).decode().split()
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"mednet_hf"} and top_level == ["mednet_hf"]
    assert {"mednet_hf/builders/medical_imagefolder.py", "mednet_hf/training/pretrain.py",
            "mednet_hf/training/configs/gray.yaml", "mednet_hf/bundled/gray/model.safetensors"} <= set(names)


@pytest.mark.parametrize("argv,expected", [
    # a flag takes no value: the positional argument after it stays an input
    (["predict", "--model", "m", "--strict", "a.png", "--output", "o.csv"], {"strict": True, "inputs": ["a.png"]}),
    (["data", "prepare", "--no-checks", "medmnist"], {"no_checks": True, "name": "medmnist"}),
    (["data", "push", "--private", "medmnist", "--repo-id", "x/y"], {"private": True, "name": "medmnist"}),
    # an abbreviation of an option with a dashed and an underscored spelling is that option
    (["predict", "--model", "m", "a.png", "--top", "2", "--batch", "8", "--output", "o"], {"top_k": 2, "batch_size": 8}),
    (["pretrain", "--recipe", "r.yaml", "--cache", "/c", "--output-dir", "o"], {"cache_dir": "/c"}),
    # on by default: --no-x (and HfArgumentParser's --no_x) turn it off; recipe overrides stay unset unless given
    (["finetune", "--model", "m", "--dataset", "d", "--no_augment", "--hflip"], {"augment": False, "hflip": True}),
    (["pretrain", "--recipe", "r.yaml", "--no-channels-last", "--output-dir", "o"], {"channels_last": False, "compile": None}),
])
def test_command_lines_of_the_argparse_cli_still_parse_the_same(argv, expected):
    from mednet_hf.cli import build_parser

    parsed = vars(build_parser().parse_args(argv))
    assert {k: parsed[k] for k in expected} == expected


def test_the_old_predict_helpers_still_work_and_say_what_replaces_them():
    from conftest import data_path

    from mednet_hf.medical_files import walk
    from mednet_hf.predict import collect, load

    inputs = [str(data_path("cxr/00000001_000.png"))]
    with pytest.warns(FutureWarning, match="medical_files.walk"):
        items, unreadable = collect(inputs)
    assert [i.shown for i in items] == [i.shown for i in walk(inputs)[0]] and not unreadable
    with pytest.warns(FutureWarning, match="load_for_use"), pytest.raises(ValueError, match="without a trained classification head"):
        load("mednet/gray")  # the one loader's checks: a backbone is not a classifier
