"""The GPU release run, on the device machine, from a folder `model_cards/release_pack.py` made (see
`release_run.sh`, which installs the carried wheels and calls the two stages):

    python model_cards/release_run.py pretrain --variant gray --seconds 120 --work /tmp/release --out $OUT
    python model_cards/release_run.py bench    --variant gray --work /tmp/release --out $OUT

`pretrain`: the packed sources become the pretraining cache (MedMNIST's 28-px arrays upsampled to the run's size on
the device), a 30-step probe measures images/s, and `mednet pretrain` runs `training/configs/<variant>.yaml` at 64 px,
bf16, batch 512, for as many steps as fit in `--seconds`. The backbone goes to `$OUT` as fp16 safetensors in shards
of at most 14 MB (8 files of 16 MB at most come back), with its config and processor.

`bench`: the out-of-domain transfer target of `benchmark_<variant>.yaml` (PneumoniaMNIST or derm_isic), MedNet
against scratch, at the label fractions and seeds given (default: 1% and 10%, seeds 0-2, where the acceptance is),
plus frozen features at 100%. Its results, the run record and the manifest go to `$OUT/records.tar.gz`.
"""

import argparse
import json
import os
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BATCH = 512


def expand_sources(variant: str, pack: Path, recipe) -> list[dict]:
    """Write each packed source to the pretraining cache under the key `load_source` looks for, with the pixels
    `load_source` would make: a source packed at another size (MedMNIST at its native 28 px) goes through the same
    processor at the run's size, and the same writer stores it."""
    import numpy as np
    import torch

    from mednet_hf.intensity import to_uint8
    from mednet_hf.training.data import cache_path, cache_processor, write_entry

    manifest = json.loads((pack / "manifest.json").read_text())
    os.environ["MEDNET_DATA_DIR"] = manifest["data_dir"]  # the string the keys were made with; no file is read there
    packed = np.load(pack / "pretrain.npz")
    processor = cache_processor(recipe)
    rows = []
    for index, (source, info) in enumerate(zip(recipe.sources, manifest["sources"])):
        if source.name != info["name"]:
            raise ValueError(f"{pack}: packed source {index} is {info['name']!r}, the recipe's is {source.name!r}: repack")
        if "subsampled_to" in info:  # fewer rows under the whole source's key would be another source's cache
            raise ValueError(f"{pack}: source {source.name!r} was packed subsampled ({info['subsampled_to']} of "
                             f"{info['rows']} rows); the cache holds whole sources only: repack with a larger budget")
        images = torch.from_numpy(packed[f"images_{index}"])
        if images.shape[-1] != recipe.image_size:  # uint8 in, as the dataset holds it: ÷ 255, resize, round
            arrays = list(images.permute(0, 2, 3, 1).squeeze(-1).numpy()) if images.shape[1] == 1 else list(images.permute(0, 2, 3, 1).numpy())
            images = torch.cat([to_uint8(processor(arrays[i : i + 1024], return_tensors="pt")["pixel_values"])
                                for i in range(0, len(arrays), 1024)])
        write_entry(cache_path(source, recipe), {"images": images, "labels": torch.from_numpy(packed[f"labels_{index}"])},
                    info["metadata"])
        rows.append({"name": source.name, "rows": int(images.shape[0]), "carried_size": info["carried_size"],
                     "of_rows": info["rows"]})
    return rows


def run_pretrain(args) -> None:
    import torch

    from mednet_hf import MedNetImageProcessor, MedNetModel
    from mednet_hf.training.pretrain import pretrain
    from mednet_hf.training.recipe import load_recipe

    pack, work, out = REPO / ".release" / args.variant, Path(args.work), Path(args.out)
    recipe_path = REPO / "training" / "configs" / f"{args.variant}.yaml"
    cuda = torch.cuda.is_available()
    settings = {"image_size": 64, "batch_size": BATCH if cuda else 16, "mixed_precision": "bf16" if cuda else "no",
                "cache_dir": str(work / "cache"), "log_every": 50}
    recipe = load_recipe(recipe_path, **settings)
    data = expand_sources(args.variant, pack, recipe)
    probe = pretrain(recipe_path, work / "probe", steps=args.probe_steps, warmup_steps=1, checkpoint_every=10**9, **settings)
    steps = max(args.min_steps, int(args.seconds * probe["images_per_second"] / (settings["batch_size"] * recipe.grad_accum)))
    record = pretrain(recipe_path, work / "run", steps=steps, warmup_steps=max(10, steps // 20),
                      checkpoint_every=max(100, steps // 4), **settings)
    record.update(packed=data, probe_images_per_second=probe["images_per_second"], seconds_budget=args.seconds)
    (work / "pretrain.json").write_text(json.dumps(record, indent=1))
    model = out / args.variant
    MedNetModel.from_pretrained(work / "run" / "final").half().save_pretrained(model, max_shard_size="14MB")
    MedNetImageProcessor.from_pretrained(work / "run" / "final").save_pretrained(model)
    for code in model.glob("*.py"):  # the package's own modules: not part of the release, and files back are few
        code.unlink()
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"dtype": "float32"}, indent=2, sort_keys=True) + "\n")  # as bundled
    print(f"pretrained {steps} steps at {record['images_per_second']:.0f} img/s; final losses {record['final_losses']}")


def run_bench(args) -> None:
    from mednet_hf.training.benchmark import benchmark, load_study, study_file

    pack, work, out = REPO / ".release" / args.variant, Path(args.work), Path(args.out)
    study = load_study(study_file(args.variant))
    task = next(t.name for t in study.tasks if t.domain == "out")
    os.environ["MEDNET_DATA_DIR"] = str(pack / "targets")
    finetune = study.finetune | ({"epochs": args.epochs} if args.epochs else {})
    try:
        benchmark(args.variant, work / "bench", tasks=[task], model=str(out / args.variant), inits=["mednet", "scratch"],
                  label_fractions=args.label_fraction or [0.01, 0.1], seeds=args.seed or [0, 1, 2],
                  finetune=finetune, dense={})  # DRIVE is not carried; the dense task runs with the rest of the study
    finally:
        pack_records(args.variant, work, out)


def pack_records(variant: str, work: Path, out: Path) -> None:
    """Everything but the weights in one file (8 files come back at most): records, logs, tables, plots, every run's
    record. The weights (2 shards for ResNet-18, its index, config and processor) make 5 more."""
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / f"{variant}-records.tar.gz", "w:gz") as tar:
        for path in [work / "pretrain.json", REPO / ".release" / variant / "manifest.json", work / "bench",
                     *sorted(work.glob("*.log"))]:
            if path.exists():
                tar.add(path, arcname=path.name, filter=lambda m: None if m.name.endswith((".safetensors", ".bin", ".pt")) else m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["pretrain", "bench", "records"])
    parser.add_argument("--variant", choices=["gray", "color"], required=True)
    parser.add_argument("--seconds", type=float, default=120, help="pretraining time after the probe")
    parser.add_argument("--work", default="/tmp/mednet-release")
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/release-out"))
    parser.add_argument("--label-fraction", type=float, action="append")
    parser.add_argument("--seed", type=int, action="append")
    parser.add_argument("--epochs", type=float, help="fine-tuning epochs (default: the study's)")
    parser.add_argument("--probe-steps", type=int, default=30, help="steps that measure images/s before the run")
    parser.add_argument("--min-steps", type=int, default=50)
    args = parser.parse_args()
    {"pretrain": run_pretrain, "bench": run_bench,
     "records": lambda a: pack_records(a.variant, Path(a.work), Path(a.out))}[args.stage](args)


if __name__ == "__main__":
    main()
