"""Throughput of MedNet's training and inference paths against their ceilings, measured in one run on whatever
device this machine has; prints a table with ratios and writes a JSON record naming the device.

For each backbone@size, at one batch size, precision and compile setting for (a), (b) and (c):
  (a) a plain timm classification training step on synthetic data already on the device (the ceiling);
  (b) `PretrainModel`, all three objectives, stepping on one real batch already on the device (views made on the
      device each step);
  (c) `mednet pretrain` end to end on the real sources of training/configs/gray.yaml (a subprocess; its own rate,
      from the end of its first step to the end of its last);
  (d) `mednet finetune` end to end on PneumoniaMNIST from (c)'s export (train images over the whole call, which
      also evaluates; the Trainer's own precision);
  (e) inference, `MedNetModel` against the bare timm network inside it;
  (f) the data path alone on the CPU cores: rows drawn and gathered from the uint8 cache, every view of the three
      objectives made (1 + 2 global + 4 local + 1 Genesis per image), in source images/s.

    python benchmarks/throughput.py                       # GPU: ResNet-18 @ 28/64, ResNet-50 @ 64/224
    python benchmarks/throughput.py --quick               # a few minutes on a small CPU
    python benchmarks/throughput.py --configs resnet18@28 --parts af --batch-size 256
"""

import argparse
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import yaml

from mednet_hf import MedNetConfig, MedNetModel
from mednet_hf.training.augment import step_generator
from mednet_hf.training.data import pretraining_data
from mednet_hf.training.finetune import finetune
from mednet_hf.training.objectives import pretrain_views
from mednet_hf.training.pretrain import build_model
from mednet_hf.training.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MEDNET_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
RECIPE = REPO / "training" / "configs" / "gray.yaml"
GPU_BATCH = {"resnet18@28": 1024, "resnet18@64": 512, "resnet50@64": 256, "resnet50@224": 64}
RATIOS = {"b/a": ("b_pretrain_model", "a_timm_step"), "c/b": ("c_pretrain_cli", "b_pretrain_model"),
          "d/a": ("d_finetune_cli", "a_timm_step"), "e MedNet/timm": ("e_mednet", "e_timm")}
