"""Public medical datasets in one line, and the hook that feeds them to a MedNet processor.

    ds = load_medical_dataset("medmnist", "organamnist", size=28, data_dir="../shared/data/medmnist")
    ds = ds.with_transform(medical_transform(processor, ds["train"].features))
"""

import copy
import json

import numpy as np
import torch
from datasets import ClassLabel, DatasetDict, Features, Sequence
from datasets.exceptions import DatasetGenerationError

from .builders import BUILDERS
from .medical_image import MedicalImage
from .pil_image import from_pil


def _builder(name: str, config: str | None, size: int | None, data_dir, cache_dir, **config_kwargs):
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
    builder_cls = BUILDERS[name]
    if name == "medmnist":
        if config is None:
            raise ValueError("medmnist needs a subset, e.g. load_medical_dataset('medmnist', 'organamnist', size=28)")
        subset, _, named_size = config.partition("_")
        config_name = f"{subset}_{size or named_size or 28}"
        known = [c.name for c in builder_cls.BUILDER_CONFIGS]
        if config_name not in known:
            raise ValueError(f"unknown MedMNIST config {config_name!r}; subsets: {sorted({k.rsplit('_', 1)[0] for k in known})}, sizes 28/64/128/224 (3-D subsets: 28 and 64)")
        return builder_cls(config_name=config_name, data_dir=data_dir, cache_dir=cache_dir, **config_kwargs)
    if size is not None or config is not None:
        raise ValueError(f"{name} has no config or size to choose")
    return builder_cls(data_dir=data_dir, cache_dir=cache_dir, **config_kwargs)


def load_medical_dataset(
    name: str,
    config: str | None = None,
    data_dir=None,
    *,
    size: int | None = None,
    cache_dir=None,
    verification_mode=None,
    download_mode=None,
    **config_kwargs,
) -> DatasetDict:
    """Build (once; later calls read the cache) and return a `DatasetDict`.

    Args:
        name: `"medmnist"`, `"imagefolder"`, `"drive"` or `"chestxray14"`.
        config: the MedMNIST subset (`"organamnist"`, `"chestmnist"`, ...).
        data_dir: local files (required for the image folder, DRIVE and ChestX-ray14; optional for MedMNIST, which
            downloads the official file when it is unset).
        size: MedMNIST image size, 28 (default), 64, 128 or 224.
        verification_mode: `"no_checks"` accepts a MedMNIST file whose md5 differs from the official one.
        download_mode: `"force_redownload"` rebuilds a cached dataset (e.g. after an image folder changed).
        config_kwargs: builder options, e.g. `labels_csv`, `slice_axis`, `slice_stride`, `include_phi`, `on_error`
            for the image folder, `filename` for MedMNIST.
    """
    builder = _builder(name, config, size, data_dir, cache_dir, **config_kwargs)
    try:
        builder.download_and_prepare(verification_mode=verification_mode, download_mode=download_mode)
    except DatasetGenerationError as e:
        if isinstance(e.__cause__, ValueError):  # a builder's own error says what is wrong and what to do
            raise e.__cause__ from None
        raise
    return builder.as_dataset()


def load_dataset_spec(spec: str, data_dir=None, *, size: int | None = None, no_checks: bool = False,
                      options: dict | None = None) -> DatasetDict:
    """A dataset as the commands name it (`mednet finetune --dataset`, `mednet evaluate`, a study's task):
    `<builder>` or `<builder>:<config>`, e.g. `medmnist:pneumoniamnist` or `imagefolder`; `no_checks` accepts files
    whose md5 differs from the official one; `options` are builder options (`filename`, `on_error`, ...)."""
    name, _, config = str(spec).partition(":")
    return load_medical_dataset(name, config or None, data_dir, size=size,
                                verification_mode="no_checks" if no_checks else None, **(options or {}))


