"""Which settings make a CPU-hour of pretraining count: (a) a plain timm training step and (b) `PretrainModel` with
all three objectives (from `benchmarks/throughput.py`), measured side by side in one run for each combination of

  - precision: fp32 or bf16 autocast;
  - memory format: channels_last or NCHW;
  - `torch.compile` (inductor's CPU backend) or eager;
  - one process with every core as intra-op threads, or one single-thread process per core (run at the same time,
    each pinned to its core; their rates are summed).

Each combination runs in fresh processes (so threads, compile caches and allocators start clean), and the table
gives images/s and the ratio to the first row (fp32, NCHW, eager, one process). With `--end-to-end`, the best
one-process and the best per-core settings also run `mednet pretrain` for real, the second as a two-process gloo
run under `accelerate launch` (gradients all-reduced every step), which is what a release run would use.

    python benchmarks/cpu_settings.py                      # ResNet-18 at 28 and 64 px, batch 128
    python benchmarks/cpu_settings.py --sizes 28 --steps 2 --warmup 1 --end-to-end
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# (label, precision, channels_last, compile, processes)
SETTINGS = [
    ("fp32, NCHW, eager, 1 process", "no", False, False, 1),
    ("fp32, channels_last, eager, 1 process", "no", True, False, 1),
    ("bf16, NCHW, eager, 1 process", "bf16", False, False, 1),
    ("bf16, channels_last, eager, 1 process", "bf16", True, False, 1),
    ("fp32, channels_last, compiled, 1 process", "no", True, True, 1),
    ("bf16, channels_last, compiled, 1 process", "bf16", True, True, 1),
    ("fp32, channels_last, eager, 1 process per core", "no", True, False, "per-core"),
    ("bf16, channels_last, eager, 1 process per core", "bf16", True, False, "per-core"),
    ("bf16, channels_last, compiled, 1 process per core", "bf16", True, True, "per-core"),
]


def cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def measure(size: int, precision: str, channels_last: bool, compile_: bool, processes, args, workdir: Path) -> dict:
    """(a) and (b) images/s of one setting: one process with every core, or one single-thread process per core."""
    available = cores()
    groups = [available] if processes == 1 else [[core] for core in available]
    running = []
    for i, group in enumerate(groups):
        output = workdir / f"{size}-{precision}-{channels_last}-{compile_}-{processes}-{i}.json"
        command = [sys.executable, str(HERE / "throughput.py"), "--configs", f"resnet18@{size}", "--parts", "ab",
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--precision", precision, "--threads", str(len(group)), "--output", str(output)]
        command += ["--compile"] if compile_ else []
        command += [] if channels_last else ["--no-channels-last"]
        # Pinned, so that per-core processes do not migrate onto each other's core.
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda g=group: os.sched_setaffinity(0, g))
        running.append((process, output))
    rates = {"a": 0.0, "b": 0.0}
    for process, output in running:
        _, err = process.communicate()
        if process.returncode:
            raise RuntimeError(f"throughput.py failed:\n{err[-3000:]}")
        row = json.loads(output.read_text())["results"][0]
        rates["a"] += row["a_timm_step"]
        rates["b"] += row["b_pretrain_model"]
    return rates


def end_to_end(size: int, precision: str, channels_last: bool, compile_: bool, processes, args, workdir: Path) -> float:
    """`mednet pretrain` on the real gray sources: source images/s from its record (the first step left out). The
    per-core setting runs two gloo processes under `accelerate launch`, each with half the global batch."""
    world = 1 if processes == 1 else len(cores())
    recipe = yaml.safe_load((REPO / "training" / "configs" / "gray.yaml").read_text())
    recipe |= {"image_size": size, "batch_size": args.batch_size // world, "steps": args.pretrain_steps,
               "mixed_precision": precision, "channels_last": channels_last, "compile": compile_,
               "checkpoint_every": 10**9, "log_every": 10**9}
    path, out = workdir / f"recipe-{size}-{world}.yaml", workdir / f"pretrain-{size}-{world}-{time.time_ns()}"
    path.write_text(yaml.safe_dump(recipe))
    cli = ["-m", "mednet_hf.cli", "pretrain", "--recipe", str(path), "--output-dir", str(out)]
    if world == 1:
        command = [sys.executable, *cli]
    else:
        # --multi_gpu with ACCELERATE_USE_CPU: torchrun starts the processes and each joins a gloo group on the CPU
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(world), "--num_machines", "1", "--mixed_precision", precision, "--num_cpu_threads_per_process", "1",
                   "--main_process_port", "29517", *cli]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"ACCELERATE_USE_CPU": "true"})
    if result.returncode:
        raise RuntimeError(f"mednet pretrain failed:\n{result.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())["images_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="28,64", help="comma-separated image sizes (ResNet-18)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (per machine: split over per-core processes in --end-to-end)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps in each of 3 windows (the best counts)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    parser.add_argument("--end-to-end", action="store_true", help="also run `mednet pretrain` with the best settings")
    parser.add_argument("--pretrain-steps", type=int, default=30, help="steps of each --end-to-end run")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "cpu-settings.json")
    args = parser.parse_args()
    os.environ.setdefault("MEDNET_DATA_DIR", str((REPO.parent / "shared" / "data").resolve()))
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for size in [int(s) for s in args.sizes.split(",")]:
            for label, precision, channels_last, compile_, processes in SETTINGS:
                print(f"{size} px: {label} ...", file=sys.stderr, flush=True)
                rates = measure(size, precision, channels_last, compile_, processes, args, Path(workdir))
                rows.append({"size": size, "setting": label, "precision": precision, "channels_last": channels_last,
                             "compile": compile_, "processes": processes, "a": rates["a"], "b": rates["b"]})
                print(f"  (a) {rates['a']:,.0f}  (b) {rates['b']:,.0f} images/s", file=sys.stderr, flush=True)
            if args.end_to_end:
                here = [r for r in rows if r["size"] == size]
                for processes in (1, "per-core"):
                    best = max((r for r in here if r["processes"] == processes), key=lambda r: r["b"])
                    print(f"{size} px: mednet pretrain with {best['setting']} ...", file=sys.stderr, flush=True)
                    best["c"] = end_to_end(size, best["precision"], best["channels_last"], best["compile"], processes, args, Path(workdir))
                    print(f"  (c) {best['c']:,.0f} images/s", file=sys.stderr, flush=True)

    from throughput import device_name  # the same device naming as throughput.py

    import torch

    print(f"\n{device_name(torch.device('cpu'))}; torch {torch.__version__}; ResNet-18, batch {args.batch_size}; "
          "images/s ((b), (c): source images, 8 views each); x = ratio to the first row of the size")
    print(f"{'size':>4}  {'setting':<52}{'(a) timm':>10}{'x':>6}{'(b) Pretrain':>14}{'x':>6}{'(c) pretrain':>14}")
    for row in rows:
        base = next(r for r in rows if r["size"] == row["size"])
        c = f"{row['c']:>14,.0f}" if "c" in row else f"{'':>14}"
        print(f"{row['size']:>4}  {row['setting']:<52}{row['a']:>10,.0f}{row['a'] / base['a']:>6.2f}"
              f"{row['b']:>14,.0f}{row['b'] / base['b']:>6.2f}{c}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"device": device_name(torch.device("cpu")), "torch": torch.__version__,
                                       "cores": cores(), "batch_size": args.batch_size, "steps": args.steps,
                                       "warmup": args.warmup, "rows": rows}, indent=1))
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
