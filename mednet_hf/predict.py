"""`mednet predict`: run a fine-tuned MedNet classifier over files, folders, DICOM series and NIfTI volumes.

    rows, unreadable = predict("runs/pneumonia/best", ["../shared/data/cxr"], "predictions.csv", top_k=2)

One CSV row per 2-D image, per frame of a multi-frame DICOM, and per slice of a volume (NIfTI, or the DICOM files
of a folder that are slices of one series), with the top-k labels and their probabilities; optionally the pooled
features of every row to a safetensors file. Files that cannot be read are collected with the reason and reported at
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
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .builders.medical_imagefolder import public_name
from .medical_io import (
    MedicalImageError,
    MedicalVolume,
    group_volumes,
    images_of,
    read_dicom_header,
    read_dicom_series,
    reader_for,
)

# What reading or preprocessing one input may raise: the run goes on, and the file is reported.
READ_ERRORS = (MedicalImageError, ValueError, OSError, RuntimeError, MemoryError)


@dataclass
class _Item:
    """One thing to read: a file, or the DICOM files of one series (`paths`), shown in the CSV as `name`."""

    name: str
    reader: str
    paths: list[Path]
    phi_values: set = field(default_factory=set)


@dataclass
class Unreadable:
    path: str
    reason: str


def phi_values(header) -> set[str]:
    """The PatientName and PatientID of a header (and the name's components), to keep them out of the CSV."""
    values = set()
    for keyword in ("PatientName", "PatientID"):
        value = str(header.get(keyword, "") or "").strip()
        if value:
            values.add(value)
            values.update(part for part in re.split(r"[\^=\s]+", value) if len(part) >= 3)
    return values


def scrub_path(path: str, phi_values: set[str]) -> str:
    """`path` as it may appear in the output: UIDs hashed, components holding a patient's name or ID replaced."""
    parts = []
    for part in re.split(r"([/\\])", path):
        if phi_values and any(value and value.lower() in part.lower() for value in phi_values):
            part = "phi-" + hashlib.sha256(part.encode()).hexdigest()[:16]
        parts.append(part)
    return public_name("".join(parts))


def _header_or_none(path: Path):
    try:
        return read_dicom_header(path)
    except READ_ERRORS:
        return None  # reading the file itself reports why


def file_phi_values(path) -> set[str]:
    """`phi_values` of a single file: its DICOM header's, or none for another kind of file or an unreadable header."""
    reader = reader_for(path)
    header = _header_or_none(Path(path)) if reader is not None and reader.name == "dicom" else None
    return phi_values(header) if header is not None else set()


def collect(inputs) -> tuple[list[_Item], list[Unreadable]]:
    """Expand the inputs (files, folders searched recursively, series folders, volumes) into items to read.

    In a folder, DICOM files that are slices of one volume (per sub-folder and SeriesInstanceUID, checked by
    `medical_io.is_one_volume`) become one series item; every other file the reader table accepts is one item, and
    files it does not accept (notes, JSON annotations) are reported as unreadable."""
    items, unreadable = [], []
    for raw in inputs:
        root = Path(raw)
        if not root.exists():
            unreadable.append(Unreadable(scrub_path(str(raw), set()), "no such file or folder"))
            continue
        if root.is_file():
            reader, phi = reader_for(root), file_phi_values(root)
            if reader is None:
                unreadable.append(Unreadable(scrub_path(str(root), phi), f"not a file type mednet reads ({_suffix(root)})"))
            else:
                items.append(_Item(str(root), reader.name, [root], phi))
            continue
        dicom = []
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
            reader = reader_for(path)
            if reader is None:
                unreadable.append(Unreadable(scrub_path(str(path), set()), f"not a file type mednet reads ({_suffix(path)})"))
            elif reader.name == "dicom":
                dicom.append((path, _header_or_none(path)))
            else:
                items.append(_Item(str(path), reader.name, [path]))
        headers = dict(dicom)
        for paths in group_volumes(dicom):
            phi = set().union(*(phi_values(headers[p]) for p in paths if headers[p] is not None))
            if len(paths) > 1:
                items.append(_Item(str(paths[0].parent), "dicom_series", paths, phi))
            else:
                items.append(_Item(str(paths[0]), "dicom", paths, phi))
    items.sort(key=lambda item: item.name)
    return items, unreadable


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]) or "no suffix"


def _images(item: _Item, slice_axis: int, slice_stride: int, slice_index: int | None):
    """(slice or frame index or None, MedicalImage) for every image of one item."""
    if item.reader == "dicom_series":
        content = read_dicom_series(item.paths)
    else:
        content = reader_for(item.paths[0]).read(item.paths[0])
    if isinstance(content, MedicalVolume) and slice_index is not None:
        n = content.num_slices(slice_axis)
        index = slice_index % n if -n <= slice_index < n else slice_index  # out of range: slice() says so
        yield index, content.slice(index, slice_axis)
    else:
        yield from images_of(content, slice_axis, slice_stride)


def load(model: str, device: str | None = None):
    """The classifier (eval mode, on `device`: default CUDA when there is one) and its processor."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    if not (Path(model) / "config.json").is_file() and Path(model).exists():
        raise ValueError(f"{model}: not a saved model folder (no config.json); pass e.g. a finetune run's best/")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    classifier = AutoModelForImageClassification.from_pretrained(model).to(device).eval()
    return classifier, AutoImageProcessor.from_pretrained(model), device


def probabilities(logits: torch.Tensor, config) -> torch.Tensor:
    """What `pipeline("image-classification")` reports: sigmoid for multi-label models (and single-logit ones),
    softmax otherwise."""
    logits = logits.float()
    if config.problem_type == "multi_label_classification" or config.num_labels == 1:
        return logits.sigmoid()
    return logits.softmax(-1)


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
    classifier, processor, device = load(model, device)
    names = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
    k = min(top_k, len(names))
    items, unreadable = collect(inputs)
    if strict and unreadable:
        raise ValueError(f"{unreadable[0].path}: {unreadable[0].reason}")
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
            shown = scrub_path(item.name, item.phi_values)
            try:
                for index, image in _images(item, slice_axis, slice_stride, slice_index):
                    # One image at a time through the processor, so that a failure names its file; the model
                    # sees whole batches.
                    pending.append((shown, index, processor(image, return_tensors="pt")["pixel_values"]))
                    if len(pending) >= batch_size:
                        flush()
            except READ_ERRORS as e:
                if strict:
                    raise ValueError(f"{shown}: {scrub_path(str(e), item.phi_values)}") from e
                reason = scrub_path(str(e), item.phi_values)
                for path in {str(p) for p in item.paths} | {item.name}:  # messages begin with the path: keep the rest
                    reason = reason.replace(scrub_path(path, item.phi_values) + ": ", "")
                unreadable.append(Unreadable(shown, reason))
        flush()
    if features is not None:
        from safetensors.torch import save_file

        tensor = torch.cat(pooled) if pooled else torch.zeros(0, classifier.timm_model.num_features)
        save_file({"features": tensor.contiguous()}, str(features), metadata={"rows_of": output.name, "model": Path(model).name})
    unreadable.sort(key=lambda u: u.path)
    return rows, unreadable


__all__ = ["Unreadable", "collect", "file_phi_values", "phi_values", "predict", "probabilities", "scrub_path"]
