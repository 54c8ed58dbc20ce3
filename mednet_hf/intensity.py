"""The MedNet intensity convention: the one rule every input follows, in the processor, the PIL plugin, the
datasets and training.

1. **Modality values.** DICOM pixels go through the Modality LUT (pydicom's `apply_modality_lut`), so CT is in
   Hounsfield units. Every other input (PNG/JPEG/TIFF, NIfTI, arrays, tensors) is taken as stored.
2. **Unit range.** Values are mapped to [0, 1] by the processor's `intensity` mode:

   - `"window"`: an explicit `window` argument (a preset name below or `(center, width)`, in modality units) maps
     `center - width/2` → 0 and `center + width/2` → 1, clipped. The presets are radiology conventions in HU, not
     a DICOM VOI. Without one, the DICOM header's VOI applies through pydicom (`pydicom.pixels.apply_voi_lut`:
     the VOI LUT Sequence if present, else WindowCenter/WindowWidth with its VOILUTFunction, LINEAR by default),
     and its output range (DICOM PS3.3 C.11.2) is mapped linearly onto [0, 1].
   - `"minmax"`: the image's minimum → 0, maximum → 1 (a constant image becomes 0).
   - `"percentile"`: like min–max between the `percentiles` (default 0.5 and 99.5), clipped.
   - `"none"`: the input is already in [0, 1]; values outside are an error.
   - `"auto"` (default): `"window"` when a window is known (argument or header); else uint8 data ÷ 255; else float
     data already within [0, 1] as it is; else `"minmax"`.
3. **Polarity.** DICOM MONOCHROME1 images are inverted (`1 - x`), so 1 is always the brightest pixel.
4. **Channels.** A gray image for a color model (3 channels) is replicated. A color image for a gray model is
   converted to luma, `0.299 R + 0.587 G + 0.114 B` (ITU-R BT.601, PIL's rule), except that an RGB image whose
   three channels are equal is a gray image stored as RGB and keeps that gray exactly. Alpha is dropped. A gray
   model given 3-channel `pixel_values` (RGB pipelines such as transformers' `run_image_classification.py`) applies
   the same rule itself; since the weights sum to 1 and the gray variant normalises every channel with one
   mean/std, the luma of the normalised channels is the normalised luma.

After this the processor resizes (short side to `image_size / crop_pct`, bilinear, antialiased), center-crops to
`image_size` and normalises with the variant's mean and std. Empty images and NaN/inf values are errors.
"""

import logging

import numpy as np

from .medical_image import MedicalImage, MedicalImageError

# Far outside any window: pydicom sends such values to the bottom and top of the VOI output range.
_RANGE_PROBE = np.array([-1e300, 1e300])

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
    """A named or explicit HU window: `center - width/2` → 0, `center + width/2` → 1, clipped."""
    low = center - width / 2.0
    return np.clip((values - low) / width, 0.0, 1.0)


def apply_header_voi(values: np.ndarray, voi: dict, source: str) -> np.ndarray:
    """The DICOM header's VOI (DICOM JSON, see `MedicalImage.voi`) through pydicom, mapped onto [0, 1]."""
    import pydicom

    ds = pydicom.Dataset.from_json(voi)
    try:
        with np.errstate(over="ignore"):  # SIGMOID's exp() overflows to its asymptotes on the range probe
            out = pydicom.pixels.apply_voi_lut(values, ds)
            if "VOILUTSequence" in ds:  # the LUT wins (pydicom's prefer_lut); its output is [0, 2**bits - 1]
                low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
            else:
                low, high = pydicom.pixels.apply_voi_lut(_RANGE_PROBE, ds)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise MedicalImageError(f"{source}: the DICOM VOI (window / VOI LUT) cannot be applied: {e}") from e
    if not np.isfinite([low, high]).all() or high == low:
        raise MedicalImageError(f"{source}: the DICOM VOI output range [{low}, {high}] is empty; the header is wrong")
    return ((np.asarray(out, dtype=np.float64) - low) / (high - low)).astype(np.float32)


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
        if image.voi is not None:
            # Integers as int32: a dataset row may hold the file's int16 values as uint16 (the smallest dtype that
            # stores them), and pydicom's LUT subtracts a negative first mapped value in the array's own dtype.
            return apply_header_voi(pixels.astype(np.int32) if pixels.dtype.kind in "iu" else pixels, image.voi, source)
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
        if not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise MedicalImageError(f"{source}: percentiles must be (low, high) with 0 ≤ low < high ≤ 100, got {tuple(percentiles)}")
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
        if np.array_equal(unit[0], unit[1]) and np.array_equal(unit[0], unit[2]):
            return unit[:1].copy()  # gray stored as RGB (e.g. after PIL's convert("RGB")): keep it exact
        return np.tensordot(LUMA_WEIGHTS, unit, axes=1)[None]
    raise MedicalImageError(f"{image.source}: cannot turn {unit.shape[0]} channel(s) into {num_channels}")


def volume_to_unit_range(array: np.ndarray, volume, intensity: str = "auto", window=None,
                         percentiles=(0.5, 99.5)) -> np.ndarray:
    """The convention on a whole volume `array` (depth, height, width) of `volume` (a `MedicalVolume`: its modality,
    photometric interpretation, per-slice VOI and source): a window (explicit or a preset), else each acquired
    slice's own DICOM VOI, as for 2-D images; else uint8 ÷ 255, else [0, 1] floats as they are, else min–max (or the
    percentiles) over the whole volume, not slice by slice. MONOCHROME1 is inverted. float32 in [0, 1]."""
    from .medical_image import MedicalImage

    _check_finite(array, volume.source)
    slice_voi = volume.slice_voi if volume.slice_voi and len(volume.slice_voi) == array.shape[0] else None
    if slice_voi and intensity in ("auto", "window") and resolve_window(window) is None:
        unit = np.stack([
            _unit_range(MedicalImage(pixels=plane, voi=voi, modality=volume.modality, source=f"{volume.source} [slice {d}]"),
                        intensity, None, percentiles)
            for d, (plane, voi) in enumerate(zip(array, slice_voi))])
    else:
        unit = _unit_range(MedicalImage(pixels=array, modality=volume.modality, source=volume.source), intensity, window,
                           percentiles)
    unit = np.asarray(unit, dtype=np.float32)
    return 1.0 - unit if volume.photometric_interpretation == "MONOCHROME1" else unit


def to_uint8(unit):
    """[0, 1] values (a numpy array or a torch tensor) → uint8 0-255, rounded: the convention's one 8-bit form, for
    the pretraining cache, the PIL plugin's display image and the demo's view."""
    if isinstance(unit, np.ndarray):
        return np.clip(np.rint(unit * 255), 0, 255).astype(np.uint8)
    import torch

    return (unit * 255).round_().clamp_(0, 255).to(torch.uint8)


__all__ = ["INTENSITY_MODES", "WINDOW_PRESETS", "apply_header_voi", "apply_window", "resolve_window", "to_uint8",
           "to_unit_range", "volume_to_unit_range"]