def class_names(features: Features, dataset: str) -> tuple[list[str], bool]:
    """A classification set's class names and whether it is multi-label (a `label` ClassLabel, or a `labels`
    Sequence of them); a clear error for a set without classes."""
    if isinstance(features.get("label"), ClassLabel):
        return list(features["label"].names), False
    if isinstance(features.get("labels"), Sequence) and isinstance(features["labels"].feature, ClassLabel):
        return list(features["labels"].feature.names), True
    raise ValueError(f"{dataset} has no class labels (a `label` or multi-label `labels` column): it is not a classification set")


def row_to_medical_image(batch: dict, index: int, image_column: str = "image") -> MedicalImage:
    """Rebuild the `MedicalImage` of row `index` of a batch: the decoded pixels, read as the processor reads a
    file (`medical_io.from_pil`), plus the columns the image-folder builder stores for the intensity step (other
    datasets lack them, and their defaults apply). A row and the file it came from give the same `pixel_values`."""

    def column(name: str):
        values = batch.get(name)
        return values[index] if values is not None else None

    source = str(column("source_file") or f"example {index}")
    image = copy.copy(from_pil(batch[image_column][index], source))
    if column("photometric_interpretation"):
        image.photometric_interpretation = column("photometric_interpretation")
    if column("modality"):
        image.modality = column("modality")
    if column("voi"):
        image.voi = json.loads(column("voi"))
    if column("pixel_spacing"):
        image.pixel_spacing = tuple(column("pixel_spacing"))
    return image


def row_to_medical_volume(batch: dict, index: int, column: str = "volume"):
    """The volume of row `index`, as the processor reads its file: a MedMNIST-3D `Array3D` row is a `(D, H, W)`
    array; an image-folder volume row is a NIfTI image of the reader's array (spacing in its header) plus the
    columns that say how the reader oriented it and each DICOM slice's VOI."""
    value = batch[column][index]
    if not hasattr(value, "dataobj"):  # Array3D
        return np.asarray(value)
    from .medical_image import MedicalVolume

    def cell(name: str):
        values = batch.get(name)
        return values[index] if values is not None else None

    slice_voi = json.loads(cell("slice_voi")) if cell("slice_voi") else None
    return MedicalVolume(array=np.asanyarray(value.dataobj), spacing=tuple(float(z) for z in value.header.get_zooms()[:3]),
                         orientation=cell("orientation") or "RAS", modality=cell("modality"),
                         photometric_interpretation=cell("photometric_interpretation") or "MONOCHROME2",
                         slice_voi=slice_voi, source=str(cell("source_file") or f"example {index}"))


def medical_transform(processor, features: Features, image_column: str | None = None):
    """A function for `Dataset.with_transform`: batches of rows → `pixel_values` (+ `labels`); rows of volumes (a
    `volume` column) → `(batch, C, D, H, W)` through the processor's volume path.

    Single labels stay class indices; multi-label `Sequence(ClassLabel)` columns become multi-hot float vectors,
    the targets `MedNetForImageClassification` expects for `problem_type="multi_label_classification"`.
    """
    label_column = "labels" if "labels" in features else "label" if "label" in features else None
    num_classes = features[label_column].feature.num_classes if isinstance(features.get(label_column), Sequence) else None
    image_column = image_column or ("volume" if "volume" in features else "image")

    def transform(batch: dict) -> dict:
        if image_column == "volume":
            images = [row_to_medical_volume(batch, i) for i in range(len(batch[image_column]))]
            out = processor(images, return_tensors="pt", slice_policy="volume")
        else:
            images = [row_to_medical_image(batch, i, image_column) for i in range(len(batch[image_column]))]
            out = processor(images, return_tensors="pt")
        if label_column is not None:
            if num_classes is None:
                out["labels"] = torch.tensor(batch[label_column], dtype=torch.long)
            else:
                hot = torch.zeros(len(images), num_classes)
                for row, positives in enumerate(batch[label_column]):
                    hot[row, positives] = 1.0
                out["labels"] = hot
        return dict(out)

    return transform


__all__ = ["BUILDERS", "class_names", "load_dataset_spec", "load_medical_dataset", "medical_transform", "row_to_medical_image",
           "row_to_medical_volume"]
