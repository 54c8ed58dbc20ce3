"""MedMNIST v3: the 12 2-D subsets at 28, 64, 128 and 224 px and the 6 3-D ones at 28³ and 64³ voxels as
`datasets` builder configs. 2-D rows hold an `image`; 3-D rows a `volume` (`Array3D`, uint8, depth × height × width
as the file stores it), which `MedNetImageProcessor(slice_policy="volume")` takes.

    MedMNIST(config_name="organamnist_28", data_dir="../shared/data/medmnist").download_and_prepare()
    MedMNIST(config_name="adrenalmnist3d_28", data_dir="../shared/data/medmnist3d").download_and_prepare()

Without `data_dir` the official file is downloaded from Zenodo; with it, the file must be there under its
official name (or `filename=`). Either way its md5 is checked against the official one.
"""

from pathlib import Path

import datasets
import numpy as np

from ._common import DataFileError, MedicalBuilder, require_file, verify_md5
from .medmnist_files import SUBSETS, SUBSETS_3D, ZENODO_RECORD, filename, url

SIZES = (28, 64, 128, 224)
SIZES_3D = (28, 64)
CITATION = """@article{medmnistv2,
  title={MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification},
  author={Yang, Jiancheng and Shi, Rui and Wei, Donglai and Liu, Zequan and Zhao, Lin and Ke, Bilian and Pfister, Hanspeter and Ni, Bingbing},
  journal={Scientific Data}, volume={10}, number={1}, pages={41}, year={2023}
}"""
MULTI_LABEL = "multi-label, binary-class"


class MedMNISTConfig(datasets.BuilderConfig):
    def __init__(self, subset: str = "pneumoniamnist", size: int = 28, filename: str | None = None, **kwargs):
        """`filename` overrides the official file name inside `data_dir` (e.g. a reduced subset file)."""
        super().__init__(name=f"{subset}_{size}", **kwargs)
        self.subset = subset
        self.size = size
        self.filename = filename


class MedMNIST(MedicalBuilder):
    BUILDER_CONFIG_CLASS = MedMNISTConfig
    BUILDER_CONFIGS = ([MedMNISTConfig(subset=s, size=z) for s in SUBSETS for z in SIZES]
                       + [MedMNISTConfig(subset=s, size=z) for s in SUBSETS_3D for z in SIZES_3D])
    DEFAULT_CONFIG_NAME = "pneumoniamnist_28"

    @property
    def _subset(self) -> dict:
        return SUBSETS.get(self.config.subset) or SUBSETS_3D[self.config.subset]

    @property
    def _is_3d(self) -> bool:
        return self.config.subset in SUBSETS_3D

    def _info(self) -> datasets.DatasetInfo:
        subset, size = self._subset, self.config.size
        mode = "L" if subset["n_channels"] == 1 else "RGB"
        if subset["task"] == MULTI_LABEL:
            target = {"labels": datasets.Sequence(datasets.ClassLabel(names=subset["labels"]))}
        else:
            target = {"label": datasets.ClassLabel(names=subset["labels"])}
        pixels = ({"volume": datasets.Array3D(shape=(size, size, size), dtype="uint8")} if self._is_3d
                  else {"image": datasets.Image(mode=mode)})
        return datasets.DatasetInfo(
            description=f"MedMNIST v3 {self.config.subset} at {size}{'³ voxels' if self._is_3d else ' px'} ({subset['task']}).",
            features=datasets.Features({**pixels, **target}),
            homepage="https://medmnist.com/",
            citation=CITATION,
            license=subset["license"],
        )

    def _split_generators(self, dl_manager):
        subset, size = self.config.subset, self.config.size
        official = filename(subset, size)
        if self.config.data_dir:
            path = require_file(
                Path(self.config.data_dir) / (self.config.filename or official),
                f"Download {url(subset, size)} (MedMNIST v3, {ZENODO_RECORD}) into {self.config.data_dir}, "
                "or leave data_dir unset to download it.",
            )
        else:
            path = Path(dl_manager.download(url(subset, size)))
        verify_md5(path, self._subset["md5"][size], self._verification_mode)
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"path": str(path), "prefix": prefix})
            for split, prefix in (
                (datasets.Split.TRAIN, "train"),
                (datasets.Split.VALIDATION, "val"),
                (datasets.Split.TEST, "test"),
            )
        ]

    def _generate_examples(self, path: str, prefix: str):
        multi_label = self._subset["task"] == MULTI_LABEL
        pixels = "volume" if self._is_3d else "image"
        with np.load(path) as npz:
            images, labels = npz[f"{prefix}_images"], npz[f"{prefix}_labels"]
        if labels.ndim == 1 and not multi_label:  # re-saved copies may keep (N,) labels instead of (N, 1)
            labels = labels[:, None]
        if labels.ndim != 2 or len(labels) != len(images):
            raise DataFileError(
                f"{path}: {prefix}_labels has shape {labels.shape} for {len(images)} images; MedMNIST files hold "
                f"(N, 1) class labels, or (N, classes) 0/1 columns for multi-label subsets"
            )
        for index, (image, label) in enumerate(zip(images, labels)):
            if multi_label:
                yield index, {pixels: image, "labels": np.flatnonzero(label).tolist()}
            else:
                yield index, {pixels: image, "label": int(label[0])}
