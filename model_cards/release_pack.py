"""Pack a GPU release run: one self-contained folder per variant for the device machine (≤ 64 MiB travels there,
`../shared` does not), which `model_cards/release_run.py` runs there.

    python model_cards/release_pack.py --variant gray     # writes .release/gray/ and prints the device command

The folder holds:
- `pretrain.npz` + `manifest.json`: every pretraining source of `training/configs/<variant>.yaml`, decoded here through
  the one intensity path (`training.data.load_source`) into uint8 arrays. MedMNIST sources are stored at their native
  28 px and upsampled on the device (bilinear, as the processor would); the others at the run's size (64 px). A
  source too large for the budget is subsampled with a fixed seed, and the manifest says so with the row counts.
- `targets/`: the transfer target that decides the acceptance (PneumoniaMNIST subset for gray; `derm_isic`, images
  reduced to a 64-px short side, for color), laid out as in `MEDNET_DATA_DIR`.
- `wheels/`: what the device lacks (transformers 5.24, datasets, evaluate, dill, multiprocess).

The tracked tree travels too, and the bundled fp16 weights in it are 44 MB: move them aside for the device call
(`--stash`, and `--unstash` afterwards), or the call is refused for size.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RELEASE = REPO / ".release"
STASH = Path("/tmp/mednet-bundled-stash")
LIMIT = 64 * 2**20
WHEELS = ["transformers==5.24.0", "datasets==5.2.0", "evaluate==0.4.6", "dill==0.4.0", "multiprocess==0.70.18"]
RUN_SIZE = 64
TARGETS = {"gray": ["medmnist/pneumoniamnist_subset.npz"], "color": ["derm_isic"]}


def tree_bytes() -> int:
    """What travels besides `carry`: tracked files that exist, and untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum((REPO / name.decode()).stat().st_size for name in listed if name and (REPO / name.decode()).is_file())


def download_wheels(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(target), *WHEELS],
                   check=True)


def pack_sources(variant: str, target: Path, budget: int, seed: int = 0) -> dict:
    """Decode every source here and write them, as small as they can travel, to `pretrain.npz`."""
    from mednet_hf.training.data import load_source
    from mednet_hf.training.recipe import load_recipe

    recipe = load_recipe(REPO / "training" / "configs" / f"{variant}.yaml", image_size=RUN_SIZE)
    arrays, sources = {}, []
    for index, source in enumerate(recipe.sources):
        native = 28 if source.dataset == "medmnist" else RUN_SIZE  # MedMNIST files here are 28 px: nothing to gain above
        tensors, metadata = load_source(source, replace(recipe, image_size=native))
        arrays[f"images_{index}"], arrays[f"labels_{index}"] = tensors["images"].numpy(), tensors["labels"].numpy()
        sources.append({"name": source.name, "rows": len(tensors["labels"]), "carried_size": native, "metadata": metadata})
    total = sum(a.nbytes for a in arrays.values())
    if total > budget:  # subsample the largest sources, seeded, until the raw arrays fit
        rng = np.random.default_rng(seed)
        while total > budget:
            index = max(range(len(sources)), key=lambda i: arrays[f"images_{i}"].nbytes)
            now = len(arrays[f"labels_{index}"])
            keep = np.sort(rng.permutation(now)[: int(now * 0.9)])
            for key in (f"images_{index}", f"labels_{index}"):
                arrays[key] = arrays[key][keep]
            sources[index]["subsampled_to"] = len(keep)
            total = sum(a.nbytes for a in arrays.values())
    np.savez_compressed(target / "pretrain.npz", **arrays)
    return {"variant": variant, "run_size": RUN_SIZE, "sources": sources,
            # the cache key names the data folder: the device sets MEDNET_DATA_DIR to this string to find its caches
            "data_dir": str(Path(os.environ.get("MEDNET_DATA_DIR", REPO.parent / "shared" / "data")).resolve())}


def pack_targets(variant: str, data_dir: Path, target: Path) -> None:
    from PIL import Image

    for relative in TARGETS[variant]:
        source, dest = data_dir / relative, target / "targets" / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_file():
            shutil.copy2(source, dest)
            continue
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            out = (dest / path.relative_to(source)).with_suffix(".jpg")
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:  # a 64-px short side: what the processor makes of it at 64 px anyway
                image = image.convert("RGB")
                scale = RUN_SIZE / min(image.size)
                image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR,
                             reducing_gap=3.0).save(out, quality=95)


def stash(back: bool) -> None:
    from mednet_hf.bundled import BUNDLED_DIR

    for variant in ("gray", "color"):
        here, away = BUNDLED_DIR / variant / "model.safetensors", STASH / variant / "model.safetensors"
        src, dst = (away, here) if back else (here, away)
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dst)
            print(f"moved {src} -> {dst}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["gray", "color"])
    parser.add_argument("--stash", action="store_true", help="move the bundled weights out of the tree (for the device call)")
    parser.add_argument("--unstash", action="store_true", help="move them back")
    args = parser.parse_args()
    if args.stash or args.unstash:
        return stash(back=args.unstash)
    if not args.variant:
        parser.error("--variant is required")
    data_dir = Path(os.environ.get("MEDNET_DATA_DIR", REPO.parent / "shared" / "data"))
    target = RELEASE / args.variant
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.rmtree(RELEASE / "wheels", ignore_errors=True)  # two versions of one package would stop the install there
    download_wheels(RELEASE / "wheels")
    pack_targets(args.variant, data_dir, target)
    fixed = sum(p.stat().st_size for p in [*RELEASE.joinpath("wheels").iterdir(), *target.rglob("*")] if p.is_file())
    bundled = sum(p.stat().st_size for p in (REPO / "mednet_hf" / "bundled").rglob("*.safetensors"))
    room = LIMIT - (tree_bytes() - bundled) - fixed - 2 * 2**20  # 2 MiB to spare
    if room <= 0:
        raise SystemExit(f"no room left for the sources: the tree, wheels and targets take {(LIMIT - room) / 2**20:.1f} MiB")
    manifest = pack_sources(args.variant, target, budget=int(room * 1.3))  # npz compresses these ~1.4x (measured)
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1))
    carried = fixed + (target / "pretrain.npz").stat().st_size + (target / "manifest.json").stat().st_size
    print(json.dumps({s["name"]: s["rows"] if "subsampled_to" not in s else f"{s['subsampled_to']} of {s['rows']}"
                      for s in manifest["sources"]}, indent=1))
    travels = carried + tree_bytes() - bundled
    print(f"carried: {carried / 2**20:.1f} MiB; tree without the bundled weights: {(tree_bytes() - bundled) / 2**20:.1f} MiB")
    if travels > LIMIT:
        raise SystemExit(f"{travels / 2**20:.1f} MiB would travel, over 64 MiB: lower the budget factor and pack again")
    print("device call (after `python model_cards/release_pack.py --stash`):\n"
          f"  carry: [\".release/wheels\", \".release/{args.variant}\"], timeout_s: 540\n"
          f"  command: bash model_cards/release_run.sh {args.variant} 420")


if __name__ == "__main__":
    main()
