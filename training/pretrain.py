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
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import timm
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, InitProcessGroupKwargs
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, set_seed
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from mednet_hf import MedNetConfig, MedNetImageProcessor, MedNetModel
from mednet_hf.conversion_3d import inflate_state_dict
from mednet_hf.loading import weights_sha256

from .augment import step_generator
from .data import pretraining_data
from .objectives import PretrainModel, pretrain_views
from .recipe import Recipe, load_recipe

STATE_FILE = "trainer_state.json"
MAX_SKIPPED_IN_A_ROW = 10
STREAMS_FILE = "streams-rank{rank}.json"  # per process: where its part of each streamed source is


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names it and what is wrong."""


class PeerLostError(ValueError):
    """Another process of a distributed run (another node) died or stopped answering; the message says how to go on."""


def _lost_a_peer(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return isinstance(error, torch.distributed.DistError) or any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "timed out", "timeout", "broken pipe"))


class DivergedError(ValueError):
    """Gradients that stayed non-finite for `MAX_SKIPPED_IN_A_ROW` steps; the message says how to go on."""


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
    encoder = backbone.get_encoder()
    encoder.load_state_dict(inflate_state_dict(source.state_dict(), encoder))  # MedNet-3D: 2-D kernels converted


def _warm_start(backbone: MedNetModel, init: str) -> None:
    """A warm restart: the backbone weights of a saved MedNet (folder or Hub id; a 2-D one starts MedNet-3D through
    the backbone's conversion); the objectives' heads start fresh."""
    ours = backbone.config
    three_d = {"spatial_dims": 3, "conversion": ours.conversion} if ours.spatial_dims == 3 else {}
    try:
        source = MedNetModel.from_pretrained(init, **three_d)
    except Exception as e:  # no such folder or repo, not in the cache offline, not a MedNet
        raise ValueError(f"init: {init!r} is neither scratch, imagenet nor a MedNet checkpoint that loads "
                         f"({type(e).__name__}: {e})") from e
    theirs, ours = source.config, backbone.config
    if (theirs.architecture, theirs.variant) != (ours.architecture, ours.variant):
        raise ValueError(f"init: {init!r} is a {theirs.variant} {theirs.architecture}, the recipe trains a "
                         f"{ours.variant} {ours.architecture}")
    backbone.get_encoder().load_state_dict(source.get_encoder().state_dict())


def describe_init(init: str) -> str:
    """How a run that starts from `init` started, for its record."""
    if init in ("scratch", "imagenet"):
        return {"scratch": "scratch", "imagenet": "timm's ImageNet weights"}[init]
    return f"warm restart from {init} (weights sha256 {weights_sha256(init)})"


def build_model(recipe: Recipe, heads: list[tuple[int, int, float]], init: str = "scratch") -> PretrainModel:
    """A MedNet backbone, freshly initialised, from timm's ImageNet weights (`init="imagenet"`) or from a saved
    MedNet (a folder or Hub id), and the objectives' heads. Its config takes the run's last resolution, the one the
    release is exported for."""
    config = MedNetConfig(architecture=recipe.backbone, variant=recipe.variant, image_size=recipe.image_sizes[-1],
                          spatial_dims=recipe.spatial_dims, conversion=recipe.conversion)
    backbone = MedNetModel(config)
    if init == "imagenet":
        _imagenet_init(backbone, recipe.backbone)
    elif init != "scratch":
        _warm_start(backbone, init)
    model = PretrainModel(backbone, recipe.objectives, heads, recipe.channels_last)
    # MedNet-3D's converted kernels keep 2-D shapes (ACS, 2.5D): only its inputs take the 3-D layout
    return model.to(memory_format=torch.channels_last) if recipe.channels_last and recipe.spatial_dims == 2 else model


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
    """Written into `.tmp-step-N` and renamed into place: a checkpoint under its final name is always complete, and
    a write that fails (a full disk) leaves the previous ones as they were and stops the run, saying so."""
    root = output_dir / "checkpoints"
    final, tmp = root / f"step-{state['step']:08d}", root / f".tmp-step-{state['step']:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        if streams:
            (tmp / STREAMS_FILE.format(rank=accelerator.process_index)).write_text(json.dumps(streams))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    except (OSError, SafetensorError) as e:  # ENOSPC, EFBIG, EDQUOT ... (safetensors reports them as its own error)
        shutil.rmtree(tmp, ignore_errors=True)
        previous = _checkpoints(output_dir)
        raise CheckpointError(
            f"the checkpoint of step {state['step']} could not be written to {tmp} ({type(e).__name__}: "
            f"{getattr(e, 'strerror', None) or e}); {f'the previous one, {previous[-1]}, is intact' if previous else 'no earlier checkpoint exists'}. "
            "Free some space, then resume with --resume") from e
    if accelerator.is_main_process:
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


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({_cpu_name()}, {torch.get_num_threads()} torch thread(s) per process, {os.cpu_count()} cores)"


# oneDNN's bf16 conv3d weight gradient on the CPU is wrong where a kernel with depth 3 meets 2³ maps (NaN, or
# garbage of the gradient's own size; torch 2.13): layer3 of ResNet-18 at 28³ and layer4 at 64³. fp32 is exact.
BF16_CONV3D_CPU = ("bf16 autocast on the CPU gives wrong conv3d weight gradients at small maps (layer3 at 28³: NaN or "
                   "values off by their own size), so MedNet-3D trains in fp32 on the CPU")


def _cpu_has(probe: str) -> bool:
    """torch.cpu's probe of an instruction set its kernels use (private, so guarded)."""
    return bool(getattr(torch.cpu, probe, lambda: False)())


def auto_precision(device: torch.device, spatial_dims: int = 2, image_sizes: tuple[int, ...] = ()) -> str:
    """`mixed_precision: auto`: bf16 autocast where the device computes bf16 natively (CUDA with bf16; a CPU with
    AVX-512 BF16 or AMX), else fp32; MedNet-3D on the CPU in fp32 (`BF16_CONV3D_CPU`). `benchmarks/cpu_settings.py`
    on two 2-core CPUs: without AMX (AMD EPYC, AVX-512 BF16) bf16 made 2-D `PretrainModel` steps faster at 28 and
    64 px; with AMX (Intel Xeon) it made them 1.4x slower at 28 px and 1.6x faster at 64 px (not profiled). So on
    an AMX CPU a run whose every size is at most 32 px (`image_sizes`) trains in fp32."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if device.type == "cpu" and spatial_dims == 3:
        return "no"
    if device.type == "cpu":
        if _cpu_has("_is_amx_tile_supported"):
            return "no" if image_sizes and max(image_sizes) <= 32 else "bf16"
        return "bf16" if _cpu_has("_is_avx512_bf16_supported") else "no"
    return "no"


def _on_cpu() -> bool:
    return not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")


def run_precision(recipe: Recipe, image_sizes: list[int] | None = None) -> str:
    """The precision a run of `recipe` trains in on this machine: its `mixed_precision`, with `auto` resolved for
    the run's sizes (`image_sizes`, default the recipe's own; a probe at one size of a longer run passes the run's)."""
    if recipe.mixed_precision != "auto":
        return recipe.mixed_precision
    return auto_precision(torch.device("cpu" if _on_cpu() else "cuda"), recipe.spatial_dims,
                          tuple(image_sizes or recipe.image_sizes))


def lr_schedule(optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then a cosine decay to 0 over the remaining steps (transformers' schedule), or over every
    `cycle_steps` (SGDR's warm restarts), where the factor at a step depends on the step alone, exactly: a run
    resumed with a larger `steps` goes on with the same cycles."""
    if not recipe.cycle_steps:
        return get_cosine_schedule_with_warmup(optimizer, recipe.warmup_steps, recipe.steps)
    warmup, cycle = recipe.warmup_steps, recipe.cycle_steps

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return 0.5 * (1.0 + math.cos(math.pi * ((step - warmup) % cycle) / cycle))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _order_lines(pending: list) -> str:
    return "".join(json.dumps({"batch": batch, "index": ids.tolist()}) + "\n" for batch, ids in pending)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Segment:
    """One stretch of a run between a start and a stop (the run's first start, each `--resume`, a warm restart):
    what it trained, for how long, on what. A checkpoint stores the run's segments so far, the current one up to
    that checkpoint, so that the record of a run stopped and resumed many times lists every stretch."""

    def __init__(self, start: str, step: int, recipe: Recipe, accelerator: Accelerator, device: torch.device,
                 draws: torch.Tensor, rows: list[int]):
        self.wall_started, self.cpu_started = time.perf_counter(), time.process_time()
        self.draws_started, self.rows = draws.clone(), rows
        self.fields = {
            "started": _now(), "start": start, "from_step": step, "to_step": step, "images": 0, "wall_seconds": 0.0,
            "cpu_seconds": 0.0, "processes": accelerator.num_processes, "threads_per_process": torch.get_num_threads(),
            "precision": accelerator.mixed_precision, "channels_last": recipe.channels_last, "compile": recipe.compile,
            "batch_size": recipe.batch_size * accelerator.num_processes * recipe.grad_accum, "hardware": _hardware(device),
            "final_losses": {},
        }

    def update(self, step: int, recipe: Recipe, losses: dict, draws: torch.Tensor) -> dict:
        """The segment up to `step` (a collective: every process calls it, each adding its CPU time)."""
        cpu = sum(gather_object([time.process_time() - self.cpu_started]))
        first = self.fields["from_step"]
        drawn = (draws - self.draws_started).tolist()
        self.fields.update(
            # this segment's share of the run's epochs, per source (a streamed source's size is not known)
            source_epochs={s.name: None if s.streaming or not n else d / n for s, n, d in zip(recipe.sources, self.rows, drawn)},
            to_step=step, images=(step - first) * self.fields["batch_size"], wall_seconds=time.perf_counter() - self.wall_started,
            cpu_seconds=cpu, image_sizes=sorted({recipe.size_at(s) for s in range(first, max(step, first + 1))}),
            final_losses=_values(losses) or self.fields["final_losses"],
        )
        return dict(self.fields)


def pretrain(recipe_path, output_dir, resume: str | None = None, **overrides) -> dict:
    """Run a recipe. `resume`: `"latest"` (the newest checkpoint in `output_dir`) or a checkpoint folder.
    Returns (and writes to `output_dir/results.json`) the run record."""
    # Accelerate keeps one state per process, which an earlier run here (a notebook, a study, the Trainer of a
    # fine-tuning) set with its own precision: a single process starts from a clean one, and leaves one. Launched
    # runs (torchrun) run once per process and keep theirs.
    single = int(os.environ.get("WORLD_SIZE", "1")) == 1
    if single:
        AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return _pretrain(recipe_path, output_dir, resume, **overrides)
    finally:
        if single:
            AcceleratorState._reset_state(reset_partial_state=True)


def _pretrain(recipe_path, output_dir, resume: str | None, **overrides) -> dict:
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
    # A checkpoint at the last step (a run killed between it and its export) resumes into the export alone.
    if saved and saved["step"] > recipe.steps:
        raise CheckpointError(f"checkpoint {checkpoint} is at step {saved['step']}, and the recipe ends at step "
                              f"{recipe.steps}: pass a larger --steps to train on")

    cpu = _on_cpu()
    precision = run_precision(recipe)
    if cpu and recipe.mixed_precision == "bf16" and recipe.spatial_dims == 3:
        warnings.warn(f"mixed_precision: bf16 for MedNet-3D: {BF16_CONV3D_CPU}; its gradients may be wrong")
    accelerator = Accelerator(
        mixed_precision=precision,
        log_with="tensorboard",
        project_dir=str(output_dir),
        # Every parameter gets a gradient every step (the supervised loss is masked, not branched).
        # A process that waits for a lost one gives up after `collective_timeout` seconds instead of gloo's and
        # NCCL's default half hour.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False),
                         InitProcessGroupKwargs(timeout=timedelta(seconds=recipe.collective_timeout))],
        # `steps` counts optimizer steps whatever the number of processes, so the schedule advances once per step
        # (Accelerate's default steps it once per process).
        step_scheduler_with_optimizer=False,
    )
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    output_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:  # what a write killed half-way left: never a checkpoint, only disk space
        for stale in (output_dir / "checkpoints").glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    datas, step = {}, 0
    try:
        # One process decodes each source into the cache and the others wait on its file lock (`write_entry`), not
        # in a collective: a first decode may take longer than `collective_timeout`, which is for lost peers.
        for size in recipe.image_sizes:  # one uint8 copy of every source per resolution the run trains at
            datas[size] = pretraining_data(dataclasses.replace(recipe, image_size=size), rank, world).to(device)
        data = datas[recipe.image_size]
        set_seed(recipe.seed)  # after decoding, which may draw from the global generator (a first run decodes, a later one not)
        heads = [(i, c, s.loss_weight) for i, (c, s) in enumerate(zip(data.classes, recipe.sources)) if c]
        model = build_model(recipe, heads, init=recipe.init if checkpoint is None else "scratch")
        views = {size: pretrain_views(size, recipe.objectives) for size in recipe.image_sizes}
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                      fused=device.type == "cuda")
        scheduler = lr_schedule(optimizer, recipe)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        runner = torch.compile(model) if recipe.compile else model
        runner_checked = runner is model  # a compiled model may fail on its first call: then train eagerly

        step, segments, draws = 0, [], torch.zeros(len(recipe.sources), dtype=torch.long)
        skipped, unstable = 0, 0  # steps skipped for non-finite gradients: in this segment, and in a row
        if checkpoint:
            try:
                accelerator.load_state(str(checkpoint))
            except Exception as e:
                raise CheckpointError(f"checkpoint {checkpoint} does not load into this run ({type(e).__name__}: {e})") from e
            step, segments = saved["step"], list(saved.get("segments", []))
            if len(saved.get("source_draws", [])) == len(recipe.sources):
                draws = torch.tensor(saved["source_draws"], dtype=torch.long)
            if data.streams:
                streams_file = checkpoint / STREAMS_FILE.format(rank=rank)
                if not streams_file.is_file():
                    raise CheckpointError(f"checkpoint {checkpoint} has no {streams_file.name}: it was written by another "
                                          "number of processes or without the streamed sources of this recipe")
                try:
                    data.load_state_dict(json.loads(streams_file.read_text()))
                except Exception as e:  # a bad state file, a moved stream, a failed read: all stop the resume here
                    raise CheckpointError(f"checkpoint {checkpoint}: {streams_file.name}: {type(e).__name__}: {e}") from e
        start = f"resumed from {checkpoint.name} at step {step}" if checkpoint else describe_init(recipe.init)
        segment = Segment(start, step, recipe, accelerator, device, draws, data.counts.tolist())

        accelerator.init_trackers("pretrain", config={k: v for k, v in recipe.to_dict().items() if isinstance(v, (int, float, str, bool))})
        # The data order, per process, written at log and checkpoint steps. After a resume the batches past the
        # checkpoint appear twice; the later line is the one that counted.
        order_log, pending = output_dir / f"data_order-rank{rank}.jsonl", []
        progress = tqdm(total=recipe.steps, initial=step, disable=not accelerator.is_local_main_process, desc="pretrain", unit="step")
        images_per_step = recipe.batch_size * world * recipe.grad_accum
        first_step, timed_from, started, losses = step, step, time.perf_counter(), {}
        finished, cpu_timed_from, cpu_finished = started, time.process_time(), time.process_time()

        def inputs(batch: int, size: int) -> dict:
            """This process's rows of global batch number `batch`, and their views at `size`."""
            data = datas[size]
            index = data.sample(recipe.seed, batch, recipe.batch_size * world)
            draws.add_(torch.bincount(data.source_of(index), minlength=len(recipe.sources)))
            index = index[rank * recipe.batch_size : (rank + 1) * recipe.batch_size]
            rows = data.batch(index, device, step_generator(recipe.seed, batch, rank, stream="crops"))
            pending.append((batch + 1, rows["ids"]))
            made = views[size](rows["images"], step_generator(recipe.seed, batch, rank, device))
            return made | {"label": rows["label"], "source": rows["source"]}

        def forward_backward(module, views_and_labels: dict) -> dict:
            out = module(views_and_labels)
            accelerator.backward(out["loss"] / recipe.grad_accum)
            return out

        def state() -> dict:  # a collective (the segment sums every process's CPU time)
            now = segment.update(step, recipe, losses, draws) | {"skipped_steps": skipped}
            return {"step": step, "recipe": recipe.to_dict(), "segments": [*segments, now], "source_draws": draws.tolist()}

        while step < recipe.steps:
            size = recipe.size_at(step)
            for micro in range(recipe.grad_accum):
                micro_batch = inputs(step * recipe.grad_accum + micro, size)
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
            # One read-back per step: a step whose gradients are not finite (bf16 on a CPU made one in ~700
            # steps) is skipped rather than written into the weights; the schedule goes on.
            norm = accelerator.clip_grad_norm_(model.parameters(), recipe.clip_grad_norm or float("inf"))
            if torch.isfinite(norm):
                optimizer.step()
                unstable = 0
            else:
                if accelerator.scaler is not None:
                    # fp16: the loss scaler has unscaled these gradients and must see the step, which it skips
                    # itself while lowering the scale (an overflow in the first steps is its normal work).
                    optimizer.step()
                # With a loss scaler, a run diverges only once the scale has collapsed, not while it is falling.
                collapsed = accelerator.scaler is None or accelerator.scaler.get_scale() < 1.0
                skipped, unstable = skipped + 1, unstable + 1 if collapsed else 0
                warnings.warn(f"step {step + 1}: the gradients are not finite (norm {float(norm)}); step skipped")
                if unstable >= MAX_SKIPPED_IN_A_ROW:
                    raise DivergedError(
                        f"{unstable} steps in a row up to step {step + 1} had non-finite gradients: the run diverged. "
                        f"Resume from an earlier checkpoint in {output_dir / 'checkpoints'} with a lower --lr or "
                        "--clip-grad-norm, or --mixed-precision no")
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            progress.update(1)
            if step == first_step + 1 and step < recipe.steps:  # leave the first step (compilation, warm-up) out of the rate
                timed_from, started, cpu_timed_from = step, _synchronized_time(device), time.process_time()
            if step == recipe.steps:  # and the final checkpoint
                finished, cpu_finished = _synchronized_time(device), time.process_time()
            logging = step % recipe.log_every == 0 or step == recipe.steps
            checkpointing = step % recipe.checkpoint_every == 0 or step == recipe.steps
            if logging or checkpointing:
                with open(order_log, "a") as f:
                    f.write(_order_lines(pending))
                pending.clear()
            if logging:
                values = _values(losses)
                rate = images_per_step * (step - timed_from) / max(time.perf_counter() - started, 1e-9)
                progress.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.0f}", px=size)
                accelerator.log({f"loss/{k}": v for k, v in values.items()}
                                | {"lr": scheduler.get_last_lr()[0], "images_per_second": rate, "image_size": size}, step=step)
            if checkpointing:
                _save_checkpoint(accelerator, output_dir, state(), recipe.keep_checkpoints, data.state_dict())
    except RuntimeError as e:  # gloo / NCCL: a peer process or node is gone, or stopped answering
        if world > 1 and _lost_a_peer(e):
            last = _checkpoints(output_dir)
            raise PeerLostError(
                f"process {rank} of {world} lost contact with the others at step {step + 1} ({type(e).__name__}: "
                f"{str(e).strip()[:300]}); the last complete checkpoint is {last[-1] if last else 'none'}. "
                "Restart every process (on every node) with --resume") from e
        raise
    finally:  # a streamed source's reader thread stops also when a step raises or the user presses Ctrl-C
        for held in datas.values():
            held.close()
    progress.close()
    unwrapped = accelerator.unwrap_model(model)
    checksums = gather_object([_checksum(unwrapped)])
    timed_cpu = sum(gather_object([cpu_finished - cpu_timed_from]))
    # Resumed from the last step's checkpoint: no steps, so no new segment; the losses are the last segment's.
    final = state() if step > first_step or not segments else {"segments": segments}
    if step == first_step and segments and not losses:
        losses = {name: torch.tensor(value) for name, value in segments[-1]["final_losses"].items()}
    rows = data.counts.tolist()
    record = {
        "recipe": recipe.to_dict(),
        "steps": step,
        # source images drawn / images held (sources are sampled by weight); a streamed source's size is not known
        "epochs": None if data.streams else int(draws.sum()) / len(data),
        "data": [{"name": s.name, "dataset": s.dataset, "rows": None if s.streaming else int(n), "labelled": bool(c),
                  "drawn": int(d), "epochs": None if s.streaming or not n else int(d) / n}
                 | ({"repo_id": s.repo_id, "streamed": s.streaming} if s.dataset == "hub" else {})
                 for s, n, c, d in zip(recipe.sources, rows, data.classes, draws.tolist())],
        "segments": final["segments"],
        "wall_seconds": time.perf_counter() - run_started,  # this process's whole call: decoding, steps, checkpoints
        "wall_seconds_total": sum(s["wall_seconds"] for s in final["segments"]),
        "cpu_seconds_total": sum(s["cpu_seconds"] for s in final["segments"]),
        "hardware": _hardware(device),
        "processes": accelerator.num_processes,
        "precision": accelerator.mixed_precision,
        "final_losses": _values(losses),
        # Source images per second over all processes, from the end of this run's first step (when more followed)
        # to the end of its last, so neither compilation nor the final checkpoint counts; and the CPU time (every
        # process, every thread) one step took over the same steps.
        "images_per_second": images_per_step * (step - timed_from) / max(finished - started, 1e-9),
        "cpu_seconds_per_step": timed_cpu / max(step - timed_from, 1),
        "rank_checksums": checksums,
        "ranks_identical": len(set(checksums)) == 1,
    }
    if accelerator.is_main_process:
        export = output_dir / "final"
        unwrapped.backbone.save_pretrained(export)
        MedNetImageProcessor.from_model_config(unwrapped.backbone.config).save_pretrained(export)
        record["export"] = str(export)
        written = output_dir / ".results.json.tmp"  # results.json marks a finished run (the drivers read it): whole or absent
        written.write_text(json.dumps(record, indent=1))
        os.replace(written, output_dir / "results.json")
    accelerator.wait_for_everyone()
    accelerator.end_training()  # last: it also ends the process group
    return record


__all__ = ["CheckpointError", "DivergedError", "PeerLostError", "auto_precision", "build_model", "describe_init", "pretrain",
           "run_precision"]
