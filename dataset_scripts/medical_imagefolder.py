"""A folder of medical images as a `datasets` dataset: DICOM, NIfTI, PNG, JPEG, TIFF.

    MedicalImageFolder(data_dir="scans/", slice_stride=2).download_and_prepare()

- Labels come from the first sub-folder below `data_dir` (`scans/pneumonia/x.dcm` → "pneumonia"), or from a CSV
  (`labels_csv=`): `path,label` for one label per image, or `path` plus one 0/1 column per class for multi-label.
- DICOM files of one series (same folder and SeriesInstanceUID) become a volume in ImagePositionPatient order;
  volumes (series, NIfTI) and multi-frame DICOMs expand into 2-D slices along `slice_axis` every `slice_stride`.
- DICOM and NIfTI pixels are stored losslessly in modality units (uint8/uint16 PNG, int/float TIFF), with the
  columns the intensity convention needs (`window`, `photometric_interpretation`); PNG/JPEG/TIFF files are stored
  as they are. Columns: image, label or labels, source_file, slice_index, modality, pixel_spacing, window,
  photometric_interpretation (+ `phi` with `include_phi=True`; patient identifiers are dropped otherwise).
- Unreadable files are reported with their count and paths: `on_error="fail"` (default) raises once all files
  were tried, `on_error="skip"` logs them and goes on.
"""

import csv
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from mednet_hf.medical_io import (
    MedicalImage,
    MedicalImageError,
    is_dicom_file,
    read_dicom,
    read_dicom_series,
    read_nifti,
)

from ._common import DataFileError, MedicalBuilder

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class MedicalImageFolderConfig(datasets.BuilderConfig):
    labels_csv: str | None = None
    slice_axis: int = 2
    slice_stride: int = 1
    include_phi: bool = False
    on_error: str = "fail"

    def __post_init__(self):
        super().__post_init__()
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {self.on_error!r}")
        if self.slice_stride < 1 or self.slice_axis not in (0, 1, 2):
            raise ValueError(f"need slice_stride >= 1 and slice_axis in 0, 1, 2 (got {self.slice_stride}, {self.slice_axis})")


def storable(pixels: np.ndarray) -> np.ndarray:
    """The smallest dtype that keeps the modality values exactly (datasets encodes each losslessly)."""
    if pixels.dtype in (np.uint8, np.uint16, np.int16):
        return pixels
    if pixels.min() >= -32768 and pixels.max() <= 32767 and (pixels.dtype.kind in "iu" or np.all(np.mod(pixels, 1) == 0)):
        return pixels.astype(np.int16)  # e.g. CT in whole Hounsfield units: half the bytes of float32
    return pixels.astype(np.float32)


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if is_dicom_file(path):
        return "dicom"
    return None


