"""NIfTI files → a RAS+ `MedicalVolume` (nibabel)."""

import numpy as np

from .medical_image import MedicalImageError, MedicalVolume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def read_nifti(path, volume_index: int = 0) -> MedicalVolume:
    """Read a NIfTI file into a RAS+ volume; 4-D files give volume `volume_index` (default the first).
    NaN or infinite voxels are refused here, naming the file, not at training time."""
    import nibabel

    path = str(path)
    try:
        image = nibabel.as_closest_canonical(nibabel.load(path))
        data = image.get_fdata(dtype=np.float32)  # applies scl_slope / scl_inter
    except FileNotFoundError:
        raise MedicalImageError(f"{path}: no such file") from None
    except Exception as e:
        raise MedicalImageError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from e
    if data.ndim == 4:
        if not -data.shape[3] <= volume_index < data.shape[3]:
            raise MedicalImageError(f"{path}: volume {volume_index} requested, the file has {data.shape[3]}")
        data = data[..., volume_index]
    if data.ndim != 3:
        raise MedicalImageError(f"{path}: expected a 3-D or 4-D NIfTI volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise MedicalImageError(f"{path}: {int((~np.isfinite(data)).sum())} voxel(s) are NaN or infinite")
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return MedicalVolume(array=data, spacing=zooms, orientation="RAS", source=path)


__all__ = ["NIFTI_SUFFIXES", "read_nifti"]
