"""The CPU release run of one variant: the recipe in cycles of about an hour of training on every core, each cycle a
cosine decay to an annealed checkpoint (warm restarts), each followed by a benchmark point on the out-of-domain
target; it stops after `--hours` of training, or earlier when the last two points, at least an hour of training
apart, agree within the seeds' spread on every row (the record says which). The recipe is the budget study's
winner (`RECIPES`): supervised, each cycle at 28 px with its last quarter of CPU time at 64 px.

    nohup python model_cards/release_cpu.py --variant gray > release-gray.log 2>&1 &      # run, or resume, in the background

The run lives outside the work tree (`$HF_HOME/mednet/release-<variant>-cpu` by default), so a later session on the
same machine resumes it exactly: run the same command again. Stopped at any time (Ctrl-C, SIGKILL, the end of a
session), it resumes from the last checkpoint; finished cycles and benchmark points are kept. On a new machine, where
that folder is gone, `--init mednet/<variant>` warm-restarts from the last released weights as a new segment.

`release.json` in the run folder holds the plan, every cycle's benchmark point and the stop decision (`points.png`
plots the points against hours of training); the
pretraining record (`pretrain/results.json`) holds every segment (start, steps, images, wall and CPU time,
threads, precision, final losses). `python model_cards/build_release.py --variant <v> --release-run <folder>` ships
the last cycle's weights with both.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from budget_study import evaluate, launcher, pretrain_command, probe, relative, run, write_json  # noqa: E402

from mednet_hf.options import portable_path  # noqa: E402

# The recipe of each variant, from the budget study (README "The budget study"): supervised multi-source training,
# each cycle at 28 px, then its last quarter of CPU time at 64 px (the study's progressive arm), so every cycle's
# annealed weights, and the release, end at 64 px.
RECIPES = {
    "gray": {"recipe": "training/configs/budget/gray-supervised-progressive.yaml", "final_size": 64, "final_share": 0.25},
    "color": {"recipe": "training/configs/color-supervised.yaml", "final_size": 64, "final_share": 0.25},
}
# The benchmark point of each variant: its out-of-domain target, the budget study's protocol.
EVALUATION = {
    "gray": {"study": "gray", "task": "pneumonia", "label_fractions": [0.01, 0.1], "seeds": [0, 1, 2]},
    "color": {"study": "color", "task": "derm_isic", "label_fractions": [0.01, 0.1], "seeds": [0, 1, 2]},
}


def default_run_dir(variant: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "mednet" / f"release-{variant}-cpu"


def cycle_plan(cycle_cpu_seconds: float, costs: dict[int, float], first: int, final: int | None, share: float) -> dict:
    """The steps of one cycle that fit its CPU seconds: `share` of them at `final` px (the cycle's end), the rest
    at `first` px. `costs` is CPU seconds per step at each size."""
    if not final or final == first:
        return {"cycle_steps": max(20, int(cycle_cpu_seconds / costs[first])), "head_steps": None}
    head = max(10, int((1 - share) * cycle_cpu_seconds / costs[first]))
    tail = max(10, int(share * cycle_cpu_seconds / costs[final]))
    return {"cycle_steps": head + tail, "head_steps": head}


def size_schedule(state: dict, cycle: int) -> list[list[int]]:
    """The recipe's `image_size_schedule` up to the end of `cycle`: every cycle (the first after its warm-up) trains
    `head_steps` at the first size, then the rest at the final size. Cycle k spans steps
    [warmup + k * cycle_steps, warmup + (k + 1) * cycle_steps); the first also holds the warm-up."""
    if state.get("head_steps") is None:
        return []
    warmup, length, head = state["warmup_steps"], state["cycle_steps"], state["head_steps"]
    schedule = []
    for k in range(cycle + 1):
        start = 0 if k == 0 else warmup + k * length
        if k:
            schedule.append([start, state["first_size"]])
        schedule.append([warmup + k * length + head, state["final_size"]])
    return schedule


def agree(a: dict, b: dict) -> tuple[bool, list[str]]:
    """Whether two benchmark points agree on every row: fine-tuning means within the larger of their standard
    deviations over seeds, frozen-feature AUROCs within the larger of their bootstrap standard deviations."""
    notes, same = [], True
    for row, (mean_a, std_a) in a["scores"].items():
        mean_b, std_b = b["scores"][row]
        spread = max(std_a, std_b)
        ok = abs(mean_b - mean_a) <= spread
        same &= ok
        notes.append(f"{row}: {mean_a:.3f} -> {mean_b:.3f} (spread {spread:.3f}){'' if ok else ' differs'}")
    return same, notes


def plot_points(points: list[dict], path: Path, references: list[dict] = ()) -> None:
    """Transfer against hours of training: one panel per row of the benchmark point (mean ± std), with flat lines for
    references that did not train here (the budget study's scratch and the previous release)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    metrics = list(points[0]["scores"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        hours = [p["training_hours"] for p in points]
        means, stds = zip(*(p["scores"][metric] for p in points))
        ax.errorbar(hours, means, yerr=stds, marker="o", capsize=3, label="this run's cycles")
        for reference, style in zip(references, ("--", ":", "-.")):
            ax.axhline(reference["scores"][metric][0], color="gray", linestyle=style, label=reference["name"])
        ax.set(title=metric, xlabel="hours of training (every core)", ylabel="test AUROC", xlim=(0, 1.1 * max(hours)))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=["gray", "color"], required=True)
    parser.add_argument("--recipe", type=Path, help="default: the budget study's winner for the variant (RECIPES)")
    parser.add_argument("--final-size", type=int, help="each cycle ends at this size (default: RECIPES; 0 for one size)")
    parser.add_argument("--final-share", type=float, help="share of each cycle's CPU time at --final-size (default: RECIPES)")
    parser.add_argument("--run-dir", type=Path, help="default: $HF_HOME/mednet/release-<variant>-cpu")
    parser.add_argument("--hours", type=float, default=6.0, help="wall-clock hours of training on every core")
    parser.add_argument("--cycle-hours", type=float, default=1.0, help="training hours per cycle (one benchmark point each)")
    parser.add_argument("--init", default="scratch", help="scratch, or the released weights to warm-restart from (a new machine)")
    parser.add_argument("--processes", type=int, default=1, help="processes (one gloo process per core, or one with every core)")
    parser.add_argument("--probe-steps", type=int, default=12)
    args = parser.parse_args()
    os.environ.setdefault("MEDNET_DATA_DIR", str((REPO.parent / "shared" / "data").resolve()))
    run_dir = (args.run_dir or default_run_dir(args.variant)).resolve()
    default = RECIPES[args.variant] if args.recipe is None else {"recipe": args.recipe, "final_size": None, "final_share": 0.0}
    recipe = REPO / (args.recipe or default["recipe"])
    final_size = default["final_size"] if args.final_size is None else args.final_size
    final_share = default["final_share"] if args.final_share is None else args.final_share
    if final_size and not 0 < final_share < 1:
        parser.error(f"--final-share must be between 0 and 1 with --final-size {final_size}, got {final_share}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    launch = {"processes": args.processes, "threads_per_process": max(1, cores // args.processes)}
    log_path, state_path = run_dir / "logs", run_dir / "release.json"
    run_dir.mkdir(parents=True, exist_ok=True)

    from mednet_hf.training.pretrain import run_precision
    from mednet_hf.training.recipe import load_recipe

    loaded = load_recipe(recipe)
    if state_path.is_file():
        state = json.loads(state_path.read_text())
    else:  # the plan is fixed for the life of the run, so every resume trains the same cycles
        arm = {"name": args.variant, "recipe": relative(recipe)}
        study = {"launch": launch, "probe_steps": args.probe_steps, "global_batch": loaded.batch_size}
        sizes = [loaded.image_size] + ([final_size] if final_size and final_size != loaded.image_size else [])
        precision = run_precision(loaded, sizes)
        costs = {size: probe(arm, size, study, run_dir, precision) for size in sizes}  # CPU seconds per step (every process and thread)
        plan = cycle_plan(args.cycle_hours * 3600 * cores, costs, loaded.image_size, final_size, final_share)
        state = {"variant": args.variant, "recipe": relative(recipe), "init": args.init, "launch": launch,
                 "cpu_seconds_per_step": costs, "cores": cores, **plan, "first_size": loaded.image_size,
                 "final_size": final_size or None, "final_share": final_share if final_size else 0.0,
                 "warmup_steps": max(10, plan["cycle_steps"] // 20), "hours": args.hours, "evaluation": EVALUATION[args.variant],
                 "points": [], "stopped": None, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(state_path, state)
    prefix, env = launcher(state["launch"])
    pretrain_dir = run_dir / "pretrain"
    while state["stopped"] is None:
        cycle = len(state["points"])
        steps = state["warmup_steps"] + (cycle + 1) * state["cycle_steps"]
        overrides = {"steps": steps, "cycle_steps": state["cycle_steps"], "warmup_steps": state["warmup_steps"],
                     "checkpoint_every": max(20, state["cycle_steps"] // 6), "keep_checkpoints": 2,
                     "batch_size": loaded.batch_size // state["launch"]["processes"], "init": state["init"],
                     "image_size_schedule": size_schedule(state, cycle)}
        command = pretrain_command(prefix, REPO / state["recipe"], pretrain_dir, overrides)
        record_path = pretrain_dir / "results.json"
        done = record_path.is_file() and json.loads(record_path.read_text())["steps"] >= steps
        if not done:
            has_checkpoint = any((pretrain_dir / "checkpoints").glob("step-*")) if (pretrain_dir / "checkpoints").is_dir() else False
            print(f"cycle {cycle}: training to step {steps}", flush=True)
            run(command + (["--resume"] if has_checkpoint else []), env, log_path / f"pretrain-cycle{cycle}.log")
        record = json.loads(record_path.read_text())
        point_dir = run_dir / "points" / f"cycle-{cycle}"
        if not (point_dir / "model.safetensors").is_file():  # this cycle's annealed weights, kept for the release
            copying = point_dir.with_name(f".{point_dir.name}.tmp")  # copied whole, then renamed: never half a point
            shutil.rmtree(copying, ignore_errors=True)
            shutil.copytree(pretrain_dir / "final", copying)
            shutil.rmtree(point_dir, ignore_errors=True)
            os.replace(copying, point_dir)
        print(f"cycle {cycle}: benchmark point", flush=True)
        study = {"evaluation": state["evaluation"]}
        point = evaluate(f"cycle-{cycle}", str(point_dir), "mednet", study, run_dir)
        hours = record["wall_seconds_total"] / 3600
        point |= {"cycle": cycle, "steps": record["steps"], "training_hours": hours,
                  "cpu_hours": record["cpu_seconds_total"] / 3600, "weights": portable_path(str(point_dir))}
        state["points"].append(point)
        print(f"cycle {cycle}: {hours:.2f} h of training; " + ", ".join(f"{k} {v[0]:.3f}" for k, v in point["scores"].items()), flush=True)
        earlier = [p for p in state["points"][:-1] if hours - p["training_hours"] >= 1.0]
        if earlier:
            same, notes = agree(earlier[-1], point)
            if same:
                state["stopped"] = {"why": "early: the last two benchmark points, at least an hour of training apart, agree within "
                                           "the seeds' spread on every row", "compared": [earlier[-1]["cycle"], cycle], "rows": notes}
        if state["stopped"] is None and hours >= state["hours"] - 0.05:
            state["stopped"] = {"why": f"{state['hours']:g} hours of training reached", "compared": None, "rows": []}
        write_json(state_path, state)
        plot_points(state["points"], run_dir / "points.png")
    print(f"stopped: {state['stopped']['why']}; weights: {state['points'][-1]['weights']}")


if __name__ == "__main__":
    main()
