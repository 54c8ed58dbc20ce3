"""`mednet predict`: run a fine-tuned MedNet classifier over files, folders, DICOM series and NIfTI volumes.

    rows, unreadable = predict("runs/pneumonia/best", ["../shared/data/cxr"], "predictions.csv", top_k=2)

One CSV row per 2-D image, per frame of a multi-frame DICOM, and per slice of a volume (NIfTI, or the DICOM files
of a folder that are slices of one series); with a MedNet-3D model (`spatial_dims=3`), one row per whole volume. Each
row has the top-k labels and their probabilities; optionally the pooled features of every row go to a safetensors
file. Files that cannot be read are collected with the reason and reported at
the end (`strict=True` stops at the first one instead).

No PHI goes into the output. The CSV holds only the path as given, a slice index and the model's outputs; no DICOM
header value is written. Two things in a path can still identify a patient, and are replaced:
- DICOM UIDs (files are often named after their SOPInstanceUID, folders after the Study/SeriesInstanceUID): a UID is
  written as `uid-<first 16 hex digits of its SHA-256>`, the same rule as the image-folder builder's `source_file`
  column. The holder of the original files can recompute it to map a row back; nobody else can.
- A path component that contains the PatientName or PatientID of the DICOM file it leads to is replaced by
  `phi-<hash>` (e.g. a folder named after the patient).
Other identifying folder names (an accession number, a date of birth) cannot be recognised: name inputs neutrally.
"""

import csv
from pathlib import Path

import torch

from .medical_files import FileItem, Unreadable, file_phi_values, walk
from .medical_image import MedicalImageError, MedicalVolume
from .loading import load_for_use
from .medical_io import images_of
from .metrics import probabilities as metric_probabilities
from .phi import phi_values, scrub_path

# What reading or preprocessing one input may raise: the run goes on, and the file is reported.
READ_ERRORS = (MedicalImageError, ValueError, OSError, RuntimeError, MemoryError)


def _images(item: FileItem, slice_axis: int, slice_stride: int, slice_index: int | None, volumes: bool = False):
    """(slice or frame index or None, MedicalImage) for every image of one item; for a 3-D model, (None, the whole
    MedicalVolume) once per volume."""
    content = item.read()
    if volumes:
        if not isinstance(content, MedicalVolume):
            raise ValueError(f"{item.shown}: a 2-D image, but the model is MedNet-3D and takes volumes (a NIfTI file "
                             "or a DICOM series folder)")
        yield None, content
    elif isinstance(content, MedicalVolume) and slice_index is not None:
        n = content.num_slices(slice_axis)
        index = slice_index % n if -n <= slice_index < n else slice_index  # out of range: slice() says so
        yield index, content.slice(index, slice_axis)
    else:
        yield from images_of(content, slice_axis, slice_stride)


def probabilities(logits: torch.Tensor, config) -> torch.Tensor:
    """The model's scores by the package's one rule (`metrics.probabilities`): what `pipeline("image-classification")`
    reports."""
    multi_label = config.problem_type == "multi_label_classification"
    return torch.from_numpy(metric_probabilities(logits.float().cpu().numpy(), multi_label))


