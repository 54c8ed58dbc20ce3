"""The MedNet intensity convention: the one rule every input follows, in the processor, the datasets and training.

1. **Modality values.** DICOM pixels go through the Modality LUT (RescaleSlope/RescaleIntercept), so CT is in
   Hounsfield units. Every other input (PNG/JPEG/TIFF, NIfTI, arrays, tensors) is taken as stored.
2. **Unit range.** Values are mapped to [0, 1] by the processor's `intensity` mode:

   - `"window"`: linear window, `center - width/2` → 0 and `center + width/2` → 1, clipped. The window is the
     `window` argument (a preset name below or `(center, width)`), else the DICOM VOI LUT, else the DICOM
     WindowCenter/WindowWidth.
   - `"minmax"`: the image's minimum → 0, maximum → 1 (a constant image becomes 0).
   - `"percentile"`: like min–max between the `percentiles` (default 0.5 and 99.5), clipped.
   - `"none"`: the input is already in [0, 1]; values outside are an error.
   - `"auto"` (default): `"window"` when a window is known; else uint8 data ÷ 255; else float data already within
     [0, 1] as it is; else `"minmax"`.
3. **Polarity.** DICOM MONOCHROME1 images are inverted (`1 - x`), so 1 is always the brightest pixel.
4. **Channels.** A gray image for a color model (3 channels) is replicated; a color image for a gray model is
   converted to luma, `0.299 R + 0.587 G + 0.114 B` (ITU-R BT.601, PIL's rule); alpha is dropped.

After this the processor resizes (short side to `image_size / crop_pct`, bilinear, antialiased), center-crops to
`image_size` and normalises with the variant's mean and std. Empty images and NaN/inf values are errors.
"""

import logging

import numpy as np

from .medical_io import MedicalImage, MedicalImageError

logger = logging.getLogger(__name__)

# (center, width) in Hounsfield units; the usual radiology presets.
WINDOW_PRESETS = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (50.0, 400.0),
}
INTENSITY_MODES = ("auto", "window", "minmax", "percentile", "none")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def resolve_window(window) -> tuple[float, float] | None:
    """A preset name or `(center, width)` → `(center, width)`; `None` stays `None`."""
    if window is None:
        return None
    if isinstance(window, str):
        if window.lower() not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {window!r}; choose one of {sorted(WINDOW_PRESETS)} or pass (center, width)")
        return WINDOW_PRESETS[window.lower()]
    center, width = (float(v) for v in window)
    if not width > 0:
        raise ValueError(f"window width must be positive, got (center={center}, width={width})")
    return center, width


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    low = center - width / 2.0
    return np.clip((values - low) / width, 0.0, 1.0)


def _check_finite(pixels: np.ndarray, source: str) -> None:
    if pixels.size == 0 or 0 in pixels.shape:
        raise MedicalImageError(f"{source}: empty image (shape {pixels.shape})")
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        bad = int((~np.isfinite(pixels)).sum())
        raise MedicalImageError(f"{source}: {bad} pixel(s) are NaN or infinite; replace them before processing")


def _unit_range(image: MedicalImage, intensity: str, window, percentiles) -> np.ndarray:
    pixels, source = image.pixels, image.source
    values = pixels.astype(np.float32, copy=False)
    explicit = resolve_window(window)
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    if intensity in ("auto", "window"):
        if explicit is not None:
            if isinstance(window, str) and image.modality not in (None, "CT"):
                logger.warning("window preset %r is in Hounsfield units but %s is %s", window, source, image.modality)
            return apply_window(values, *explicit)
        if image.voi_lut is not None:
            first, table = image.voi_lut
            index = np.clip(np.rint(values) - first, 0, len(table) - 1).astype(np.int64)
            return table[index]
        if image.window is not None:
            return apply_window(values, *image.window)
        if intensity == "window":
            raise MedicalImageError(f"{source}: intensity='window' but no window was given and the header has none")
        if pixels.dtype == np.uint8:
            return values / 255.0
        if pixels.dtype.kind == "f" and values.min() >= 0.0 and values.max() <= 1.0:
            return values
        intensity = "minmax"
    if intensity == "none":
        if values.min() < 0.0 or values.max() > 1.0:
            raise MedicalImageError(f"{source}: intensity='none' needs values in [0, 1], got [{values.min()}, {values.max()}]")
        return values
    if intensity == "percentile":
        low, high = np.percentile(values, percentiles)
    else:
        low, high = values.min(), values.max()
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def to_unit_range(
    image: MedicalImage,
    num_channels: int,
    intensity: str = "auto",
    window=None,
    percentiles=(0.5, 99.5),
) -> np.ndarray:
    """Apply the convention to one 2-D `MedicalImage`: returns float32 `(num_channels, H, W)` in [0, 1]."""
    if image.num_frames != 1:
        raise MedicalImageError(f"{image.source}: pick a frame first (MedicalImage.frame)")
    _check_finite(image.pixels, image.source)
    # Always a new array: the result must not alias the caller's (possibly read-only) pixels.
    unit = np.array(_unit_range(image, intensity, window, percentiles), dtype=np.float32)
    if image.photometric_interpretation == "MONOCHROME1":
        unit = 1.0 - unit
    if unit.ndim == 2:
        unit = unit[None]
    else:
        unit = np.moveaxis(unit, -1, 0)
    if num_channels == unit.shape[0]:
        return np.ascontiguousarray(unit)
    if num_channels == 3 and unit.shape[0] == 1:
        return np.repeat(unit, 3, axis=0)
    if num_channels == 1 and unit.shape[0] == 3:
        return np.tensordot(LUMA_WEIGHTS, unit, axes=1)[None]
    raise MedicalImageError(f"{image.source}: cannot turn {unit.shape[0]} channel(s) into {num_channels}")


__all__ = ["INTENSITY_MODES", "WINDOW_PRESETS", "apply_window", "resolve_window", "to_unit_range"]
