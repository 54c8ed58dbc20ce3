"""MedNet pretraining under Accelerate: the same code from one CPU process to many GPUs and nodes
(`accelerate launch --config_file training/configs/accelerate_ddp.yaml -m mednet_hf.cli pretrain ...`).

Checkpoints are written atomically every `checkpoint_every` steps (a temporary folder renamed into place) and
hold the model, optimizer, scheduler, every process's RNG state and the data position; `resume` restores all
of it, so a killed run continues with the same data order. The final backbone is exported with
`save_pretrained` (safetensors, with its processor).
"""

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import timm
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import gather_object, set_seed
from safetensors import safe_open
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from mednet_hf import MedNetConfig, MedNetImageProcessor, MedNetModel
from mednet_hf.data import row_to_medical_image

from .augment import PretrainViews
from .data import pretraining_dataset
from .objectives import PretrainModel
from .recipe import Recipe, load_recipe

STATE_FILE = "trainer_state.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names it and what is wrong."""


def _imagenet_init(backbone: MedNetModel) -> None:
    """Continual pretraining: start from timm's ImageNet weights (the first conv summed to one channel for gray)."""
    config = backbone.config
    try:
        source = timm.create_model(config.backbone, pretrained=True, num_classes=0, in_chans=config.num_channels)
    except Exception as e:  # offline, no such weights, hub error: all end the same way
        raise ValueError(
            f"init: imagenet needs timm's pretrained weights for {config.backbone!r}, which could not be fetched "
            f"({type(e).__name__}: {e}). Run once with network access (HF_HUB_OFFLINE unset) so timm caches them, "
            "or use init: scratch."
        ) from e
    backbone.encoder.load_state_dict(source.state_dict())


def _batch_transform(recipe: Recipe, views: PretrainViews):
    processor = MedNetImageProcessor(variant=recipe.variant, image_size=recipe.image_size, do_normalize=False)

    def transform(batch: dict) -> dict:
        images = [row_to_medical_image(batch, i) for i in range(len(batch["image"]))]
        unit = processor(images, return_tensors="pt")["pixel_values"]
        per_example = [views(image, index) for image, index in zip(unit, batch["index"])]
        out = {key: torch.stack([v[key] for v in per_example]) for key in per_example[0]}
        out["label"] = torch.tensor(batch["label"], dtype=torch.long)
        out["source"] = torch.tensor(batch["source"], dtype=torch.long)
        out["index"] = torch.tensor(batch["index"], dtype=torch.long)
        return out

    return transform


