"""Ship a MedNet release: the fp16 bundle in `mednet_hf/bundled/<variant>/`, its run records in
`model_cards/records/<variant>/` (the pretraining record and the `mednet benchmark` study, with its plots), and the
model card rendered from them.

    # a CPU release run (`model_cards/release_cpu.py`): its last cycle, the study here, and at the other size
    python model_cards/build_release.py --variant gray --release-run ~/.cache/huggingface/mednet/release-gray-cpu --task pneumonia --other-size 28
    # a pretraining run made here (e.g. on the CPU), then the transfer study run here on the new bundle
    python model_cards/build_release.py --variant gray --run runs/release-gray-cpu --task pneumonia --seed 0
    # the GPU release: what `model_cards/release_run.sh` returned (fp16 shards + records, study included)
    python model_cards/build_release.py --variant gray --device-out /work/.device/<files_at>
    # a build stopped during its study (bundle and pretraining records already in place): the studies it lacks
    python model_cards/build_release.py --variant gray --study-only --task pneumonia --other-size 28
    # re-render the card from the records
    python model_cards/build_release.py --variant gray --card-only
"""

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from mednet_hf import MedNetImageProcessor, MedNetModel
from mednet_hf.bundled import BUNDLED_DIR
from mednet_hf.model_card import FIGURES, RELEASE_FIGURES, check_card, pretraining_summary, render_model_card
from mednet_hf.options import resolve_portable_path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MAX_BYTES = 25 * 1024 * 1024
BUDGET_STUDY = REPO / "benchmarks" / "results" / "budget-study"  # the gray study that chose the CPU release recipe


def export_bundle(model_dir: Path, variant: str) -> Path:
    """The backbone in fp16 as one `model.safetensors` (half the bytes); config.json keeps float32, so it loads and
    runs in float32. Sharded input (a device run's) is joined."""
    target = BUNDLED_DIR / variant
    shutil.rmtree(target, ignore_errors=True)
    model = MedNetModel.from_pretrained(model_dir).half()
    model.save_pretrained(target, max_shard_size="1GB")
    MedNetImageProcessor.from_pretrained(model_dir).save_pretrained(target)  # medical options; geometry is in config.json
    for code in target.glob("*.py"):  # the installer links the package's own modules instead (no stale copies)
        code.unlink()
    config = json.loads((target / "config.json").read_text())
    config["dtype"] = "float32"
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    size = (target / "model.safetensors").stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{target / 'model.safetensors'} is {size / 2**20:.1f} MiB, over the 25 MiB budget")
    return target


def pretrain_record(run: Path, wall_seconds: float | None, hardware: str | None, note: str | None) -> dict:
    """The run's record; fields a record from an older loop lacks (rows, epochs, wall time, hardware) are filled
    from the recipe's sources and the command line."""
    record = json.loads((run / "results.json").read_text())
    record.pop("export", None)
    if "data" not in record:
        from mednet_hf.training.data import pretraining_data
        from mednet_hf.training.recipe import Recipe, Source

        raw = dict(record["recipe"])
        recipe = Recipe(**{**raw, "sources": [Source(**s) for s in raw["sources"]]})
        data = pretraining_data(recipe)  # the cache the run read
        record["data"] = [{"name": s.name, "dataset": s.dataset, "rows": int(n), "labelled": bool(c)}
                          for s, n, c in zip(recipe.sources, data.counts.tolist(), data.classes)]
        record["epochs"] = record["steps"] * recipe.batch_size * record["processes"] * recipe.grad_accum / len(data)
    if wall_seconds:
        record["wall_seconds"] = wall_seconds
    if hardware:
        record["hardware"] = hardware
    if note:
        record["note"] = note
    missing = [k for k in ("wall_seconds", "hardware") if k not in record]
    if missing:
        raise SystemExit(f"{run / 'results.json'} has no {missing}: pass --wall-seconds / --hardware")
    return record


def keep_benchmark(bench: Path, records: Path) -> None:
    shutil.copy2(bench / "results.json", records / "benchmark.json")
    shutil.copy2(bench / "results.md", records / "benchmark.md")
    for name in FIGURES:
        if (bench / name).is_file():
            shutil.copy2(bench / name, records / name)


def describe(records: Path) -> str:
    """A release, in one line, from its records (the card's "previous release")."""
    pretrain = json.loads((records / "pretrain.json").read_text())
    run = pretraining_summary(pretrain)
    return (f"{pretrain['steps']:,} steps, {run['images']:,} images at {' then '.join(map(str, run['sizes']))} px, "
            f"{run['wall_seconds'] / 60:.0f} min on {pretrain['hardware']}")


