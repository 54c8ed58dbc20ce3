"""`mednet demo`: a Gradio page that shows what a fine-tuned MedNet classifier sees and predicts.

    mednet demo --model runs/pneumonia/best

Upload a DICOM, NIfTI, PNG or JPEG (or pick an example), choose a window preset and, for a volume or multi-frame
file, the slice. The page shows the image as the model sees it (after the intensity convention, resize and crop),
the top-k predictions, a Grad-CAM overlay (the maintained `grad-cam` package) and a header summary without patient
identifiers. Unreadable files get a message in the page, never a traceback.

Grad-CAM is taken on the last stage of the network. At small input sizes that stage can be 1×1 (ResNet-18 at 28 px),
where a class activation map is one number; the demo then uses the deepest stage with at least `MIN_CAM_SIZE` cells
per side, and says so on the page.

`gradio` and `grad-cam` come with the `demo` extra: `pip install "mednet-hf[demo]"`.
"""

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .intensity import WINDOW_PRESETS, to_uint8
from .loading import load_for_use
from .medical_files import file_phi_values
from .medical_image import MedicalImage, MedicalVolume
from .medical_io import read_path
from .phi import scrub_path
from .predict import READ_ERRORS, probabilities

AUTO_WINDOW = "auto (file / header)"
MIN_CAM_SIZE = 4
DISPLAY_SIZE = 256  # the model's input is often 28–64 px: shown enlarged, nearest neighbour, so its pixels stay visible
EXAMPLES = ("dicom/CT_small.dcm", "cxr", "nifti/anatomical.nii")  # under MEDNET_DATA_DIR, when there


def _needs_demo_extra(e: ImportError):
    return ImportError(f"mednet demo needs the `demo` extra ({e.name} is missing): pip install \"mednet-hf[demo]\"")


@dataclass
class Explanation:
    """What the page shows for one image."""

    model_view: np.ndarray  # (H, W, 3) uint8, the model's input mapped back to [0, 255]
    overlay: np.ndarray  # (H, W, 3) uint8, Grad-CAM over the model view
    scores: dict  # label -> probability, the top-k, highest first
    cam_layer: str
    cam_note: str


