"""A folder of medical images as a `datasets` dataset: DICOM, NIfTI, PNG, JPEG, TIFF.

    MedicalImageFolder(data_dir="scans/", slice_stride=2).download_and_prepare()

- Files are read through the package's reader table (`mednet_hf.medical_io.READERS`), as the processor reads them:
  a file is DICOM by its content, whatever its name.
- Labels come from the first sub-folder below `data_dir` (`scans/pneumonia/x.dcm` → "pneumonia"), or from a CSV
  (`labels_csv=`): `path,label` for one label per image, or `path` plus one 0/1 column per class for multi-label.
  Images of the folder that the CSV does not list are left out, and the build logs a warning with their count.
  Images lying at the top of `data_dir` beside class sub-folders have no label: the build stops with their count
  and names (move them into a class folder, list them in a CSV, or pass `drop_labels=True` for a dataset without
  labels). A folder of images with no sub-folders gives a dataset without labels.
- First-level folders named like splits (`train/`, `validation/` or `val/`, `test/`: datasets' `SPLIT_KEYWORDS`)
  become the dataset's splits, with the class folders below them (`scans/train/pneumonia/x.dcm`).
- DICOM files become one volume only when they are slices of one volume (`medical_io.is_one_volume`: one series,
  same size and orientation, distinct positions); volumes (series, NIfTI) and multi-frame DICOMs expand into 2-D
  slices along `slice_axis` every `slice_stride`.
- Every row stores the reader's pixels, re-encoded losslessly (uint8/uint16 PNG, int16/float32 TIFF): modality
  values for DICOM and NIfTI, decoded pixels for PNG/JPEG/TIFF. No file is stored byte for byte, so no DICOM header,
  PNG text chunk or EXIF block reaches the dataset. Beside them: the DICOM VOI module as DICOM JSON (`voi`), so a
  row gives the same `pixel_values` as its file. Columns: image, label or labels, source_file, slice_index,
  modality, pixel_spacing, voi, photometric_interpretation (+ `phi` with `include_phi=True`; patient identifiers
  are dropped otherwise).
- `source_file` is the path relative to `data_dir`, scrubbed by the rule `mednet predict` and the demo use
  (`mednet_hf.phi.scrub_path`): a DICOM UID in a file or folder name (files named after their SOPInstanceUID,
  folders after their StudyInstanceUID/SeriesInstanceUID, as PACS exports do) becomes `uid-` and the first 16 hex
  digits of the UID's SHA-256 (stable across builds, distinct per UID, not the UID), and a path part holding the
  file's PatientName or PatientID becomes `phi-<hash>`. Class names taken from folders have their UIDs replaced
  the same way.
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
from datasets.data_files import SPLIT_KEYWORDS

from mednet_hf.medical_files import FileItem, files_under, group_files
from mednet_hf.medical_image import MedicalImage, MedicalImageError, MedicalVolume
from mednet_hf.medical_io import images_of, reader_for
from mednet_hf.phi import public_name, scrub_path

from ._common import DataFileError, MedicalBuilder

logger = logging.getLogger(__name__)


@dataclass
class MedicalImageFolderConfig(datasets.BuilderConfig):
    labels_csv: str | None = None
    slice_axis: int = 2
    slice_stride: int = 1
    include_phi: bool = False
    on_error: str = "fail"
    drop_labels: bool = False
    volumes: bool = False  # rows are whole volumes (NIfTI files, DICOM series) for MedNet-3D, not 2-D slices

    def __post_init__(self):
        super().__post_init__()
        if self.on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {self.on_error!r}")
        if self.slice_stride < 1 or self.slice_axis not in (0, 1, 2):
            raise ValueError(f"need slice_stride >= 1 and slice_axis in 0, 1, 2 (got {self.slice_stride}, {self.slice_axis})")


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
        for path in files_under(root):  # the one walk `mednet predict` uses too
            (files.__setitem__(path.relative_to(root).as_posix(), path) if reader_for(path) else ignored.append(path.name))
        if ignored:
            logger.info("%s: %d file(s) that are not images were ignored: %s", root, len(ignored), ignored[:20])
        if not files:
            raise DataFileError(f"{root}: no DICOM, NIfTI, PNG, JPEG or TIFF files")

        # train/, validation/, test/ (and datasets' other split names) as the first level make splits, as in
        # datasets' own imagefolder; the class folders are then one level below.
        split_of = {word: split for split, words in SPLIT_KEYWORDS.items() for word in words}
        tops = {rel.split("/", 1)[0].lower() for rel in files}
        by_split = all("/" in rel for rel in files) and tops <= set(split_of)
        inside = {rel: rel.split("/", 1)[1] if by_split else rel for rel in files}

        multi_label = False
        if self.config.drop_labels:
            labels = None
        elif self.config.labels_csv:
            labels, multi_label = self._labels_from_csv(root, files)
            left_out = [rel for rel in files if rel not in labels]
            if left_out:  # a CSV may choose a subset, but the user must see what was left out
                logger.warning("%s lists %d of the %d images under %s; the other %d are left out of the dataset: %s",
                               self.config.labels_csv, len(files) - len(left_out), len(files), root, len(left_out),
                               left_out[:20])
            files = {k: v for k, v in files.items() if k in labels}
        elif any("/" in rest for rest in inside.values()):
            loose = [rel for rel, rest in inside.items() if "/" not in rest]
            if loose:  # they would silently turn folder labels off for the whole set
                raise DataFileError(
                    f"{root}: {len(loose)} image(s) lie beside the class sub-folders ({len(files) - len(loose)} images), "
                    f"so they have no label: {loose[:20]}. Move them into a class folder, give every image a label in "
                    "labels_csv, or pass drop_labels=True to build the dataset without labels."
                )
            labels = {rel: public_name(inside[rel].split("/", 1)[0]) for rel in files}
        else:
            labels = None

        features = {"volume": datasets.Nifti()} if self.config.volumes else {"image": datasets.Image()}
        if multi_label:
            features["labels"] = datasets.Sequence(datasets.ClassLabel(names=multi_label))
        elif labels is not None:
            features["label"] = datasets.ClassLabel(names=sorted(set(labels.values())))
        if self.config.volumes:  # how the reader oriented the array, and each DICOM slice's own VOI
            features.update(source_file=datasets.Value("string"), modality=datasets.Value("string"),
                            orientation=datasets.Value("string"), slice_voi=datasets.Value("string"),
                            photometric_interpretation=datasets.Value("string"))
        else:
            features.update(
                source_file=datasets.Value("string"),
                slice_index=datasets.Value("int32"),
                modality=datasets.Value("string"),
                pixel_spacing=datasets.Sequence(datasets.Value("float32"), length=2),
                voi=datasets.Value("string"),
                photometric_interpretation=datasets.Value("string"),
            )
        if self.config.include_phi:
            features["phi"] = datasets.Value("string")
        self.info.features = datasets.Features(features)
        if not by_split:
            return [datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"root": root, "files": files, "labels": labels})]
        parts = defaultdict(dict)
        for rel, path in files.items():
            parts[split_of[rel.split("/", 1)[0].lower()]][rel] = path
        return [datasets.SplitGenerator(name=split, gen_kwargs={"root": root, "files": parts[split], "labels": labels})
                for split in SPLIT_KEYWORDS if split in parts]

    def _volume_row(self, shown: str, item: FileItem, label):
        """One volume as a row: the reader's array (in its own dtype) in a NIfTI image built here, so no header of
        the file travels, with the voxel spacing in its header."""
        import nibabel
        import numpy as np

        volume = item.read(include_phi=False)
        if not isinstance(volume, MedicalVolume):
            return None
        image = nibabel.Nifti1Image(volume.array, affine=np.diag([*volume.spacing, 1.0]))
        row = {"volume": {"bytes": image.to_bytes(), "path": None}, "source_file": shown, "modality": volume.modality,
               "orientation": volume.orientation, "photometric_interpretation": volume.photometric_interpretation,
               "slice_voi": json.dumps(volume.slice_voi, sort_keys=True) if volume.slice_voi else None}
        if label is not None:
            row["labels" if isinstance(label, list) else "label"] = label
        return row

    def _slices(self, item: FileItem):
        """(slice_index, MedicalImage) for one item, read through the reader table."""
        yield from images_of(item.read(include_phi=self.config.include_phi), self.config.slice_axis, self.config.slice_stride)

    def _row(self, shown: str, index, image: MedicalImage, label):
        row = {
            "image": image.pixels,
            "source_file": shown,
            "slice_index": index,
            "modality": image.modality,
            "pixel_spacing": list(image.pixel_spacing) if image.pixel_spacing else None,
            "voi": json.dumps(image.voi, sort_keys=True) if image.voi else None,
            "photometric_interpretation": image.photometric_interpretation,
        }
        if self.config.include_phi:
            row["phi"] = json.dumps(image.phi) if image.phi else None
        if label is not None:
            row["labels" if isinstance(label, list) else "label"] = label
        return row

    def _generate_examples(self, root: Path, files: dict[str, Path], labels):
        errors, key, not_volumes = [], 0, []
        for item in group_files(list(files.values()), root):  # DICOM slices of one volume become one series item
            rel = item.path.relative_to(root).as_posix()  # a series: its folder ("." at the top)
            label = None if labels is None else labels.get(rel)
            if labels is not None and label is None:  # a series: its label is its folder's
                label = next(v for k, v in labels.items() if k.startswith(f"{rel}/"))
            # The path relative to data_dir, with what identifies a patient scrubbed as `mednet predict` does it:
            # DICOM UIDs, and path parts holding the file's PatientName or PatientID.
            shown = scrub_path(rel, item.phi)
            try:
                if self.config.volumes:
                    if item.reader not in ("nifti", "dicom_series"):
                        not_volumes.append(shown)  # a 2-D image is no volume: left out, and said below
                        continue
                    rows = [self._volume_row(shown, item, label)]
                else:
                    rows = [self._row(shown, index, content, label) for index, content in self._slices(item)]
            except (MedicalImageError, OSError) as e:
                errors.append((shown, scrub_path(str(e), item.phi)))
                continue
            for row in rows:
                yield key, row
                key += 1
        if not_volumes:
            logger.warning("volumes=True: %d 2-D file(s) under %s left out (not a NIfTI volume or a DICOM series), "
                           "e.g. %s", len(not_volumes), root, ", ".join(not_volumes[:3]))
            if key == 0 and not errors:
                raise DataFileError(f"volumes=True: no NIfTI volume or DICOM series under {root}, only "
                                    f"{len(not_volumes)} 2-D file(s) (e.g. {not_volumes[0]})")
        if errors:
            listing = "\n".join(f"  {rel}: {why}" for rel, why in errors)
            message = f"{len(errors)} unreadable file(s) under {root}:\n{listing}"
            if self.config.on_error == "fail":
                raise DataFileError(message + "\n(pass on_error='skip' to build the dataset without them)")
            logger.warning(message)
