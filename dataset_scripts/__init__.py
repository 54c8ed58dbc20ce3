"""`datasets` builders for public medical image sets (datasets 5 runs no loading scripts: these are
`GeneratorBasedBuilder` classes, used directly or through `mednet_hf.data.load_medical_dataset`).

`BUILDERS` is the registry every user of a dataset name reads (`load_medical_dataset`, `mednet data`, recipes'
sources, `mednet finetune --dataset`): a new builder is one module here plus one entry below.
"""

from ._common import DataFileError
from .chestxray14 import ChestXray14
from .drive import DRIVE
from .medical_imagefolder import MedicalImageFolder
from .medmnist import MedMNIST

BUILDERS = {"medmnist": MedMNIST, "imagefolder": MedicalImageFolder, "drive": DRIVE, "chestxray14": ChestXray14}

__all__ = ["BUILDERS", "DRIVE", "ChestXray14", "DataFileError", "MedMNIST", "MedicalImageFolder"]