def previous_release(records: Path, release: dict | None) -> dict | None:
    """What the release checks compare against: the records about to be replaced, or, when they are this same
    release run's (a rebuild, or an earlier segment before a warm restart on a new machine), the release they had
    replaced."""
    if not (records / "pretrain.json").is_file():
        return None
    before = json.loads((records / "pretrain.json").read_text()).get("release")
    if release and before and (before["started"] == release["started"] or release["init"] != "scratch"):
        # (also a build that stopped before its study wrote benchmark.json: previous.json was written first)
        return json.loads((records / "previous.json").read_text()) if (records / "previous.json").is_file() else None
    if not (records / "benchmark.json").is_file():
        return None
    benchmark = json.loads((records / "benchmark.json").read_text())
    size = benchmark["study"]["finetune"].get("image_size") or pretraining_summary(
        json.loads((records / "pretrain.json").read_text()))["final_size"]  # (a study's default: the model's own size)
    return {"description": describe(records), "image_size": size, "summary": benchmark["summary"], "frozen": benchmark["frozen"]}


def release_figures(release: dict, records: Path) -> None:
    """The run's benchmark points against hours (with the budget study's scratch and previous-release rows), and
    the budget study's plot, beside the records (gray: the study is of gray recipes)."""
    sys.path.insert(0, str(HERE))  # release_cpu.py is a script beside this one
    from release_cpu import plot_points

    budget = json.loads((records / "budget-study.json").read_text()) if (records / "budget-study.json").is_file() else None
    references = [r | {"name": {"scratch": "scratch (budget study)", "release-900": "previous release (budget study)"}[r["name"]]}
                  for r in (budget or {}).get("rows", []) if r["name"] in ("scratch", "release-900") and r.get("scores")]
    plot_points(release["points"], records / "release_points.png", references)


def render(variant: str, records: Path, bundle: Path) -> None:
    for name in FIGURES + RELEASE_FIGURES:  # the bundle's card shows the plots from beside it
        if (records / name).is_file():
            shutil.copy2(records / name, bundle / name)
    repo_id = f"mednet/{variant}"
    card = render_model_card(variant, records, repo_id=repo_id)
    check_card(card, records)
    (bundle / "README.md").write_text(str(card))
    (HERE / f"{variant}.md").write_text(str(render_model_card(variant, records, repo_id, figures=f"records/{variant}/")))


README = HERE.parent / "README.md"
MARKERS = ("<!-- release-results:start (model_cards/build_release.py writes this block) -->", "<!-- release-results:end -->")


def _epochs(pretrain: dict) -> str:
    if pretrain["epochs"] is None:  # a streamed source's size is not known
        return "some sources streamed, so epochs are not counted"
    return f"{pretrain['epochs']:.1f} epochs of {sum(d['rows'] for d in pretrain['data']):,} images"


