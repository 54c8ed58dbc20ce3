"""Build a MedNet release from a pretraining run: the fp16 bundle shipped in `mednet_hf/bundled/<variant>/`,
the transfer benchmark (MedNet vs the same network from scratch, same step budget and seed) whose run records go
to `model_cards/records/<variant>/`, and the model card rendered from those records.

    python model_cards/build_release.py --variant gray --run runs/pretrain-gray
"""

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from mednet_hf import MedNetImageProcessor, MedNetModel
from mednet_hf.bundled import BUNDLED_DIR
from mednet_hf.model_card import check_card, render_model_card
from mednet_hf.training.finetune import finetune

HERE = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("MEDNET_DATA_DIR", HERE.parents[1] / "shared" / "data"))
# The held-out task each variant is evaluated on. PneumoniaMNIST is not in the gray recipe; BloodMNIST is the only
# labelled color set here, so the color numbers are in-domain (its train labels were a pretraining source).
TASKS = {
    "gray": {"dataset": "medmnist:pneumoniamnist", "options": {"filename": "pneumoniamnist_subset.npz"}, "no_checks": True},
    "color": {"dataset": "medmnist:bloodmnist", "options": {}, "no_checks": False},
}
SETTINGS = [(0.1, False), (1.0, False), (1.0, True)]  # (label fraction, linear probe)
MAX_BYTES = 25 * 1024 * 1024


def export_bundle(run: Path, variant: str) -> Path:
    """The run's backbone in fp16 (half the bytes); config.json keeps float32, so it loads (and runs) in float32."""
    target = BUNDLED_DIR / variant
    shutil.rmtree(target, ignore_errors=True)
    model = MedNetModel.from_pretrained(run / "final").half()
    model.save_pretrained(target)
    MedNetImageProcessor.from_pretrained(run / "final").save_pretrained(target)  # medical options; geometry is in config.json
    for code in target.glob("*.py"):  # the installer links the package's own modules instead (no stale copies)
        code.unlink()
    config = json.loads((target / "config.json").read_text())
    config["dtype"] = "float32"
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    size = (target / "model.safetensors").stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{target / 'model.safetensors'} is {size / 2**20:.1f} MiB, over the 25 MiB budget")
    return target


def transfer_benchmark(bundle: Path, variant: str, records: Path, max_steps: int) -> None:
    task = TASKS[variant]
    scratch = Path(tempfile.mkdtemp(prefix="mednet-scratch-"))
    torch.manual_seed(0)
    MedNetModel(MedNetModel.config_class.from_pretrained(bundle)).save_pretrained(scratch)
    for init, model in (("mednet", bundle), ("scratch", scratch)):
        for fraction, probe in SETTINGS:
            with tempfile.TemporaryDirectory() as out:
                record = finetune(
                    str(model), task["dataset"], DATA_DIR / "medmnist", out, label_fraction=fraction, linear_probe=probe,
                    max_steps=max_steps, batch_size=64, lr=1e-3, seed=0, report_to="none",
                    no_checks=task["no_checks"], options=task["options"],
                )
            record.update(init=init, model=f"mednet/{variant}" if init == "mednet" else f"{variant} {model.name} (random init)")
            record.pop("export", None)
            record.pop("best_checkpoint", None)
            name = f"finetune-{init}-{'probe' if probe else 'full'}-{fraction:g}.json"
            (records / name).write_text(json.dumps(record, indent=1, default=float))
            print(f"{init:8} {'probe' if probe else 'full':5} {fraction:>4g}: test AUROC {record['test']['test_auroc']:.4f}, "
                  f"accuracy {record['test']['test_accuracy']:.4f}")
    shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(TASKS), required=True)
    parser.add_argument("--run", type=Path, help="a `mednet pretrain` output folder")
    parser.add_argument("--max-steps", type=int, default=200, help="fine-tuning budget, the same for every init")
    parser.add_argument("--card-only", action="store_true", help="only render the card from the existing records")
    args = parser.parse_args()
    records, bundle = HERE / "records" / args.variant, BUNDLED_DIR / args.variant
    if not args.card_only:
        shutil.rmtree(records, ignore_errors=True)
        records.mkdir(parents=True)
        pretrain = json.loads((args.run / "results.json").read_text())
        pretrain.pop("export", None)
        (records / "pretrain.json").write_text(json.dumps(pretrain, indent=1))
        bundle = export_bundle(args.run, args.variant)
        transfer_benchmark(bundle, args.variant, records, args.max_steps)
    card = render_model_card(args.variant, records, HERE / "template.md", repo_id=f"mednet/{args.variant}")
    check_card(card, records)
    (bundle / "README.md").write_text(str(card))
    (HERE / f"{args.variant}.md").write_text(str(card))
    print(f"bundle: {bundle} ({(bundle / 'model.safetensors').stat().st_size / 2**20:.1f} MiB); card: {HERE / f'{args.variant}.md'}")


if __name__ == "__main__":
    main()
