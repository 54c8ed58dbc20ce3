"""The reader table: every path the package reads goes through `READERS`, and any input becomes a `MedicalImage`.

`READERS` lists one reader per kind of input, in the style of MONAI's `ImageReader`/`LoadImage`: a DICOM series
folder, a NIfTI volume, a DICOM file (recognised by its content, whatever its name), and everything PIL opens
(PNG, JPEG, TIFF, BMP). Each has `accepts(path)` and `read(path)`. The processor, the PIL plugin, the image-folder
builder and `mednet predict` all go through `reader_for` / `read_path`, so a new format is one reader module plus
one entry here. Whatever a reader raises leaves the table as a `MedicalImageError` (a `ValueError`) naming the file.

The readers decide nothing about intensity (see `intensity.py`): they return pixels after the DICOM Modality LUT
(RescaleSlope/Intercept, through pydicom) in the smallest dtype that holds them exactly, with what the intensity step
needs (photometric interpretation, the DICOM VOI module as DICOM JSON). Each job has its own module, imported flat
(`from .x import`, which transformers copies with a checkpoint's remote code):

- `medical_image.py`: the types `MedicalImage`, `MedicalVolume` and `MedicalImageError`;
- `phi.py`: which header fields identify a patient, and how paths are scrubbed;
- `dicom.py`, `dicom_series.py`, `nifti.py`, `pil_image.py`: the readers.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from .dicom import is_dicom_file, read_dicom, read_dicom_header
from .dicom_series import group_volumes, is_one_volume, read_dicom_series
from .medical_image import MedicalImage, MedicalImageError, MedicalVolume, storable
from .nifti import NIFTI_SUFFIXES, read_nifti
from .phi import PHI_KEYWORDS
from .pil_image import IMAGE_SUFFIXES, PIL_INFO_KEY, from_pil, read_pil


def images_of(content: "MedicalImage | MedicalVolume", axis: int = 2, stride: int = 1):
    """Every 2-D image of a read file, as `(index, MedicalImage)`: the slices of a volume along `axis` and the
    frames of a multi-frame image (every `stride`-th), or `(None, image)` for a single image."""
    if isinstance(content, MedicalVolume):
        for index in range(0, content.num_slices(axis), stride):
            yield index, content.slice(index, axis)
    elif content.num_frames > 1:
        for index in range(0, content.num_frames, stride):
            yield index, content.frame(index)
    else:
        yield None, content


# ---------------------------------------------------------------------------------------------------- the table


def named_errors(source: str, read: Callable[[], object]):
    """`read()`, with anything it raises turned into a `MedicalImageError` that names `source`: the table's one
    wrapper. A reader's own errors already name the file; a library's raw error (pydicom on a palette image without
    its palette, a header number that is not a number) does not."""
    try:
        return read()
    except MedicalImageError:
        raise
    except MemoryError as e:
        raise MedicalImageError(f"{source}: too large to read into memory ({e})") from e
    except Exception as e:
        raise MedicalImageError(f"{source}: cannot be read ({type(e).__name__}: {str(e)[:300]})") from e


@dataclass(frozen=True)
class ImageReader:
    """One kind of input: `accepts(path)` says whether this reader takes the path; `read(path, include_phi)` reads
    it (with `load`) into a `MedicalImage` (2-D, possibly multi-frame) or a `MedicalVolume`, every error named."""

    name: str
    accepts: Callable[[Path], bool]
    load: Callable[..., "MedicalImage | MedicalVolume"]
    is_volume: bool = False

    def read(self, path, include_phi: bool = False) -> "MedicalImage | MedicalVolume":
        return named_errors(str(path), lambda: self.load(Path(path), include_phi=include_phi))


READERS = (
    ImageReader("dicom_series", lambda p: p.is_dir(), lambda p, include_phi=False: read_dicom_series(p, include_phi), True),
    ImageReader("nifti", lambda p: p.name.lower().endswith(NIFTI_SUFFIXES), lambda p, include_phi=False: read_nifti(p), True),
    # Before PIL: a DICOM is read as DICOM whatever it is called (an `export_0001.png` may hold a header).
    ImageReader("dicom", lambda p: p.is_file() and is_dicom_file(p), lambda p, include_phi=False: read_dicom(p, include_phi)),
    ImageReader("image", lambda p: p.name.lower().endswith(IMAGE_SUFFIXES), lambda p, include_phi=False: read_pil(p)),
)


def reader_for(path) -> ImageReader | None:
    """The first reader in `READERS` that accepts `path`, or `None` (not a medical image this package reads)."""
    path = Path(path)
    return next((reader for reader in READERS if reader.accepts(path)), None)


def read_path(path, include_phi: bool = False) -> MedicalImage | MedicalVolume:
    """Read any supported path through the reader table."""
    text = str(path)
    if "://" in text:
        raise MedicalImageError(f"{text}: URLs are not fetched; download the file and pass its path")
    path = Path(path)
    if not path.exists():
        raise MedicalImageError(f"{path}: no such file or folder")
    reader = reader_for(path)
    if reader is None:
        # Unknown suffix: PIL may still know the format (e.g. .gif, .webp).
        return named_errors(str(path), lambda: read_pil(path))
    return reader.read(path, include_phi=include_phi)


# ---------------------------------------------------------------------------------------------------- any input


def _from_array(array: np.ndarray, source: str) -> MedicalImage:
    if array.dtype == bool:
        array = array.astype(np.float32)  # a mask: False → 0, True → 1 (not 1/255)
    if array.dtype.kind not in "uif":
        raise MedicalImageError(f"{source}: unsupported dtype {array.dtype}; pass integer or floating-point pixels")
    if array.ndim == 3:
        first, last = array.shape[0], array.shape[-1]
        if last in (1, 3, 4):
            pass  # (H, W, C)
        elif first in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # (C, H, W) → (H, W, C)
        else:
            raise MedicalImageError(
                f"{source}: a 3-D array of shape {array.shape} has no channel axis of size 1, 3 or 4 first or last; "
                "pass one 2-D slice of a volume (H, W), or (H, W, C) / (C, H, W) with C in 1, 3, 4"
            )
        if array.shape[-1] == 4:
            array = array[..., :3]  # RGBA: drop alpha
        if array.shape[-1] == 1:
            array = array[..., 0]
    elif array.ndim != 2:
        raise MedicalImageError(
            f"{source}: an image must be 2-D (H, W) or 3-D (H, W, C) / (C, H, W); got {array.ndim}-D shape {array.shape}"
        )
    return MedicalImage(pixels=array, photometric_interpretation="RGB" if array.ndim == 3 else "MONOCHROME2", source=source)


def to_medical_image(
    image,
    frame: int | None = None,
    slice_index: int | None = None,
    slice_axis: int = 2,
    include_phi: bool = False,
) -> MedicalImage:
    """Turn any supported input into one 2-D `MedicalImage`.

    Accepts a path (anything `READERS` reads), a `pydicom.Dataset`, a PIL image, a numpy array or torch tensor
    (`HxW`, `HxWxC`, `CxHxW`), or a `MedicalImage`/`MedicalVolume`. Multi-frame DICOMs give frame `frame` and
    volumes slice `slice_index` along `slice_axis` (default for both: the middle one).
    """
    if isinstance(image, (str, os.PathLike)):
        image = read_path(image, include_phi=include_phi)
    elif isinstance(image, PIL.Image.Image):
        image = from_pil(image, getattr(image, "filename", "") or f"<PIL {image.mode} image>")
    if isinstance(image, MedicalVolume):
        return image.slice(slice_index, slice_axis)
    if isinstance(image, MedicalImage):
        return image.frame(frame)
    if type(image).__module__.startswith("pydicom"):
        name = getattr(image, "filename", None) or "<pydicom.Dataset>"
        return named_errors(str(name), lambda: read_dicom(image, include_phi)).frame(frame)
    if type(image).__module__.startswith("torch"):
        tensor = image.detach().cpu()
        if tensor.dtype.is_floating_point and tensor.element_size() < 4:  # numpy has no bfloat16
            tensor = tensor.float()
        return _from_array(tensor.numpy(), f"<tensor {tuple(tensor.shape)}>")
    if isinstance(image, np.ndarray):
        return _from_array(image, f"<array {image.shape} {image.dtype}>")
    raise MedicalImageError(f"unsupported input type {type(image).__name__}")


__all__ = [
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "PHI_KEYWORDS",
    "PIL_INFO_KEY",
    "READERS",
    "ImageReader",
    "MedicalImage",
    "MedicalImageError",
    "MedicalVolume",
    "from_pil",
    "group_volumes",
    "images_of",
    "is_dicom_file",
    "is_one_volume",
    "named_errors",
    "read_dicom",
    "read_dicom_header",
    "read_dicom_series",
    "read_nifti",
    "read_path",
    "reader_for",
    "storable",
    "to_medical_image",
]