class MedicalImageFolder(MedicalBuilder):
    BUILDER_CONFIG_CLASS = MedicalImageFolderConfig

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(description="A folder of medical images (DICOM, NIfTI, PNG, JPEG, TIFF).")

    # ------------------------------------------------------------------------------------------ scanning

    def _labels_from_csv(self, root: Path, files: dict[str, Path]):
        path = Path(self.config.labels_csv)
        path = path if path.is_absolute() else root / path
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "path" not in rows[0]:
            raise DataFileError(f"{path}: the labels CSV needs a 'path' column and at least one row")
        missing = [r["path"] for r in rows if r["path"] not in files]
        if missing:
            raise DataFileError(f"{path}: {len(missing)} listed file(s) are not images under {root}: {missing[:20]}")
        columns = [c for c in rows[0] if c != "path"]
        if columns == ["label"]:
            return {r["path"]: r["label"] for r in rows}, False
        bad = [r["path"] for r in rows if any(r[c] not in ("0", "1") for c in columns)]
        if bad:
            raise DataFileError(f"{path}: multi-label columns {columns} must hold 0 or 1; not so for {bad[:20]}")
        return {r["path"]: [c for c in columns if r[c] == "1"] for r in rows}, columns

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise DataFileError("MedicalImageFolder needs data_dir=<folder of images>")
        root = Path(self.config.data_dir).resolve()
        if not root.is_dir():
            raise DataFileError(f"{root}: no such folder")
        files, ignored = {}, []
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
            (files.__setitem__(path.relative_to(root).as_posix(), path) if _kind(path) else ignored.append(path.name))
        if ignored:
            logger.info("%s: %d file(s) that are not images were ignored: %s", root, len(ignored), ignored[:20])
        if not files:
            raise DataFileError(f"{root}: no DICOM, NIfTI, PNG, JPEG or TIFF files")

        multi_label = False
        if self.config.labels_csv:
            labels, multi_label = self._labels_from_csv(root, files)
            files = {k: v for k, v in files.items() if k in labels}
        elif all("/" in rel for rel in files):
            labels = {rel: rel.split("/", 1)[0] for rel in files}
        else:
            labels = None

        features = {"image": datasets.Image()}
        if multi_label:
            features["labels"] = datasets.Sequence(datasets.ClassLabel(names=multi_label))
        elif labels is not None:
            features["label"] = datasets.ClassLabel(names=sorted(set(labels.values())))
        features.update(
            source_file=datasets.Value("string"),
            slice_index=datasets.Value("int32"),
            modality=datasets.Value("string"),
            pixel_spacing=datasets.Sequence(datasets.Value("float32"), length=2),
            window=datasets.Sequence(datasets.Value("float32"), length=2),
            photometric_interpretation=datasets.Value("string"),
        )
        if self.config.include_phi:
            features["phi"] = datasets.Value("string")
        self.info.features = datasets.Features(features)
        return [
            datasets.SplitGenerator(
                name=datasets.Split.TRAIN, gen_kwargs={"root": root, "files": files, "labels": labels}
            )
        ]

    def _items(self, root: Path, files: dict[str, Path], errors: list):
        """What to read: 2-D files one by one; DICOM files grouped by (folder, SeriesInstanceUID)."""
        groups = defaultdict(list)
        for rel, path in files.items():
            kind = _kind(path)
            if kind != "dicom":
                yield kind, rel, [path]
                continue
            try:
                import pydicom

                header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                groups[(path.parent, str(header.get("SeriesInstanceUID", rel)))].append((rel, path))
            except Exception as e:
                errors.append((rel, f"not a readable DICOM header: {e}"))
        for (_, _), members in groups.items():
            if len(members) == 1:
                yield "dicom", members[0][0], [members[0][1]]
            else:  # a series: one volume, labelled and named by its folder
                rel = members[0][0].rsplit("/", 1)[0] if "/" in members[0][0] else "."
                yield "series", rel, [p for _, p in members]

    def _slices(self, kind: str, paths: list[Path]):
        """(slice_index, MedicalImage or file path) for one item."""
        axis, stride = self.config.slice_axis, self.config.slice_stride
        phi = self.config.include_phi
        if kind == "image":
            with Image.open(paths[0]) as image:
                image.load()  # decode fully: a truncated file fails here, not in a training run
            yield None, str(paths[0])
        elif kind == "dicom":
            image = read_dicom(paths[0], include_phi=phi)
            frames = range(0, image.num_frames, stride) if image.num_frames > 1 else [None]
            for index in frames:
                yield index, image.frame(index) if index is not None else image
        else:
            volume = read_nifti(paths[0]) if kind == "nifti" else read_dicom_series(paths, include_phi=phi)
            for index in range(0, volume.num_slices(axis), stride):
                yield index, volume.slice(index, axis)

    def _row(self, rel: str, index, content, label):
        row = {"source_file": rel, "slice_index": index, "modality": None, "pixel_spacing": None, "window": None,
               "photometric_interpretation": None}
        if isinstance(content, MedicalImage):
            row["image"] = storable(content.pixels)
            row["modality"] = content.modality
            row["pixel_spacing"] = list(content.pixel_spacing) if content.pixel_spacing else None
            row["window"] = list(content.window) if content.window else None
            row["photometric_interpretation"] = content.photometric_interpretation
            if self.config.include_phi:
                row["phi"] = json.dumps(content.phi or {})
        else:
            row["image"] = content
            if self.config.include_phi:
                row["phi"] = None
        if label is not None:
            row["labels" if isinstance(label, list) else "label"] = label
        return row

    def _generate_examples(self, root: Path, files: dict[str, Path], labels):
        errors, key = [], 0
        for kind, rel, paths in self._items(root, files, errors):
            label = None if labels is None else labels.get(rel, labels.get(f"{rel}/", None))
            if labels is not None and label is None:  # a series: its label is its folder's
                label = next(v for k, v in labels.items() if k.startswith(f"{rel}/"))
            try:
                rows = [self._row(rel, index, content, label) for index, content in self._slices(kind, paths)]
            except (MedicalImageError, OSError, ValueError) as e:
                errors.append((rel, str(e)))
                continue
            for row in rows:
                yield key, row
                key += 1
        if errors:
            listing = "\n".join(f"  {rel}: {why}" for rel, why in errors)
            message = f"{len(errors)} unreadable file(s) under {root}:\n{listing}"
            if self.config.on_error == "fail":
                raise DataFileError(message + "\n(pass on_error='skip' to build the dataset without them)")
            logger.warning(message)
