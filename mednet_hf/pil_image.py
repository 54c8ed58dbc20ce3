"""PIL images → pixels: the one rule for PIL modes, used by the readers and by a dataset push alike.

`pil_pixels` decides what a PIL image's pixels are: turned upright by its EXIF orientation (as transformers'
`load_image` and `datasets` do), palette and other modes converted to RGB (or L for 1-bit), alpha dropped (it
carries no intensity, so a pushed dataset row and the file give the same pixels), 16-bit and float kept as they are.
"""

from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

from .medical_image import MedicalImage, MedicalImageError, MedicalVolume, storable

# `image.info` key under which the DICOM PIL plugin hands the full-precision image to the processor.
PIL_INFO_KEY = "mednet_medical_image"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_CONVERTED = ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La")  # not plain gray/RGB arrays


def pil_pixels(image: PIL.Image.Image, source: str) -> np.ndarray:
    """`(H, W)` or `(H, W, 3)` pixels of a PIL image by the rule above; NaN or infinite float pixels are refused."""
    image = PIL.ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in _CONVERTED:  # through RGBA where the mode has alpha (PIL converts those only so), dropped below
        image = image.convert("RGBA" if "A" in mode or "a" in mode else "RGB" if mode != "1" else "L")
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):  # LA / RGBA: the alpha channel carries no intensity
        pixels = pixels[..., :-1]
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise MedicalImageError(f"{source}: {int((~np.isfinite(pixels)).sum())} pixel(s) are NaN or infinite")
    return pixels


def from_pil(image: PIL.Image.Image, source: str) -> "MedicalImage | MedicalVolume":
    """A PIL image → `MedicalImage` (`pil_pixels`), so a path and its decoded image agree."""
    if PIL_INFO_KEY in image.info:  # a DICOM/NIfTI opened through the PIL plugin: the full-precision content
        return image.info[PIL_INFO_KEY]
    pixels = pil_pixels(image, source)
    return MedicalImage(pixels=storable(pixels), photometric_interpretation="RGB" if pixels.ndim == 3 else "MONOCHROME2",
                        source=source)


def read_pil(path: Path) -> MedicalImage:
    try:
        with PIL.Image.open(path) as pil:
            pil.load()  # decode fully: a truncated file fails here, not in a training run
            return from_pil(pil, str(path))
    except PIL.Image.DecompressionBombError as e:
        raise MedicalImageError(f"{path}: {e}") from e
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as e:
        raise MedicalImageError(f"{path}: not an image file that PIL, pydicom or nibabel can read ({e})") from e


__all__ = ["IMAGE_SUFFIXES", "PIL_INFO_KEY", "from_pil", "pil_pixels", "read_pil"]