COLUMNS = {"a_timm_step": "(a) timm", "b_pretrain_model": "(b) PretrainModel", "c_pretrain_cli": "(c) pretrain",
           "d_finetune_cli": "(d) finetune", "e_mednet": "(e) MedNet", "e_timm": "(e) timm", "f_data_path": "(f) data, CPU"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU-sized: ResNet-18 only, batch 32, a few steps")
    parser.add_argument("--configs", help="comma-separated backbone@size, e.g. resnet18@28,resnet50@224")
    parser.add_argument("--parts", default="abcdef", help="which of (a)-(f) to run, e.g. 'abf'")
    parser.add_argument("--batch-size", type=int, help="one batch size for every config (default: per config)")
    parser.add_argument("--steps", type=int, help="timed steps of (a), (b), (e), in each of 3 windows (the best counts)")
    parser.add_argument("--warmup", type=int, help="untimed steps before them (compilation happens here)")
    parser.add_argument("--pretrain-steps", type=int, help="steps of (c), the first not timed")
    parser.add_argument("--finetune-steps", type=int, help="optimizer steps of (d)")
    parser.add_argument("--data-batch", type=int, default=512, help="images per call in (f)")
    parser.add_argument("--precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                        help="mixed precision of (a), (b), (c), (e); auto: bf16 on CUDA, none on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile (a), (b), (c), (e); eager if it fails")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                        help="keep the default (NCHW) memory format in (a), (b), (c), (e)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads of this process (default: torch's)")
    parser.add_argument("--output", help="JSON file (default: benchmarks/results/throughput-<device>.json)")
    args = parser.parse_args()
    quick = args.quick
    args.configs = (args.configs or ("resnet18@28,resnet18@64" if quick else ",".join(GPU_BATCH))).split(",")
    args.steps = args.steps or (2 if quick else 20)
    args.warmup = args.warmup or (1 if quick else 5)
    args.pretrain_steps = args.pretrain_steps or (4 if quick else 60)
    args.finetune_steps = args.finetune_steps or (4 if quick else 40)
    if unknown := sorted(set(args.parts) - set("abcdef")):
        parser.error(f"--parts takes letters a-f, got {unknown}")
    for config in args.configs:
        if "@" not in config:
            parser.error(f"--configs takes backbone@size, got {config!r}")
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{model}, {os.cpu_count()} cores"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(make_step, module, images_per_step: int, args, device, windows: int = 3) -> float:
    """Images/s of `make_step(runner)()`: the best of `windows` runs of `args.steps` calls (a shared machine is
    noisy), after `args.warmup` calls. `runner` is `module` compiled when asked, or `module` itself if compiling
    fails, as `mednet pretrain` falls back."""
    runner = torch.compile(module) if args.compile else module
    step = make_step(runner)
    try:
        for _ in range(args.warmup):
            step()
    except Exception as e:
        if runner is module:
            raise
        warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); measuring eagerly")
        step = make_step(module)
        for _ in range(args.warmup):
            step()
    best = float("inf")
    for _ in range(windows):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return images_per_step * args.steps / best


def autocast(args, device):
    return torch.autocast(device.type, dtype=torch.float16 if args.precision == "fp16" else torch.bfloat16,
                          enabled=args.precision != "no")


def plain_timm(architecture: str, size: int, channels: int, batch: int, args, device) -> float:
    """(a) The ceiling: classification steps of the bare timm network on synthetic data on the device."""
    form = torch.channels_last if args.channels_last else torch.contiguous_format
    model = timm.create_model(architecture, num_classes=10, in_chans=channels).to(device).to(memory_format=form)
    images = torch.rand(batch, channels, size, size, device=device).contiguous(memory_format=form)
    labels = torch.randint(0, 10, (batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")

    def make_step(runner):
        def step():
            with autocast(args, device):
                loss = F.cross_entropy(runner(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    return rate(make_step, model, batch, args, device)


def pretrain_model(recipe, data, batch: int, args, device) -> float:
    """(b) `PretrainModel` with all three objectives on one real batch on the device; views made every step."""
    heads = [(i, c, s.loss_weight) for i, (c, s) in enumerate(zip(data.classes, recipe.sources)) if c]
    model = build_model(recipe, heads).to(device)
    views = pretrain_views(recipe.image_size, recipe.objectives)
    rows = data.batch(data.sample(recipe.seed, 0, batch), device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    counter = itertools.count()

    def make_step(runner):
        def step():
            inputs = views(rows["images"], step_generator(recipe.seed, next(counter), 0, device))
            with autocast(args, device):
                losses = runner(inputs | {"label": rows["label"], "source": rows["source"]})
            losses["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    return rate(make_step, model, batch, args, device)


def pretrain_cli(recipe, workdir: Path) -> tuple[float, Path]:
    """(c) `mednet pretrain` in a fresh process; its rate leaves out its first step. Returns it and the export."""
    path, out = workdir / "recipe.yaml", workdir / "pretrain"
    path.write_text(yaml.safe_dump(recipe.to_dict()))
    command = [sys.executable, "-m", "mednet_hf.cli", "pretrain", "--recipe", str(path), "--output-dir", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"mednet pretrain failed:\n{result.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())["images_per_second"], out / "final"


def finetune_end_to_end(model: Path, batch: int, args, workdir: Path) -> float:
    """(d) `mednet finetune` on PneumoniaMNIST: train images per second of the whole call."""
    record = finetune(
        str(model), "medmnist:pneumoniamnist", DATA_DIR / "medmnist", workdir / "finetune", max_steps=args.finetune_steps,
        batch_size=batch, no_checks=True, options={"filename": "pneumoniamnist_subset.npz"}, report_to="none",
    )
    return record["steps"] * batch / record["seconds"]


def inference(architecture: str, size: int, variant: str, batch: int, args, device) -> tuple[float, float]:
    """(e) Images/s of `MedNetModel` and of the bare timm network inside it, same weights and inputs."""
    mednet = MedNetModel(MedNetConfig(architecture=architecture, variant=variant, image_size=size))
    form = torch.channels_last if args.channels_last else torch.contiguous_format
    mednet = mednet.to(device).to(memory_format=form).eval()
    images = torch.rand(batch, mednet.config.num_channels, size, size, device=device).contiguous(memory_format=form)
    rates = []
    for module in (mednet, mednet.get_encoder()):
        def make_step(runner):
            @torch.inference_mode()
            def step():
                with autocast(args, device):
                    runner(images)
            return step
        rates.append(rate(make_step, module, batch, args, device))
    return rates[0], rates[1]


def data_path(recipe, data, batch: int) -> float:
    """(f) Source images/s of the data path on the CPU: rows drawn, gathered from the cache, all views made."""
    views = pretrain_views(recipe.image_size, recipe.objectives)
    cpu = torch.device("cpu")
    best = float("inf")
    for step in range(6):  # best of several: a shared CPU is noisy
        started = time.perf_counter()
        rows = data.batch(data.sample(recipe.seed, step, batch), cpu)
        views(rows["images"], step_generator(recipe.seed, step, 0))
        best = min(best, time.perf_counter() - started)
    return batch / best


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.precision == "auto":
        args.precision = "bf16" if device.type == "cuda" else "no"
    name = device_name(device)
    os.environ["MEDNET_DATA_DIR"] = str(DATA_DIR)  # the recipe's sources are relative to it, here and in (c)
    rows = []
    for config in args.configs:
        architecture, size = config.split("@")
        size = int(size)
        batch = args.batch_size or (32 if args.quick else GPU_BATCH.get(config, 256))
        recipe = load_recipe(
            RECIPE, backbone=architecture, image_size=size, batch_size=batch, steps=args.pretrain_steps,
            mixed_precision=args.precision, compile=args.compile, channels_last=args.channels_last, checkpoint_every=10**9, log_every=10**9,
            num_workers=min(8, os.cpu_count() or 1),  # decoding, on the first run only
        )
        data = pretraining_data(recipe)  # decodes on the first run, reads the cache after
        row = {"config": config, "batch": batch}
        print(f"{config}: batch {batch}, {len(data)} cached images", file=sys.stderr)
        if "f" in args.parts:
            row["f_data_path"] = data_path(recipe, data, args.data_batch)
        on_device = data.to(device)
        if "a" in args.parts:
            row["a_timm_step"] = plain_timm(architecture, size, data.images.shape[1], batch, args, device)
        if "b" in args.parts:
            row["b_pretrain_model"] = pretrain_model(recipe, on_device, batch, args, device)
        if "e" in args.parts:
            row["e_mednet"], row["e_timm"] = inference(architecture, size, recipe.variant, batch, args, device)
        if "c" in args.parts or "d" in args.parts:
            with tempfile.TemporaryDirectory() as workdir:
                row["c_pretrain_cli"], export = pretrain_cli(recipe, Path(workdir))
                if "d" in args.parts:
                    row["d_finetune_cli"] = finetune_end_to_end(export, batch, args, Path(workdir))
        for ratio, (top, bottom) in RATIOS.items():
            if top in row and bottom in row:
                row[ratio] = row[top] / row[bottom]
        rows.append(row)

    def cell(row: dict, key: str) -> str:
        if key not in row:
            return f"{'-':>18}"
        return f"{row[key]:>18.2f}" if key in RATIOS else f"{row[key]:>18,.0f}"

    print(f"\n{name}; torch {torch.__version__}; {torch.get_num_threads()} thread(s); precision {args.precision}; "
          f"compile {args.compile}; channels_last {args.channels_last}; "
          "images/s ((b), (c), (f): source images, each giving 8 views)")
    print(f"{'config':<14}{'batch':>6}" + "".join(f"{title:>18}" for title in [*COLUMNS.values(), *RATIOS]))
    for row in rows:
        print(f"{row['config']:<14}{row['batch']:>6}" + "".join(cell(row, key) for key in [*COLUMNS, *RATIOS]))

    slug = re.sub(r"[^A-Za-z0-9]+", "-", name.split(",")[0]).strip("-")
    output = Path(args.output or REPO / "benchmarks" / "results" / f"throughput-{slug}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "device": name, "device_type": device.type, "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "precision": args.precision, "compile": args.compile, "channels_last": args.channels_last,
        "threads": torch.get_num_threads(), "recipe": str(RECIPE.relative_to(REPO)),
        "steps": args.steps, "warmup": args.warmup, "pretrain_steps": args.pretrain_steps,
        "finetune_steps": args.finetune_steps, "data_batch": args.data_batch, "results": rows,
    }, indent=1))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
