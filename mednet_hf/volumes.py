"""Volumes → MedNet-3D's input `(C, D, H, W)`: the processor's `slice_policy="volume"` path.

The data path, top to bottom, as for 2-D images:
    a NIfTI file, a DICOM series folder, a `MedicalVolume`, a `(D, H, W)` array (a MedMNIST-3D row)
        ──reader table──────▶ a volume in modality units, axes (depth, height, width), spacing in mm
        ──intensity─────────▶ [0, 1] by the convention (`intensity.volume_to_unit_range`), on the stored values
        ──resample──────────▶ the target voxel spacing (trilinear; nearest for label maps), where both are known
        ──crop / pad────────▶ the model's size, centred; padding is black (the convention's 0)
        ──channels, mean/std▶ (C, D, H, W)

Depth is the slice axis: D-slice `d` of a NIfTI volume is what `MedicalVolume.slice(d, axis=2)` gives (axial,
anterior up), and of a DICOM series its acquired slice `d`; so a volume and its 2-D slices agree.
"""

import numpy as np
import torch
import torch.nn.functional as F

from .intensity import volume_to_unit_range
from .medical_image import MedicalImageError, MedicalVolume
from .medical_io import read_path


def as_dhw(volume: MedicalVolume) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """A volume's array as (depth, height, width) and its spacing in the same order (None when unknown)."""
    array, spacing = volume.array, volume.spacing
    if array.ndim != 3:
        raise MedicalImageError(f"{volume.source}: a volume has 3 axes, got shape {array.shape}")
    if volume.orientation == "RAS":  # (x, y, z) → slices along z, each rotated as MedicalVolume.slice rotates it
        return np.ascontiguousarray(np.rot90(array, axes=(0, 1)).transpose(2, 0, 1)), (spacing[2], spacing[1], spacing[0])
    if volume.orientation == "DICOM":  # (rows, columns, slices)
        return np.ascontiguousarray(array.transpose(2, 0, 1)), (spacing[2], spacing[0], spacing[1])
    return array, None if volume.orientation == "array" else tuple(spacing)


def to_volume(value, source: str | None = None) -> MedicalVolume:
    """Any volume input → `MedicalVolume`: a path through the reader table, a `(D, H, W)` array or tensor (axes as
    given, spacing unknown), or a `MedicalVolume`."""
    if isinstance(value, MedicalVolume):
        return value
    if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
        content = read_path(value)
        if not isinstance(content, MedicalVolume):
            raise MedicalImageError(f"{value}: a 2-D image, not a volume; slice_policy='volume' reads NIfTI files and "
                                    "DICOM series folders (or pass a (D, H, W) array)")
        return content
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise MedicalImageError(f"{source or '<array>'}: a volume is (D, H, W), got shape {array.shape}")
    if array.dtype.kind not in "uifb":
        raise MedicalImageError(f"{source or '<array>'}: unsupported dtype {array.dtype}")
    return MedicalVolume(array=array.astype(np.float32) if array.dtype == bool else array, spacing=(1.0, 1.0, 1.0),
                         orientation="array", source=source or f"<array {array.shape} {array.dtype}>")


def resample(array: np.ndarray, spacing, target, label_map: bool = False) -> np.ndarray:
    """`array` (D, H, W) from voxel `spacing` to `target` spacing (mm): trilinear, or nearest for a label map."""
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(array.shape, spacing, target)]
    if list(array.shape) == size:
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    mode = "nearest-exact" if label_map else "trilinear"
    out = F.interpolate(tensor, size=size, mode=mode, **({} if label_map else {"align_corners": False}))
    return out[0, 0].numpy()


def crop_or_pad(array: np.ndarray, size) -> np.ndarray:
    """Centre crop or pad (with 0: black) `array` (..., D, H, W) to `size` (D, H, W)."""
    out = array
    for axis, wanted in zip(range(-3, 0), size):
        have = out.shape[axis]
        if have > wanted:
            start = (have - wanted) // 2
            out = np.take(out, range(start, start + wanted), axis=axis)
        elif have < wanted:
            before = (wanted - have) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, wanted - have - before)
            out = np.pad(out, pad)
    return out


def volume_pixel_values(value, *, size, num_channels: int, image_mean, image_std, spacing=None, intensity="auto",
                        window=None, percentiles=(0.5, 99.5), label_map: bool = False) -> torch.Tensor:
    """One volume input → `(num_channels, *size)` float32, normalised: the whole path above (`size=None` keeps the
    whole volume)."""
    volume = to_volume(value)
    array, voxel = as_dhw(volume)
    # The convention first, on the values as stored (uint8 ÷ 255 stays that rule; each DICOM slice has its VOI).
    unit = volume_to_unit_range(array, volume, intensity=intensity, window=window, percentiles=percentiles)
    if spacing is not None and voxel is not None:
        unit = resample(unit, voxel, spacing, label_map=label_map)
    unit = (crop_or_pad(unit, size) if size is not None else unit)[None]  # None: the whole volume (pretraining draws from it)
    if num_channels == 3:
        unit = np.repeat(unit, 3, axis=0)
    mean = np.asarray(image_mean, dtype=np.float32).reshape(-1, 1, 1, 1)
    std = np.asarray(image_std, dtype=np.float32).reshape(-1, 1, 1, 1)
    return torch.from_numpy(np.ascontiguousarray((unit - mean) / std, dtype=np.float32))


__all__ = ["as_dhw", "crop_or_pad", "resample", "to_volume", "volume_pixel_values"]