def _checkpoints(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    return sorted(root.glob("step-*")) if root.is_dir() else []


def _validate_checkpoint(path: Path) -> dict:
    """Read the state and open every safetensors file before anything is loaded, so a truncated or half-written
    checkpoint is reported as such rather than failing deep inside a load."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    try:
        state = json.loads((path / STATE_FILE).read_text())
        tensors = sorted(path.glob("*.safetensors"))
        if not tensors:
            raise FileNotFoundError("no .safetensors weights")
        for file in tensors:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete ({type(e).__name__}: {e}); "
                              "resume from an earlier one with --resume <folder>") from e
    return state


def _save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict, keep: int) -> Path:
    root = output_dir / "checkpoints"
    final, tmp = root / f"step-{state['step']:08d}", root / f".tmp-step-{state['step']:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # atomic: a checkpoint folder under its final name is always complete
        for old in _checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _checksum(model: torch.nn.Module) -> str:
    """Of the parameters: BatchNorm running statistics stay per process between DDP's buffer broadcasts (at the start
    of each forward), and the export takes the main process's."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def pretrain(recipe_path, output_dir, resume: str | None = None, **overrides) -> dict:
    """Run a recipe. `resume`: `"latest"` (the newest checkpoint in `output_dir`) or a checkpoint folder.
    Returns (and writes to `output_dir/results.json`) the run record."""
    recipe = load_recipe(recipe_path, **overrides)
    output_dir = Path(output_dir)
    checkpoint = None
    if resume == "latest":
        found = _checkpoints(output_dir)
        if not found:
            raise CheckpointError(f"--resume: no checkpoint in {output_dir / 'checkpoints'}")
        checkpoint = found[-1]
    elif resume:
        checkpoint = Path(resume)
    elif _checkpoints(output_dir):
        raise CheckpointError(f"{output_dir} already holds checkpoints: pass --resume to continue, or a new --output-dir")
    saved = _validate_checkpoint(checkpoint) if checkpoint else None
    if saved and saved["recipe"]["backbone"] != recipe.backbone:
        raise CheckpointError(f"checkpoint {checkpoint} is a {saved['recipe']['backbone']} run, the recipe asks for {recipe.backbone}")

    accelerator = Accelerator(
        mixed_precision=recipe.mixed_precision,
        gradient_accumulation_steps=recipe.grad_accum,
        log_with="tensorboard",
        project_dir=str(output_dir),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],  # heads of absent sources
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # `steps` counts optimizer steps whatever the number of processes, so the schedule advances once per step
        # (Accelerate's default steps it once per process).
        step_scheduler_with_optimizer=False,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(recipe.seed)
    with accelerator.main_process_first():  # one process builds the dataset caches, the others read them
        dataset, classes = pretraining_dataset(recipe)
    heads = [(i, c, s.loss_weight) for i, (c, s) in enumerate(zip(classes, recipe.sources)) if c]

    config = MedNetConfig(backbone=recipe.backbone, variant=recipe.variant, image_size=recipe.image_size)
    backbone = MedNetModel(config)
    if recipe.init == "imagenet" and checkpoint is None:
        _imagenet_init(backbone)
    model = PretrainModel(backbone, recipe.objectives, heads, recipe.channels_last)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    views = PretrainViews(recipe.image_size, recipe.objectives, recipe.seed)
    loader = DataLoader(
        dataset.with_transform(_batch_transform(recipe, views)), batch_size=recipe.batch_size, shuffle=True,
        drop_last=True, num_workers=recipe.num_workers,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, recipe.steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if recipe.compile:
        model = torch.compile(model)

    step, batches_seen = 0, 0
    if checkpoint:
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as e:
            raise CheckpointError(f"checkpoint {checkpoint} does not load into this run ({type(e).__name__}: {e})") from e
        step, batches_seen = saved["step"], saved["batches_seen"]
    if len(loader) == 0:
        raise ValueError(f"the mixed dataset ({len(dataset)} rows) gives no full batch of {recipe.batch_size} per process")

    accelerator.init_trackers("pretrain", config={k: v for k, v in recipe.to_dict().items() if isinstance(v, (int, float, str, bool))})
    order_log = output_dir / f"data_order-rank{accelerator.process_index}.jsonl"
    progress = tqdm(total=recipe.steps, initial=step, disable=not accelerator.is_local_main_process, desc="pretrain", unit="step")
    images_per_step = recipe.batch_size * accelerator.num_processes * recipe.grad_accum
    started, first_step, losses = time.perf_counter(), step, {}
    while step < recipe.steps:
        epoch, skip = divmod(batches_seen, len(loader))
        views.epoch = epoch
        loader.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            with accelerator.accumulate(model):
                losses = model(batch)
                accelerator.backward(losses["loss"])
                optimizer.step()
                optimizer.zero_grad()
            batches_seen += 1
            # The data order, per process. After a resume the batches past the checkpoint appear twice; the later
            # line is the one that counted.
            with open(order_log, "a") as f:
                f.write(json.dumps({"batch": batches_seen, "index": batch["index"].tolist()}) + "\n")
            if not accelerator.sync_gradients:
                continue
            step += 1
            scheduler.step()
            rate = images_per_step * (step - first_step) / (time.perf_counter() - started)
            progress.update(1)
            progress.set_postfix(loss=f"{losses['loss'].item():.4f}", img_s=f"{rate:.0f}")
            if step % recipe.log_every == 0 or step == recipe.steps:
                accelerator.log({f"loss/{k}": v.item() for k, v in losses.items()} | {"lr": scheduler.get_last_lr()[0], "images_per_second": rate}, step=step)
            if step % recipe.checkpoint_every == 0 or step == recipe.steps:
                _save_checkpoint(accelerator, output_dir, {"step": step, "batches_seen": batches_seen, "recipe": recipe.to_dict()}, recipe.keep_checkpoints)
            if step >= recipe.steps:
                break
    progress.close()
    unwrapped = accelerator.unwrap_model(model)
    checksums = gather_object([_checksum(unwrapped)])
    record = {
        "recipe": recipe.to_dict(),
        "steps": step,
        "processes": accelerator.num_processes,
        "final_losses": {k: float(v.item()) for k, v in losses.items()},
        "images_per_second": images_per_step * (step - first_step) / max(time.perf_counter() - started, 1e-9),
        "rank_checksums": checksums,
        "ranks_identical": len(set(checksums)) == 1,
    }
    if accelerator.is_main_process:
        final = output_dir / "final"
        unwrapped.backbone.save_pretrained(final)  # safetensors + config + processor + remote code
        record["export"] = str(final)
        (output_dir / "results.json").write_text(json.dumps(record, indent=1))
    accelerator.wait_for_everyone()
    accelerator.end_training()  # last: it also ends the process group
    return record


__all__ = ["CheckpointError", "pretrain"]
