"""`datasets` builders for public medical image sets (datasets 5 runs no loading scripts: these are
`GeneratorBasedBuilder` classes, used directly or through `mednet_hf.data.load_medical_dataset`)."""

from ._common import DataFileError
from .chestxray14 import ChestXray14
from .drive import DRIVE
from .medical_imagefolder import MedicalImageFolder
from .medmnist import MedMNIST

__all__ = ["DRIVE", "ChestXray14", "DataFileError", "MedMNIST", "MedicalImageFolder"]
