"""MedNet pretraining under Accelerate: the same code from one CPU process to many GPUs and nodes
(`accelerate launch --config_file training/configs/accelerate_ddp.yaml -m mednet_hf.cli pretrain ...`).

The data is decoded once into a uint8 tensor held on the device (`training.data`); each step gathers its rows,
makes every view in batches on the device (`training.augment`) and runs the backbone once per crop resolution
(`training.objectives`). Nothing is read back to the host between log steps.

Checkpoints are written atomically every `checkpoint_every` steps (a temporary folder renamed into place) and
hold the model, optimizer, scheduler and the step; rows and views are functions of (seed, step, rank), so a killed
run resumes with the same data and the same views. The final backbone is exported with `save_pretrained`
(safetensors), beside its processor.
"""

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
import warnings
from pathlib import Path

import timm
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import gather_object, set_seed
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from mednet_hf import MedNetConfig, MedNetImageProcessor, MedNetModel

from .augment import PretrainViews, step_generator
from .data import pretraining_data
from .objectives import PretrainModel
from .recipe import Recipe, load_recipe

STATE_FILE = "trainer_state.json"
STREAMS_FILE = "streams-rank{rank}.json"  # per process: where its part of each streamed source is


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names it and what is wrong."""


def _imagenet_init(backbone: MedNetModel, architecture: str) -> None:
    """Continual pretraining: start from timm's ImageNet weights (the first conv summed to one channel for gray)."""
    try:
        source = timm.create_model(architecture, pretrained=True, num_classes=0, in_chans=backbone.config.num_channels)
    except Exception as e:  # offline, no such weights, hub error: all end the same way
        raise ValueError(
            f"init: imagenet needs timm's pretrained weights for {architecture!r}, which could not be fetched "
            f"({type(e).__name__}: {e}). Run once with network access (HF_HUB_OFFLINE unset) so timm caches them, "
            "or use init: scratch."
        ) from e
    backbone.get_encoder().load_state_dict(source.state_dict())


def build_model(recipe: Recipe, heads: list[tuple[int, int, float]], imagenet: bool = False) -> PretrainModel:
    """A MedNet backbone, freshly initialised or (`imagenet`) from timm's ImageNet weights, and the objectives' heads."""
    config = MedNetConfig(architecture=recipe.backbone, variant=recipe.variant, image_size=recipe.image_size)
    backbone = MedNetModel(config)
    if imagenet:
        _imagenet_init(backbone, recipe.backbone)
    model = PretrainModel(backbone, recipe.objectives, heads, recipe.channels_last)
    return model.to(memory_format=torch.channels_last) if recipe.channels_last else model


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


def _save_checkpoint(accelerator: Accelerator, output_dir: Path, state: dict, keep: int, streams: dict) -> Path:
    root = output_dir / "checkpoints"
    final, tmp = root / f"step-{state['step']:08d}", root / f".tmp-step-{state['step']:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if streams:
        (tmp / STREAMS_FILE.format(rank=accelerator.process_index)).write_text(json.dumps(streams))
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


