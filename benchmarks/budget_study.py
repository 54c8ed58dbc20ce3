"""The CPU budget study: which pretraining recipe gives the most transfer per CPU-hour.

Every arm (a recipe file under `training/configs/budget/`) pretrains for the same CPU time, counted as the CPU
seconds of every process and thread (so arms stay comparable when something else shares the machine). A short
probe measures the CPU seconds one step of the arm takes at each resolution it trains at; the arm then runs for the
steps that fit the budget (a progressive arm spends `final_share` of it at its last resolution). Each arm's export
is then studied with `mednet benchmark` on the out-of-domain target (PneumoniaMNIST subset: fine-tuning at 1% and
10% labels with 3 seeds, linear probe and kNN), beside scratch and the previous release under the same protocol.

    python benchmarks/budget_study.py                                  # every arm of training/configs/budget/study.yaml
    python benchmarks/budget_study.py --arm supervised-28 --budget-cpu-minutes 2 --output-dir /tmp/b   # a rehearsal

Run again with the same `--output-dir`, it reuses every probe, pretraining run and fine-tuning run that finished (a
killed pretraining run resumes from its last checkpoint). It writes `results.json`, `results.md` and `budget.png`
(transfer against CPU-minutes) to the output folder; `--records DIR` copies them there.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from mednet_hf.options import portable_path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STUDY = REPO / "training" / "configs" / "budget" / "study.yaml"
METRICS = {"finetune 1%": ("finetune", 0.01), "finetune 10%": ("finetune", 0.1), "linear probe": ("frozen", "linear_probe"),
           "kNN": ("frozen", "knn")}


def write_json(path: Path, value) -> None:
    """Whole or not at all: a run resumes from these files after a kill at any moment."""
    written = path.with_name(f".{path.name}.tmp")
    written.write_text(json.dumps(value, indent=1))
    os.replace(written, path)


def launcher(launch: dict) -> tuple[list[str], dict]:
    """The command prefix and environment that run `mednet` with the study's process layout on this CPU."""
    processes, threads = int(launch.get("processes", 1)), int(launch.get("threads_per_process", os.cpu_count() or 1))
    env = {"OMP_NUM_THREADS": str(threads)}
    if processes == 1:
        return [sys.executable, "-m", "mednet_hf.cli"], env
    # torchrun starts the processes; ACCELERATE_USE_CPU makes each join a gloo group on the CPU
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--num_cpu_threads_per_process", str(threads), "--dynamo_backend", "no",
            "--main_process_port", str(launch.get("port", 29531)), "-m", "mednet_hf.cli"], env | {"ACCELERATE_USE_CPU": "true"}


def run(command: list[str], env: dict, log: Path) -> None:
    """Run a command with its output in `log`; stop the study with the log's end if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        code = subprocess.run(command, env=os.environ | env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if code:
        raise SystemExit(f"failed ({code}): {shlex.join(command)}\n{log.read_text()[-3000:]}")


def relative(path: Path) -> str:
    """Paths in records are relative to the repository, so a reader can rerun the commands."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def pretrain_command(prefix: list[str], recipe: Path, out: Path, overrides: dict) -> list[str]:
    command = [*prefix, "pretrain", "--recipe", relative(recipe), "--output-dir", relative(out)]
    for key, value in overrides.items():
        command += [f"--{key.replace('_', '-')}", json.dumps(value) if isinstance(value, list) else str(value)]
    return command


def probe(arm: dict, size: int, study: dict, out: Path, precision: str = "auto") -> float:
    """CPU seconds per step of `arm` at `size` in `precision` (the whole run's: `pretrain.run_precision`), from a
    short run in the study's process layout."""
    folder = out / "probes" / f"{arm['name']}-{size}"
    record = folder / "results.json"
    if not record.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        prefix, env = launcher(study["launch"])
        overrides = {"steps": study["probe_steps"], "image_size": size, "image_size_schedule": [], "warmup_steps": 1,
                     "checkpoint_every": 10**6, "log_every": 10**6, "mixed_precision": precision, **batch_override(arm, study)}
        run(pretrain_command(prefix, REPO / arm["recipe"], folder, overrides), env, out / "logs" / f"probe-{arm['name']}-{size}.log")
    return json.loads(record.read_text())["cpu_seconds_per_step"]


