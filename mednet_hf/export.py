"""`mednet export`: a saved MedNet classifier (or backbone) → ONNX, with its processor beside it.

    export_onnx("runs/pneumonia/best", "runs/pneumonia/onnx")

The graph comes from PyTorch's own exporter, `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript),
with a dynamic batch dimension: input `pixel_values` `(batch, C, H, W)` float32 (`(batch, C, D, H, W)` for
MedNet-3D), output `logits` `(batch, num_labels)` for a classifier, `pooler_output` `(batch, num_features)` for a
bare `MedNetModel`. `config.json` and
`preprocessor_config.json` are saved in the same folder, so `AutoImageProcessor.from_pretrained(folder)` prepares
the inputs exactly as for the PyTorch model. Needs the `onnx` extra (`pip install mednet-hf[onnx]`).
"""

import logging
from pathlib import Path

import torch

from .loading import load_for_use

logger = logging.getLogger(__name__)
MIN_SIDE = 16  # the smallest side (height, width, depth) the exported graph takes (ResNet reduces by 32 and pads)


class _Outputs(torch.nn.Module):
    """The model with a plain tensor output (ONNX has no ModelOutput)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.name = "logits" if hasattr(model, "forward_head") else "pooler_output"

    def forward(self, pixel_values):
        output = self.model(pixel_values=pixel_values)
        return output.logits if self.name == "logits" else output.pooler_output


def _export(wrapped, example, path: Path, opset, dynamic: dict) -> None:
    """The dynamo exporter with `dynamic` dimensions ({axis: name}) of the input."""
    shapes = {axis: torch.export.Dim(name, min=MIN_SIDE if axis > 0 else 1, max=65536) for axis, name in dynamic.items()}
    program = torch.onnx.export(wrapped, (example,), dynamo=True, opset_version=opset, external_data=False,
                                dynamic_shapes={"pixel_values": shapes}, input_names=["pixel_values"],
                                output_names=[wrapped.name])
    program.save(str(path))


def export_onnx(model: str, output_dir, opset: int | None = None) -> dict:
    """Export `model` (a saved MedNet folder or Hub id) to `output_dir/model.onnx` with a dynamic batch size, and a
    dynamic height and width (and depth, for MedNet-3D) where the network allows them (a CNN with a global pool
    does), and save its config and processor there. Returns {"path", "output", "exporter", "dynamic"}: `exporter`
    says whether the dynamo exporter was used or, if it failed, the TorchScript one (with a warning saying why);
    `dynamic` which input dimensions may vary."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ValueError(f"ONNX export needs the onnx extra: pip install 'mednet-hf[onnx]' ({e})") from None
    loaded, processor, _ = load_for_use(model, "auto", device="cpu")
    config = loaded.config
    channels, *spatial = config.pretrained_cfg["input_size"]  # (C, H, W), or (C, D, H, W) for MedNet-3D
    if channels != config.num_channels:  # before any tracing: the graph's input would take the wrong channels
        raise ValueError(f"{model}: config.json's pretrained_cfg.input_size has {channels} channel(s), but the "
                         f"{config.variant} variant takes {config.num_channels}; fix the config")
    wrapped = _Outputs(loaded.float()).eval()
    # Batch 2 as the example: torch.export specialises dimensions of size 0 and 1.
    example = torch.zeros(2, channels, *spatial)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "model.onnx"
    names = ("depth", "height", "width")[-len(spatial):]
    dynamic, exporter = {0: "batch"} | {2 + i: name for i, name in enumerate(names)}, "dynamo"
    try:
        _export(wrapped, example, path, opset, dynamic)
    except Exception as e:  # noqa: BLE001 - a size the graph depends on: keep the size fixed, and say so
        logger.warning("%s: a dynamic height and width could not be exported (%s: %s); only the batch is dynamic",
                       model, type(e).__name__, e)
        dynamic = {0: "batch"}
        try:
            _export(wrapped, example, path, opset, dynamic)
        except Exception as e:  # noqa: BLE001 - any failure of the new exporter: fall back, and say so
            logger.warning("torch.onnx.export(dynamo=True) failed for %s (%s: %s); using the TorchScript exporter",
                           model, type(e).__name__, e)
            torch.onnx.export(wrapped, (example,), str(path), dynamo=False, opset_version=opset or 17,
                              dynamic_axes={"pixel_values": {0: "batch"}, wrapped.name: {0: "batch"}},
                              input_names=["pixel_values"], output_names=[wrapped.name])
            exporter = "torchscript"
    config.save_pretrained(output_dir)  # the processor's geometry lives in config.json (pretrained_cfg)
    processor.save_pretrained(output_dir)
    return {"path": str(path), "output": wrapped.name, "exporter": exporter, "dynamic": ", ".join(dynamic.values())}


__all__ = ["export_onnx"]