def _synchronized_time(device: torch.device) -> float:
    """Wall time once the device has finished its queued work; called at the first and last step only."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _values(losses: dict) -> dict:
    """The losses as floats, read back from the device in one transfer."""
    return dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist())) if losses else {}


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores)"


def _order_lines(pending: list) -> str:
    return "".join(json.dumps({"batch": batch, "index": ids.tolist()}) + "\n" for batch, ids in pending)


def pretrain(recipe_path, output_dir, resume: str | None = None, **overrides) -> dict:
    """Run a recipe. `resume`: `"latest"` (the newest checkpoint in `output_dir`) or a checkpoint folder.
    Returns (and writes to `output_dir/results.json`) the run record."""
    run_started = time.perf_counter()
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
        log_with="tensorboard",
        project_dir=str(output_dir),
        # Every parameter gets a gradient every step (the supervised loss is masked, not branched).
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        # `steps` counts optimizer steps whatever the number of processes, so the schedule advances once per step
        # (Accelerate's default steps it once per process).
        step_scheduler_with_optimizer=False,
    )
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    output_dir.mkdir(parents=True, exist_ok=True)
    with accelerator.main_process_first():  # one process decodes the sources into the cache, the others read it
        data = pretraining_data(recipe, rank, world)
    try:
        data = data.to(device)
        set_seed(recipe.seed)  # after decoding, which may draw from the global generator (a first run decodes, a later one not)
        heads = [(i, c, s.loss_weight) for i, (c, s) in enumerate(zip(data.classes, recipe.sources)) if c]
        model = build_model(recipe, heads, imagenet=recipe.init == "imagenet" and checkpoint is None)
        views = PretrainViews.from_objectives(recipe.image_size, recipe.objectives)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                      fused=device.type == "cuda")
        scheduler = get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, recipe.steps)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        runner = torch.compile(model) if recipe.compile else model
        runner_checked = runner is model  # a compiled model may fail on its first call: then train eagerly

        step = 0
        if checkpoint:
            try:
                accelerator.load_state(str(checkpoint))
            except Exception as e:
                raise CheckpointError(f"checkpoint {checkpoint} does not load into this run ({type(e).__name__}: {e})") from e
            step = saved["step"]
            if data.streams:
                streams_file = checkpoint / STREAMS_FILE.format(rank=rank)
                if not streams_file.is_file():
                    raise CheckpointError(f"checkpoint {checkpoint} has no {streams_file.name}: it was written by another "
                                          "number of processes or without the streamed sources of this recipe")
                try:
                    data.load_state_dict(json.loads(streams_file.read_text()))
                except Exception as e:  # a bad state file, a moved stream, a failed read: all stop the resume here
                    raise CheckpointError(f"checkpoint {checkpoint}: {streams_file.name}: {type(e).__name__}: {e}") from e

        accelerator.init_trackers("pretrain", config={k: v for k, v in recipe.to_dict().items() if isinstance(v, (int, float, str, bool))})
        # The data order, per process, written at log and checkpoint steps. After a resume the batches past the
        # checkpoint appear twice; the later line is the one that counted.
        order_log, pending = output_dir / f"data_order-rank{rank}.jsonl", []
        progress = tqdm(total=recipe.steps, initial=step, disable=not accelerator.is_local_main_process, desc="pretrain", unit="step")
        images_per_step = recipe.batch_size * world * recipe.grad_accum
        first_step, timed_from, started, losses = step, step, time.perf_counter(), {}
        finished = started

        def inputs(batch: int) -> dict:
            """This process's rows of global batch number `batch`, and their views."""
            index = data.sample(recipe.seed, batch, recipe.batch_size * world)[rank * recipe.batch_size : (rank + 1) * recipe.batch_size]
            rows = data.batch(index, device)
            pending.append((batch + 1, rows["ids"]))
            made = views(rows["images"], step_generator(recipe.seed, batch, rank, device))
            return made | {"label": rows["label"], "source": rows["source"]}

        def forward_backward(module, views_and_labels: dict) -> dict:
            out = module(views_and_labels)
            accelerator.backward(out["loss"] / recipe.grad_accum)
            return out

        while step < recipe.steps:
            for micro in range(recipe.grad_accum):
                micro_batch = inputs(step * recipe.grad_accum + micro)
                # Gradients are all-reduced on the last micro-batch only.
                with contextlib.nullcontext() if micro == recipe.grad_accum - 1 else accelerator.no_sync(model):
                    try:
                        losses = forward_backward(runner, micro_batch)
                    except Exception as e:
                        if runner_checked:
                            raise
                        warnings.warn(f"compile: true failed ({type(e).__name__}: {e}); training eagerly instead")
                        optimizer.zero_grad(set_to_none=True)
                        runner = model
                        losses = forward_backward(runner, micro_batch)
                    runner_checked = True
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            progress.update(1)
            if step == first_step + 1 and step < recipe.steps:  # leave the first step (compilation, warm-up) out of the rate
                timed_from, started = step, _synchronized_time(device)
            if step == recipe.steps:  # and the final checkpoint
                finished = _synchronized_time(device)
            logging = step % recipe.log_every == 0 or step == recipe.steps
            checkpointing = step % recipe.checkpoint_every == 0 or step == recipe.steps
            if logging or checkpointing:
                with open(order_log, "a") as f:
                    f.write(_order_lines(pending))
                pending.clear()
            if logging:
                values = _values(losses)
                rate = images_per_step * (step - timed_from) / max(time.perf_counter() - started, 1e-9)
                progress.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.0f}")
                accelerator.log({f"loss/{k}": v for k, v in values.items()}
                                | {"lr": scheduler.get_last_lr()[0], "images_per_second": rate}, step=step)
            if checkpointing:
                _save_checkpoint(accelerator, output_dir, {"step": step, "recipe": recipe.to_dict()}, recipe.keep_checkpoints,
                                 data.state_dict())
    finally:  # a streamed source's reader thread stops also when a step raises or the user presses Ctrl-C
        data.close()
    progress.close()
    unwrapped = accelerator.unwrap_model(model)
    checksums = gather_object([_checksum(unwrapped)])
    record = {
        "recipe": recipe.to_dict(),
        "steps": step,
        # source images drawn / images held (sources are sampled by weight); a streamed source's size is not known
        "epochs": None if data.streams else images_per_step * step / len(data),
        "data": [{"name": s.name, "dataset": s.dataset, "rows": None if s.streaming else int(n), "labelled": bool(c)}
                 | ({"repo_id": s.repo_id, "streamed": s.streaming} if s.dataset == "hub" else {})
                 for s, n, c in zip(recipe.sources, data.counts.tolist(), data.classes)],
        "wall_seconds": time.perf_counter() - run_started,  # this process's whole call: decoding, steps, checkpoints
        "hardware": _hardware(device),
        "processes": accelerator.num_processes,
        "final_losses": _values(losses),
        # Source images per second over all processes, from the end of this run's first step (when more followed)
        # to the end of its last, so neither compilation nor the final checkpoint counts.
        "images_per_second": images_per_step * (step - timed_from) / max(finished - started, 1e-9),
        "rank_checksums": checksums,
        "ranks_identical": len(set(checksums)) == 1,
    }
    if accelerator.is_main_process:
        final = output_dir / "final"
        unwrapped.backbone.save_pretrained(final)
        MedNetImageProcessor.from_model_config(unwrapped.backbone.config).save_pretrained(final)
        record["export"] = str(final)
        (output_dir / "results.json").write_text(json.dumps(record, indent=1))
    accelerator.wait_for_everyone()
    accelerator.end_training()  # last: it also ends the process group
    return record


__all__ = ["CheckpointError", "build_model", "pretrain"]