class Explainer:
    """A classifier, its processor and a Grad-CAM on a chosen stage; `explain(image)` runs all three."""

    def __init__(self, model: str, top_k: int = 3, device: str | None = None):
        try:
            import pytorch_grad_cam  # noqa: F401
        except ImportError as e:
            raise _needs_demo_extra(e) from e
        self.classifier, self.processor, self.device = load_for_use(model, "classifier", device)
        config = self.classifier.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.top_k = min(top_k, len(self.labels))
        self.cam_layer, self.cam_note = self._cam_stage()
        self._lock = threading.Lock()

    def _cam_stage(self) -> tuple[str, str]:
        """The last stage, or the deepest one whose map has at least MIN_CAM_SIZE cells per side at the model's size."""
        stages = self.classifier.timm_model.feature_info
        size = self.classifier.config.pretrained_cfg["input_size"][-1]
        last = stages[-1]
        for stage in reversed(stages):
            cells = math.ceil(size / stage["reduction"])
            if cells >= MIN_CAM_SIZE:
                if stage is last:
                    return stage["module"], f"Grad-CAM on the last stage ({stage['module']}, {cells}×{cells})"
                last_cells = math.ceil(size / last["reduction"])
                return stage["module"], (f"Grad-CAM on {stage['module']} ({cells}×{cells}): the last stage "
                                         f"({last['module']}) is {last_cells}×{last_cells} at {size} px")
        return last["module"], f"Grad-CAM on the last stage ({last['module']})"

    def model_view(self, pixel_values: torch.Tensor) -> np.ndarray:
        """The processor's output undone to [0, 1] (mean/std only: what the model sees), as RGB uint8."""
        mean = torch.tensor(self.processor.image_mean).view(-1, 1, 1)
        std = torch.tensor(self.processor.image_std).view(-1, 1, 1)
        unit = (pixel_values[0].cpu() * std + mean).clamp(0, 1)
        if unit.shape[0] == 1:
            unit = unit.expand(3, -1, -1)
        return to_uint8(unit.permute(1, 2, 0).numpy())

    def explain(self, image: MedicalImage, window: str | None = None) -> Explanation:
        # Gradio runs events of several sessions in threads, and a CAM hooks the one shared model: one at a time.
        with self._lock:
            return self._explain(image, window)

    def _explain(self, image: MedicalImage, window: str | None) -> Explanation:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pixels = self.processor(image, window=window, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.inference_mode():
            scores = probabilities(self.classifier(pixel_values=pixels).logits, self.classifier.config)[0]
        top = scores.topk(self.top_k)
        # A CAM per call, as a context: its hooks come off the model when it closes.
        layer = self.classifier.timm_model.get_submodule(self.cam_layer)
        with GradCAM(model=_Logits(self.classifier), target_layers=[layer]) as grad_cam:
            cam = grad_cam(input_tensor=pixels, targets=[ClassifierOutputTarget(int(top.indices[0]))])[0]
        view = self.model_view(pixels)
        overlay = show_cam_on_image(view.astype(np.float32) / 255, cam, use_rgb=True, image_weight=0.55)
        return Explanation(
            model_view=view,
            overlay=overlay,
            scores={self.labels[i]: float(s) for s, i in zip(top.values.tolist(), top.indices.tolist())},
            cam_layer=self.cam_layer,
            cam_note=self.cam_note,
        )


class _Logits(torch.nn.Module):
    """grad-cam calls `model(x)` and expects the logits tensor, not a `ModelOutput`."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, pixel_values):
        return self.classifier(pixel_values=pixel_values).logits


def enlarge(image: np.ndarray) -> np.ndarray:
    """Repeat pixels up to about DISPLAY_SIZE, so the browser does not blur a 28-px input into a smear."""
    factor = max(1, DISPLAY_SIZE // max(image.shape[:2]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def shown_name(path) -> str:
    """The file name as the page may show it: `predict`'s rule (DICOM UIDs hashed, a patient's name or ID replaced)."""
    return scrub_path(Path(path).name, file_phi_values(path))


def num_positions(content: MedicalImage | MedicalVolume) -> int:
    """Slices of a volume (axis 2, the processor's default) or frames of a multi-frame image; 1 for a 2-D image."""
    return content.num_slices(2) if isinstance(content, MedicalVolume) else content.num_frames


def pick(content: MedicalImage | MedicalVolume, index: int | None) -> MedicalImage:
    """Slice or frame `index` (None: the middle one, as the processor picks)."""
    return content.slice(index, 2) if isinstance(content, MedicalVolume) else content.frame(index)


def header_summary(content: MedicalImage | MedicalVolume, image: MedicalImage, window: str | None) -> str:
    """Markdown: what was read, with no patient identifier (files are read without PHI)."""
    rows = [("modality", content.modality or "not stated")]
    if isinstance(content, MedicalVolume):
        rows += [("volume", " × ".join(map(str, content.array.shape))),
                 ("voxel spacing (mm)", " × ".join(f"{s:.3g}" for s in content.spacing))]
    else:
        rows.append(("image", " × ".join(map(str, image.pixels.shape))))
        if content.num_frames > 1:
            rows.append(("frames", str(content.num_frames)))
        if content.pixel_spacing:
            rows.append(("pixel spacing (mm)", " × ".join(f"{s:.3g}" for s in content.pixel_spacing)))
    rows.append(("photometric", image.photometric_interpretation))
    if window:
        center, width = WINDOW_PRESETS[window]
        rows.append(("window", f"{window} preset: center {center:g}, width {width:g}"))
    elif image.header_window:
        rows.append(("window", "header: center {:g}, width {:g}".format(*image.header_window)))
    else:
        rows.append(("window", "none: the intensity convention's auto rule"))
    return "| header | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def example_files(data_dir) -> list[str]:
    """A few real files from the data folder, when it is there: a CT DICOM, a chest X-ray, a NIfTI volume."""
    found = []
    for relative in EXAMPLES:
        path = Path(data_dir) / relative
        if path.is_dir():
            path = next(iter(sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))), None)
        if path is not None and path.is_file():
            found.append(str(path))
    return found