def predict(
    model: str,
    inputs,
    output,
    *,
    top_k: int = 5,
    batch_size: int = 32,
    features=None,
    slice_axis: int = 2,
    slice_stride: int = 1,
    slice_index: int | None = None,
    strict: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> tuple[int, list[Unreadable]]:
    """Write `output` (CSV) with one row per image, frame or slice of `inputs`; return (rows, unreadable files).

    `slice_stride` keeps every n-th slice (and frame); `slice_index` keeps only that slice of each volume.
    `features`: also write the pooled features, row i of the CSV being row i of the `features` tensor."""
    from tqdm.auto import tqdm

    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    if slice_stride < 1 or batch_size < 1 or top_k < 1:
        raise ValueError(f"slice_stride, batch_size and top_k must be at least 1 (got {slice_stride}, {batch_size}, {top_k})")
    if not inputs:
        raise ValueError("no inputs: pass files or folders to predict on")
    classifier, processor, device = load_for_use(model, "classifier", device)
    volumes = getattr(classifier.config, "spatial_dims", 2) == 3  # MedNet-3D: whole volumes, one row each
    names = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    k = min(top_k, len(names))
    items, unreadable = walk(inputs)
    if strict and unreadable:
        raise ValueError(f"{unreadable[0].path}: {unreadable[0].reason}")
    if not items:
        found = f"; {len(unreadable)} input(s) could not be read: " + ", ".join(f"{u.path} ({u.reason})" for u in unreadable[:5]) if unreadable else ""
        raise ValueError(f"no image, DICOM, NIfTI or series found in {', '.join(scrub_path(str(i)) for i in inputs)}{found}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pooled, rows = [], 0
    with output.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "slice", *[f"{what}_{i}" for i in range(1, k + 1) for what in ("label", "probability")]])
        pending: list[tuple[str, int | None, torch.Tensor]] = []

        def flush():
            nonlocal rows
            if not pending:
                return
            pixels = torch.cat([p for _, _, p in pending]).to(device)
            with torch.inference_mode():
                maps = classifier.forward_features(pixels)
                embedded = classifier.forward_head(maps, pre_logits=True)
                logits = classifier.forward_head(maps)  # what `classifier(pixels).logits` computes
            scores, top = probabilities(logits, classifier.config).topk(k, dim=-1)
            for (name, index, _), s, t in zip(pending, scores.tolist(), top.tolist()):
                writer.writerow([name, "" if index is None else index,
                                 *[v for label, score in zip(t, s) for v in (names[label], f"{score:.9g}")]])
            if features is not None:
                pooled.append(embedded.float().cpu())
            rows += len(pending)
            pending.clear()

        for item in tqdm(items, desc="mednet predict", unit="input", disable=not progress):
            shown = item.shown
            try:
                for index, image in _images(item, slice_axis, slice_stride, slice_index, volumes):
                    # One image at a time through the processor, so that a failure names its file; the model
                    # sees whole batches.
                    pending.append((shown, index, processor(image, return_tensors="pt")["pixel_values"]))
                    if len(pending) >= batch_size:
                        flush()
            except READ_ERRORS as e:
                if strict:
                    raise ValueError(f"{shown}: {scrub_path(str(e), item.phi)}") from e
                reason = scrub_path(str(e), item.phi)
                for path in {str(p) for p in item.paths} | {str(item.path)}:  # messages begin with the path: keep the rest
                    reason = reason.replace(scrub_path(path, item.phi) + ": ", "")
                unreadable.append(Unreadable(shown, reason))
        flush()
    if features is not None:
        from safetensors.torch import save_file

        tensor = torch.cat(pooled) if pooled else torch.zeros(0, classifier.timm_model.num_features)
        save_file({"features": tensor.contiguous()}, str(features), metadata={"rows_of": output.name, "model": Path(model).name})
    unreadable.sort(key=lambda u: u.path)
    return rows, unreadable


def load(model: str, device: str | None = None):
    """Deprecated: `mednet_hf.loading.load_for_use(model, "classifier", device)`, the one loader."""
    import warnings

    warnings.warn("mednet_hf.predict.load is deprecated; use mednet_hf.loading.load_for_use(model, 'classifier', device)",
                  FutureWarning, stacklevel=2)
    return load_for_use(model, "classifier", device)


def collect(inputs):
    """Deprecated: `mednet_hf.medical_files.walk(inputs)`, the one walk of files and folders."""
    import warnings

    warnings.warn("mednet_hf.predict.collect is deprecated; use mednet_hf.medical_files.walk", FutureWarning, stacklevel=2)
    return walk(inputs)


__all__ = ["Unreadable", "collect", "file_phi_values", "load", "phi_values", "predict", "probabilities", "scrub_path"]