def readme_block() -> str:
    """The README's results, from the same records as the cards: per variant, the run and the transfer table."""
    from mednet_hf.model_card import VARIANT_NAMES, comparison_rows, load_records

    lines = []
    for variant in ("gray", "color"):
        records = HERE / "records" / variant
        if not (records / "benchmark.json").is_file():
            continue
        pretrain, bench = load_records(records)
        recipe, run = pretrain["recipe"], pretraining_summary(pretrain)
        took = (f"{run['hours']:.1f} hours on {run['cores']} cores in {len(run['segments'])} segments" if run["release"] else
                f"{run['wall_seconds'] / 60:.0f} min on {pretrain['hardware']}")
        lines += [f"**{VARIANT_NAMES[variant]}** (`mednet/{variant}`): {recipe['backbone']} at {' then '.join(map(str, run['sizes']))} px, "
                  f"{pretrain['steps']:,} steps of {recipe['batch_size']} ({_epochs(pretrain)}, {took}). Transfer study ({bench['device']}{', quick' if bench['quick'] else ''}, "
                  f"{len(bench['study']['seeds'])} seed(s), {bench['study']['finetune'].get('epochs')} epochs, "
                  f"fine-tuned at {bench['study']['finetune'].get('image_size') or run['final_size']} px):", "",
                  "| task | domain | labels | MedNet AUROC | scratch AUROC | Δ | epochs to 95% (MedNet / scratch) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in comparison_rows(bench):
            e = [f"{x['epochs_to_95'][0]:.1f}" if x["epochs_to_95"] else "–" for x in (r["mednet"], r["scratch"])]
            lines.append(f"| {r['task']} | {r['domain']} | {r['label_fraction']:.0%} | {r['mednet']['test_auroc'][0]:.3f} | "
                         f"{r['scratch']['test_auroc'][0]:.3f} | {r['delta']:+.3f} | {e[0]} / {e[1]} |")
        losses = [f"{r['task']} at {r['label_fraction']:.0%} (Δ {r['delta']:+.3f}{', scratch is better' if r['loses'] else ''})"
                  for r in comparison_rows(bench) if not r["wins"]]
        if losses:
            lines += ["", "Not a clear win (Δ not larger than the spread over seeds): " + "; ".join(losses) + "."]
        for task, by_init in bench["frozen"].items():
            probes = ", ".join(f"{init} {m['linear_probe']['test_auroc']:.3f}" for init, m in by_init.items())
            knn = ", ".join(f"{init} {m['knn']['test_auroc']:.3f}" for init, m in by_init.items())
            lines += ["", f"Frozen features on {task} (100% labels, test AUROC): linear probe {probes}; kNN {knn}."]
        for path in sorted(records.glob("benchmark-*.json")):  # the same study at another fine-tuning size
            other = json.loads(path.read_text())
            size, frozen = other["study"]["finetune"]["image_size"], other["frozen"]
            cells = "; ".join(f"{r['task']} {r['label_fraction']:.0%} {r['mednet']['test_auroc'][0]:.3f} vs {r['scratch']['test_auroc'][0]:.3f}"
                              for r in comparison_rows(other))
            probes = "; ".join(f"{task} linear probe {m['mednet']['linear_probe']['test_auroc']:.3f} vs {m['scratch']['linear_probe']['test_auroc']:.3f}, "
                               f"kNN {m['mednet']['knn']['test_auroc']:.3f} vs {m['scratch']['knn']['test_auroc']:.3f}"
                               for task, m in frozen.items() if {"mednet", "scratch"} <= set(m))
            lines += ["", f"Fine-tuned at {size} px (MedNet vs scratch, test AUROC): {cells}; {probes}."]
        for init, d in (bench.get("dense") or {}).items():
            lines.append(f"DRIVE vessels ({init}): Dice {d['dice']:.3f} ({d['steps']} steps at {d['size']} px).")
        lines += ["", f"Card: [`model_cards/{variant}.md`](model_cards/{variant}.md); plots: "
                  f"[label fractions](model_cards/records/{variant}/label_fractions.png), "
                  f"[convergence](model_cards/records/{variant}/convergence.png).", ""]
    return "\n".join(lines)


def write_readme() -> None:
    text = README.read_text()
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    README.write_text(text[:start] + "\n" + readme_block() + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["gray", "color", "gray-3d"], required=True)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", type=Path, help="a `mednet pretrain` output folder (results.json, final/)")
    source.add_argument("--device-out", type=Path, help="the files `model_cards/release_run.sh` returned")
    source.add_argument("--release-run", type=Path, help="a `model_cards/release_cpu.py` run folder (its last cycle ships)")
    source.add_argument("--study-only", action="store_true",
                        help="keep the bundle and pretraining records in place (a build stopped during its study) and run the studies they lack")
    source.add_argument("--card-only", action="store_true", help="only render the card from the existing records")
    parser.add_argument("--benchmark", type=Path, help="an existing `mednet benchmark` output folder for this release")
    parser.add_argument("--other-size", type=int, help="also study the release fine-tuned at this image size (records benchmark-<size>.json)")
    parser.add_argument("--quick", action="store_true", help="the study's quick block")
    parser.add_argument("--task", action="append", help="study tasks to run (default: all)")
    parser.add_argument("--seed", type=int, action="append", help="seeds (default: the study's)")
    parser.add_argument("--label-fraction", type=float, action="append", help="label fractions (default: the study's)")
    parser.add_argument("--epochs", type=float, help="fine-tuning epochs (default: the study's)")
    parser.add_argument("--wall-seconds", type=float, help="the pretraining run's wall time, if its record lacks it")
    parser.add_argument("--hardware", help="what it ran on, if its record lacks it")
    parser.add_argument("--note", help="what else the card must say about the run (e.g. an interruption)")
    args = parser.parse_args()
    records, bundle = HERE / "records" / args.variant, BUNDLED_DIR / args.variant
    if args.card_only:
        render(args.variant, records, bundle)
        return write_readme()
    if args.study_only:
        if not (bundle / "model.safetensors").is_file() or not (records / "pretrain.json").is_file():
            raise SystemExit(f"--study-only needs a bundle in {bundle} and {records / 'pretrain.json'}: build it first")
        return study_and_render(args, records, bundle)
    previous = json.loads((records / "pretrain.json").read_text()) if (records / "pretrain.json").is_file() else None
    release = json.loads((args.release_run / "release.json").read_text()) if args.release_run else None
    replaced = previous_release(records, release)
    shutil.rmtree(records, ignore_errors=True)
    records.mkdir(parents=True)
    if replaced:
        (records / "previous.json").write_text(json.dumps(replaced, indent=1))
    if args.release_run:
        record = json.loads((args.release_run / "pretrain" / "results.json").read_text())
        if release["init"] != "scratch" and previous and previous.get("segments"):  # a warm restart: the earlier ones first
            record["segments"] = previous["segments"] + record["segments"]
            record["wall_seconds_total"] = sum(s["wall_seconds"] for s in record["segments"])
            record["cpu_seconds_total"] = sum(s["cpu_seconds"] for s in record["segments"])
        record.pop("export", None)
        record["release"] = {k: v for k, v in release.items() if k != "points"} | {
            "points": [{k: v for k, v in point.items() if k not in ("runs",)} for point in release["points"]]}
        (records / "pretrain.json").write_text(json.dumps(record, indent=1))
        if args.variant == "gray" and (BUDGET_STUDY / "results.json").is_file():
            shutil.copy2(BUDGET_STUDY / "results.json", records / "budget-study.json")
            shutil.copy2(BUDGET_STUDY / "budget.png", records / "budget.png")
        release_figures(release, records)
        bundle = export_bundle(Path(resolve_portable_path(release["points"][-1]["weights"], base=REPO)), args.variant)
    elif args.device_out:
        with tempfile.TemporaryDirectory() as unpacked:
            with tarfile.open(args.device_out / f"{args.variant}-records.tar.gz") as tar:
                tar.extractall(unpacked, filter="data")
            shutil.copy2(Path(unpacked) / "pretrain.json", records / "pretrain.json")
            bundle = export_bundle(args.device_out / args.variant, args.variant)
            if not args.benchmark:
                keep_benchmark(Path(unpacked) / "bench", records)
    else:
        (records / "pretrain.json").write_text(json.dumps(pretrain_record(args.run, args.wall_seconds, args.hardware, args.note), indent=1))
        bundle = export_bundle(args.run / "final", args.variant)
    study_and_render(args, records, bundle)


def study_and_render(args: argparse.Namespace, records: Path, bundle: Path) -> None:
    """The transfer studies of the bundle (those its records lack), then the card and the README's block."""
    if args.benchmark:
        keep_benchmark(args.benchmark, records)
    elif not (records / "benchmark.json").is_file():
        from mednet_hf.training.benchmark import benchmark, load_study, study_file

        study = load_study(study_file(args.variant), quick=args.quick)
        out = Path(os.environ.get("MEDNET_RUNS", "runs")) / f"benchmark-{args.variant}-release"  # finished runs are reused
        benchmark(args.variant, out, quick=args.quick, tasks=args.task, model=str(bundle), seeds=args.seed,
                  label_fractions=args.label_fraction,
                  finetune=study.finetune | ({"epochs": args.epochs} if args.epochs else {}))
        keep_benchmark(out, records)
    if args.other_size and not (records / f"benchmark-{args.other_size}.json").is_file():
        # the same study, every model fine-tuned and probed at another size
        from mednet_hf.training.benchmark import benchmark, load_study, study_file

        study = load_study(study_file(args.variant), quick=args.quick)
        out = Path(os.environ.get("MEDNET_RUNS", "runs")) / f"benchmark-{args.variant}-release-{args.other_size}"
        benchmark(args.variant, out, quick=args.quick, tasks=args.task, model=str(bundle), seeds=args.seed,
                  label_fractions=args.label_fraction, image_size=args.other_size,
                  finetune=study.finetune | ({"epochs": args.epochs} if args.epochs else {}))
        shutil.copy2(out / "results.json", records / f"benchmark-{args.other_size}.json")
        shutil.copy2(out / "results.md", records / f"benchmark-{args.other_size}.md")
    render(args.variant, records, bundle)
    write_readme()
    print(f"bundle: {bundle} ({(bundle / 'model.safetensors').stat().st_size / 2**20:.1f} MiB); "
          f"card: {HERE / f'{args.variant}.md'}; records: {records}")


if __name__ == "__main__":
    main()
