"""DRIVE (Digital Retinal Images for Vessel Extraction): 20 training and 20 test fundus photographs (565×584)
with manual vessel segmentations and field-of-view masks. Download needs a registration, so `data_dir` must hold
the unpacked `training/` and `testing/` folders.

Columns: `image` (RGB), `vessel_mask` and `fov_mask` (uint8 class-index masks, 0/1, the image's size), `id`.
"""

from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from ._common import DataFileError, MedicalBuilder, require_file

HOW_TO_GET = (
    "DRIVE needs a (free) registration: download it from https://drive.grand-challenge.org/ , unzip it, and pass "
    "the folder holding training/ and testing/ as data_dir."
)
CITATION = """@article{staal2004drive,
  title={Ridge-based vessel segmentation in color images of the retina},
  author={Staal, Joes and Abr{\\`a}moff, Michael D and Niemeijer, Meindert and Viergever, Max A and van Ginneken, Bram},
  journal={IEEE Transactions on Medical Imaging}, volume={23}, number={4}, pages={501--509}, year={2004}
}"""


def _binary_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return (np.asarray(image.convert("L")) > 127).astype(np.uint8)


class DRIVE(MedicalBuilder):
    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="DRIVE retinal vessel segmentation: fundus images, manual vessel masks, field-of-view masks.",
            features=datasets.Features(
                {
                    "image": datasets.Image(mode="RGB"),
                    "vessel_mask": datasets.Image(mode="L"),
                    "fov_mask": datasets.Image(mode="L"),
                    "id": datasets.Value("string"),
                }
            ),
            homepage="https://drive.grand-challenge.org/",
            citation=CITATION,
            license="DRIVE terms of use (research)",
        )

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise DataFileError(f"DRIVE needs data_dir. {HOW_TO_GET}")
        root = Path(self.config.data_dir)
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"folder": root / folder, "suffix": suffix})
            for split, folder, suffix in ((datasets.Split.TRAIN, "training", "training"), (datasets.Split.TEST, "testing", "test"))
        ]

    def _generate_examples(self, folder: Path, suffix: str):
        images = sorted((folder / "images").glob(f"*_{suffix}.tif"))
        if not images:
            raise DataFileError(f"{folder / 'images'}: no *_{suffix}.tif images. {HOW_TO_GET}")
        for image in images:
            number = image.name.split("_")[0]
            vessels = require_file(folder / "1st_manual" / f"{number}_manual1.gif", HOW_TO_GET)
            fov = require_file(folder / "mask" / f"{number}_{suffix}_mask.gif", HOW_TO_GET)
            yield number, {"image": str(image), "vessel_mask": _binary_mask(vessels), "fov_mask": _binary_mask(fov), "id": number}
