"""MedNet for the Hugging Face ecosystem. Importing the package registers MedNet with the transformers Auto
classes, DICOM with PIL, and the bundled `mednet/gray` and `mednet/color` checkpoints with the Hugging Face cache
(once; see `mednet_hf.bundled`); nothing else happens here."""

import warnings

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)

from .bundled import install_bundled
from .configuration_mednet import MedNetConfig
from .image_processing_mednet import MedNetImageProcessor, MedNetImageProcessorPil
from .intensity import WINDOW_PRESETS
from .medical_io import (
    MedicalImage,
    MedicalImageError,
    MedicalVolume,
    read_dicom,
    read_dicom_series,
    read_nifti,
    to_medical_image,
)
from .modeling_mednet import MedNetBackbone, MedNetForImageClassification, MedNetModel, MedNetPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(MedNetConfig.model_type, MedNetConfig, exist_ok=True)
AutoModel.register(MedNetConfig, MedNetModel, exist_ok=True)
AutoModelForImageClassification.register(MedNetConfig, MedNetForImageClassification, exist_ok=True)
AutoBackbone.register(MedNetConfig, MedNetBackbone, exist_ok=True)
AutoImageProcessor.register(
    MedNetConfig,
    image_processor_classes={"torchvision": MedNetImageProcessor, "pil": MedNetImageProcessorPil},
    exist_ok=True,
)
# Saved checkpoints carry an auto_map and the modeling files, so they load without this package
# (`trust_remote_code=True`).
MedNetConfig.register_for_auto_class()
MedNetModel.register_for_auto_class("AutoModel")
MedNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")
MedNetBackbone.register_for_auto_class("AutoBackbone")
MedNetImageProcessor.register_for_auto_class("AutoImageProcessor")
MedNetImageProcessorPil.register_for_auto_class("AutoImageProcessor")
# `from_pretrained("mednet/gray")` resolves offline through the cache; a cache that has them already is left alone.
try:
    install_bundled()
except OSError as e:  # a read-only cache must not make the package unimportable
    warnings.warn(f"the bundled MedNet checkpoints could not be placed in the Hugging Face cache: {e}", stacklevel=2)

__all__ = [
    "MedNetBackbone",
    "MedNetConfig",
    "MedNetForImageClassification",
    "MedNetImageProcessor",
    "MedNetImageProcessorPil",
    "MedNetModel",
    "MedNetPreTrainedModel",
    "MedicalImage",
    "MedicalImageError",
    "MedicalVolume",
    "WINDOW_PRESETS",
    "read_dicom",
    "read_dicom_series",
    "read_nifti",
    "to_medical_image",
]
