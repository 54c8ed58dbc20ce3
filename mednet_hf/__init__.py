"""MedNet for the Hugging Face ecosystem.

Importing the package does nothing heavy by itself, so `mednet_hf.builders` and the readers load without torch
and without touching the Hugging Face cache. What concerns transformers happens once transformers is imported, in
whichever order the two are imported:

- the MedNet configuration, models and processors register with the transformers Auto classes (each module
  registers its own classes when it is imported), and DICOM registers with PIL;
- the bundled `mednet/gray` and `mednet/color` checkpoints are placed in the Hugging Face cache, once (see
  `mednet_hf.bundled`), so `AutoModel.from_pretrained("mednet/gray")` works offline.

The public names below resolve on first use (PEP 562).
"""

import importlib

import wrapt

__version__ = "0.2.0"

_PUBLIC = {
    "MedNetConfig": "configuration_mednet",
    "MedNetPreTrainedModel": "modeling_mednet",
    "MedNetModel": "modeling_mednet",
    "MedNetForImageClassification": "modeling_mednet",
    "MedNetBackbone": "modeling_mednet",
    "MedNetImageProcessor": "image_processing_mednet",
    "MedNetImageProcessorPil": "image_processing_mednet",
    "WINDOW_PRESETS": "intensity",
    "MedicalImage": "medical_image",
    "MedicalImageError": "medical_image",
    "MedicalVolume": "medical_image",
    "read_dicom": "dicom",
    "read_dicom_series": "dicom_series",
    "read_nifti": "nifti",
    "read_path": "medical_io",
    "to_medical_image": "medical_io",
    "install_bundled": "bundled",
}


def _register(transformers_module) -> None:
    from .registration import register_with_transformers

    register_with_transformers(transformers_module)


wrapt.register_post_import_hook(_register, "transformers")


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = sorted(_PUBLIC)