def build_demo(model: str, examples=(), top_k: int = 3, device: str | None = None):
    """The Gradio `Blocks` app for `model` (a saved classifier folder)."""
    try:
        import gradio as gr
    except ImportError as e:
        raise _needs_demo_extra(e) from e
    explainer = Explainer(model, top_k, device)
    empty = (None, None, None, "", "")

    def analyse(path, window, index):
        if not path:
            return empty
        name = shown_name(path)
        window = None if window == AUTO_WINDOW else window
        try:
            content = read_path(path)
            image = pick(content, None if index is None else int(index))
            shown = explainer.explain(image, window)
        except READ_ERRORS as e:
            reason = str(e).replace(str(path), name)
            return None, None, None, "", f"**Cannot use `{name}`:** {reason}"
        status = f"`{name}`: {explainer.cam_note}."
        return enlarge(shown.model_view), shown.scores, enlarge(shown.overlay), header_summary(content, image, window), status

    def opened(path, window):
        """A new file: set the slice slider to its slices (or hide it), then analyse the middle one."""
        positions = 1
        if path:
            try:
                positions = num_positions(read_path(path))
            except READ_ERRORS:
                pass  # analyse() reports it
        middle = positions // 2
        slider = gr.update(minimum=0, maximum=max(positions - 1, 1), value=middle, visible=positions > 1)
        return (slider, *analyse(path, window, middle if positions > 1 else None))

    with gr.Blocks(title="MedNet demo") as app:
        gr.Markdown(f"# MedNet: `{Path(model).name}`\nUpload a DICOM, NIfTI, PNG or JPEG file. "
                    f"Labels: {', '.join(explainer.labels)}.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image (DICOM, NIfTI, PNG, JPEG)", type="filepath", elem_id="upload")
                window = gr.Dropdown([AUTO_WINDOW, *WINDOW_PRESETS], value=AUTO_WINDOW, label="Window preset (CT, HU)",
                                     elem_id="window")
                position = gr.Slider(0, 1, value=0, step=1, label="Slice / frame", visible=False, elem_id="slice")
                status = gr.Markdown(elem_id="status")
                header = gr.Markdown(elem_id="header")
            with gr.Column(scale=2):
                labels = gr.Label(num_top_classes=explainer.top_k, label="Top predictions", elem_id="predictions")
                with gr.Row():
                    view = gr.Image(label="What the model sees", type="numpy", format="png", elem_id="model-view",
                                    height=DISPLAY_SIZE, interactive=False)
                    overlay = gr.Image(label="Grad-CAM (top label)", type="numpy", format="png", elem_id="saliency",
                                       height=DISPLAY_SIZE, interactive=False)
        outputs = [view, labels, overlay, header, status]
        upload.change(opened, [upload, window], [position, *outputs])
        window.change(analyse, [upload, window, position], outputs)
        position.release(analyse, [upload, window, position], outputs)
        if examples:
            gr.Examples([[e] for e in examples], inputs=[upload], label="Examples")
    return app


def serve(model: str, examples=(), top_k: int = 3, host: str = "127.0.0.1", port: int | None = None,
          share: bool = False, block: bool = True):
    """Build and launch the app; returns it (with `block=False`, running in the background)."""
    app = build_demo(model, examples, top_k)
    # The example files themselves, not their folders: a folder of DICOMs would be served whole, headers included.
    app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=not block,
               allowed_paths=[str(Path(e).resolve()) for e in examples])
    return app


__all__ = ["Explainer", "build_demo", "enlarge", "example_files", "header_summary", "serve"]