def batch_override(arm: dict, study: dict) -> dict:
    """Every arm steps on the same global batch, whatever the number of processes."""
    processes = int(study["launch"].get("processes", 1))
    return {"batch_size": study["global_batch"] // processes}


def plan(arm: dict, study: dict, budget_minutes: float, out: Path) -> dict:
    """The steps (and the resolution schedule) that fit the CPU budget."""
    from mednet_hf.training.pretrain import run_precision
    from mednet_hf.training.recipe import load_recipe

    recipe = load_recipe(REPO / arm["recipe"])
    budget = budget_minutes * 60
    first, final = recipe.image_size, arm.get("final_size")
    precision = run_precision(recipe, [first, final] if final else [first])  # the probes time the run's own steps
    costs = {first: probe(arm, first, study, out, precision)}
    if final:
        costs[final] = probe(arm, final, study, out, precision)
        share = float(arm["final_share"])
        head = int(round((1 - share) * budget / costs[first]))
        tail = int(round(share * budget / costs[final]))
        steps, schedule = head + tail, [[head, final]]
    else:
        steps, schedule = int(round(budget / costs[first])), []
    return {"steps": steps, "warmup_steps": max(10, steps // 20), "image_size_schedule": schedule,
            "cpu_seconds_per_step": costs, "budget_cpu_minutes": budget_minutes}


def plan_arm(arm: dict, study: dict, budget_minutes: float, out: Path) -> dict:
    """The arm's plan, made once (a rerun keeps it)."""
    planned = out / "arms" / arm["name"] / "plan.json"
    if not planned.is_file():
        planned.parent.mkdir(parents=True, exist_ok=True)
        write_json(planned, plan(arm, study, budget_minutes, out))
    return json.loads(planned.read_text())


def pretrain_arm(arm: dict, study: dict, budget_minutes: float, out: Path) -> dict:
    folder = out / "arms" / arm["name"]
    record = folder / "pretrain" / "results.json"
    steps = plan_arm(arm, study, budget_minutes, out)
    overrides = {k: steps[k] for k in ("steps", "warmup_steps", "image_size_schedule")} | batch_override(arm, study)
    overrides |= {"checkpoint_every": max(50, steps["steps"] // 8)}
    prefix, env = launcher(study["launch"])
    command = pretrain_command(prefix, REPO / arm["recipe"], folder / "pretrain", overrides)
    if not record.is_file():
        resume = ["--resume"] if (folder / "pretrain" / "checkpoints").is_dir() and any((folder / "pretrain" / "checkpoints").glob("step-*")) else []
        run(command + resume, env, out / "logs" / f"pretrain-{arm['name']}.log")
    result = json.loads(record.read_text())
    return {"plan": steps, "command": shlex.join(["mednet", *command[command.index("pretrain"):]]),
            "launch": study["launch"], "steps": result["steps"], "cpu_minutes": result["cpu_seconds_total"] / 60,
            "wall_minutes": result["wall_seconds_total"] / 60, "images": sum(s["images"] for s in result["segments"]),
            "epochs": result["epochs"], "precision": result["precision"], "final_losses": result["final_losses"],
            "model": str(folder / "pretrain" / "final")}


def evaluate(name: str, model: str, init: str, study: dict, out: Path) -> dict:
    """`mednet benchmark` of one initialisation under the study's evaluation protocol."""
    evaluation = study["evaluation"]
    folder = out / "bench" / name
    command = [sys.executable, "-m", "mednet_hf.cli", "benchmark", "--study", evaluation["study"], "--model", model,
               "--output-dir", str(folder), "--init", init, "--task", evaluation["task"]]
    for fraction in evaluation["label_fractions"]:
        command += ["--label-fraction", str(fraction)]
    for seed in evaluation["seeds"]:
        command += ["--seed", str(seed)]
    run(command, {"OMP_NUM_THREADS": str(os.cpu_count() or 1)}, out / "logs" / f"bench-{name}.log")
    results = json.loads((folder / "results.json").read_text())
    scores = {}
    for label, (kind, key) in METRICS.items():
        if kind == "finetune":
            values = [r["test_auroc"] for r in results["runs"] if r["label_fraction"] == key and r["init"] == init]
            scores[label] = [float(np.mean(values)), float(np.std(values))] if values else None
        else:
            frozen = results["frozen"].get(evaluation["task"], {}).get(init)
            scores[label] = [frozen[key]["test_auroc"], frozen[key].get("test_auroc_bootstrap_std", 0.0)] if frozen else None
    # a record names the folder portably (`$HF_HOME/...` outside the repository), not as this machine has it
    return {"scores": scores, "benchmark": portable_path(str(folder / "results.json"))}


def markdown(results: dict) -> str:
    lines = [f"# CPU budget study ({results['budget_cpu_minutes']:g} CPU-minutes per arm)", "",
             f"{results['device']}; transfer target: {results['evaluation']['task']} (test AUROC; fine-tuning mean ± std over "
             f"{len(results['evaluation']['seeds'])} seeds; frozen features at 100% labels, ± the bootstrap standard deviation over "
             "resampled test sets).", "",
             "| arm | CPU-min | wall-min | steps | images | " + " | ".join(METRICS) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(METRICS)]
    for row in results["rows"]:
        cells = [f"{v[0]:.3f} ± {v[1]:.3f}" if v and v[1] else f"{v[0]:.3f}" if v else "–" for v in (row["scores"].get(m) for m in METRICS)]
        cpu = f"{row['cpu_minutes']:.1f}" if row.get("cpu_minutes") is not None else "–"
        wall = f"{row['wall_minutes']:.1f}" if row.get("wall_minutes") is not None else "–"
        lines.append(f"| {row['name']} | {cpu} | {wall} | {row.get('steps', '–')} | {row.get('images', 0):,} | " + " | ".join(cells) + " |")
    lines += ["", "Commands (relative to the repository; data under MEDNET_DATA_DIR):", ""]
    lines += [f"- {row['name']}: `{row['command']}`" for row in results["rows"] if row.get("command")]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], METRICS):
        for row in results["rows"]:
            value = row["scores"].get(metric)
            if not value:
                continue
            if row.get("cpu_minutes") is None:  # scratch: no pretraining at all
                ax.axhline(value[0], color="gray", linestyle="--", label=row["name"])
                continue
            ax.errorbar(row["cpu_minutes"], value[0], yerr=value[1], marker="o", capsize=3, linestyle="none", label=row["name"])
        ax.set(title=metric, xlabel="pretraining CPU-minutes", ylabel="test AUROC")
        ax.grid(alpha=0.3)
    legend = {}  # every arm once, from whichever panel has it
    for ax in axes[0]:
        legend |= dict(zip(*reversed(ax.get_legend_handles_labels())))
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs" / "budget")
    parser.add_argument("--arm", action="append", help="run only these arms (default: all)")
    parser.add_argument("--budget-cpu-minutes", type=float, help="CPU-minutes per arm (default: the study's)")
    parser.add_argument("--no-baselines", action="store_true", help="skip scratch and the previous release")
    parser.add_argument("--records", type=Path, help="copy results.json, results.md and budget.png here")
    args = parser.parse_args()
    study = yaml.safe_load(args.study.read_text())
    budget = args.budget_cpu_minutes or study["budget_cpu_minutes"]
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MEDNET_DATA_DIR", str((REPO.parent / "shared" / "data").resolve()))
    arms = [arm for arm in study["arms"] if not args.arm or arm["name"] in args.arm]
    for arm in arms:  # every probe first, back to back, before the long runs share the machine with anything
        print(f"arm {arm['name']}: {json.dumps(plan_arm(arm, study, budget, out))}", flush=True)
    rows = []
    for arm in arms:
        print(f"arm {arm['name']}: pretraining for {budget:g} CPU-minutes", flush=True)
        row = {"name": arm["name"], "recipe": arm["recipe"]} | pretrain_arm(arm, study, budget, out)
        row |= evaluate(arm["name"], row["model"], "mednet", study, out)
        row["model"] = relative(Path(row["model"]))
        rows.append(row)
        print(f"arm {arm['name']}: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in row["scores"].items() if v), flush=True)
    arms = {row["name"]: row for row in rows}
    for baseline in [] if args.no_baselines else study.get("baselines", []):
        model = baseline["model"]
        if model.startswith("arm:"):  # the same architecture and preprocessing as that arm's export
            if model[4:] not in arms:
                continue
            model = str(REPO / arms[model[4:]]["model"])
        elif Path(REPO / model).is_dir():  # a snapshot, so a later change to the folder does not change the baseline
            snapshot = out / "baselines" / baseline["name"]
            if not snapshot.is_dir():
                shutil.copytree(REPO / model, snapshot)
            model = str(snapshot)
        row = {"name": baseline["name"], "cpu_minutes": baseline.get("cpu_minutes"), "note": baseline.get("note")}
        rows.append(row | evaluate(baseline["name"], model, baseline["init"], study, out))
    from throughput import device_name

    import torch

    results = {"budget_cpu_minutes": budget, "study": relative(args.study), "device": device_name(torch.device("cpu")),
               "evaluation": study["evaluation"], "launch": study["launch"], "rows": rows}
    write_json(out / "results.json", results)
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "budget.png")
    print(markdown(results))
    if args.records:
        args.records.mkdir(parents=True, exist_ok=True)
        for name in ("results.json", "results.md", "budget.png"):
            shutil.copy2(out / name, args.records / name)


if __name__ == "__main__":
    main()
