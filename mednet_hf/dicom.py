"""DICOM files → `MedicalImage` in modality units. pydicom owns the DICOM math: the Modality LUT
(`pydicom.pixels.apply_modality_lut`), palettes (`apply_color_lut`) and, later in `intensity.py`, the VOI LUT. This
module adds checks of the header values DICOM forbids and hands the VOI module on as DICOM JSON."""

import copy
import os
from pathlib import Path

import numpy as np

from .medical_image import MedicalImage, MedicalImageError, storable
from .phi import header_phi

# The header fields the VOI step reads (PS3.3 C.11.2, and the output range rules of C.11.1/C.11.2). None identifies
# a patient, so they travel with the pixels: in `MedicalImage.voi` and in dataset rows.
VOI_KEYWORDS = (
    "PhotometricInterpretation", "BitsStored", "PixelRepresentation", "RescaleSlope", "RescaleIntercept",
    "WindowCenter", "WindowWidth", "VOILUTFunction",
)

# DICOM objects whose pixels (if any) are not an image a model should see.
NON_IMAGE_MODALITIES = {
    "SEG": "a Segmentation object: its frames are label masks, not an image",
    "RTSTRUCT": "an RT Structure Set: it holds contours, not an image",
    "RTPLAN": "an RT Plan: it holds no image",
    "SR": "a Structured Report: it holds no image",
    "PR": "a Presentation State: it holds no image",
}

DICOM_DECODERS_HINT = (
    "install the decoders with `pip install 'mednet-hf[dicom]'` "
    "(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle)"
)


def _pydicom():
    import pydicom  # imported here: PNG/NIfTI-only users should not pay for it

    return pydicom


def is_dicom_file(path: Path) -> bool:
    """The DICM magic at byte 128 (whatever the name), or a `.dcm`/`.dicom` name (headless DICOM has no magic)."""
    try:
        with open(path, "rb") as f:
            if f.read(132)[128:132] == b"DICM":
                return True
    except OSError:
        return False
    return Path(path).suffix.lower() in (".dcm", ".dicom")


def _dcmread(source, stop_before_pixels: bool = False):
    pydicom = _pydicom()
    name = str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<DICOM stream>")
    try:
        ds = pydicom.dcmread(source, force=True, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError:
        raise MedicalImageError(f"{name}: no such file") from None
    except Exception as e:  # pydicom raises many types on truncated or foreign files
        raise MedicalImageError(f"{name}: not a readable DICOM file ({type(e).__name__}: {str(e)[:300]})") from e
    # `force=True` parses anything; a real DICOM object has at least a SOP class or a modality.
    if not any(k in ds for k in ("SOPClassUID", "Modality", "PixelData", "Rows")):
        raise MedicalImageError(f"{name}: not a DICOM file (no DICOM header found)")
    return ds, name


def read_dicom_header(path):
    """The header of a DICOM file, without its pixels (for grouping files into series)."""
    return _dcmread(path, stop_before_pixels=True)[0]


def _fill_missing_encoding(ds):
    """Headless DICOM (no File Meta) and old ACR-NEMA objects (no SamplesPerPixel or PhotometricInterpretation)
    still decode: take the encoding pydicom read them with, one sample per pixel, and MONOCHROME2 for gray."""
    pydicom = _pydicom()
    missing_ts = "TransferSyntaxUID" not in getattr(ds, "file_meta", {})
    missing_pi = "PhotometricInterpretation" not in ds
    missing_spp = "SamplesPerPixel" not in ds
    if not (missing_ts or missing_pi or missing_spp):
        return ds
    ds = copy.deepcopy(ds)
    if missing_ts:
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        if not hasattr(ds, "file_meta"):
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    if missing_spp:
        ds.SamplesPerPixel = 1
    if missing_pi:
        ds.PhotometricInterpretation = "MONOCHROME2" if int(ds.get("SamplesPerPixel", 1)) == 1 else "RGB"
    return ds


def _pixel_data_mismatch(ds) -> str | None:
    """For uncompressed pixel data, why it holds at least a whole frame more than the header's image size, or `None`.
    pydicom would read whole surplus frames as more frames (so BitsAllocated 8 on 16-bit data becomes two images):
    that is a wrong header, not an image."""
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_compressed or "PixelData" not in ds or not all(k in ds for k in ("Rows", "Columns", "BitsAllocated")):
        return None
    rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    samples, frames = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("NumberOfFrames", 1) or 1)
    frame_bytes = -(-rows * columns * samples * bits // 8)
    stored = len(ds.PixelData)
    if frame_bytes and stored - frame_bytes * frames >= frame_bytes:
        return (
            f"PixelData holds {stored} bytes but the header describes {frame_bytes * frames} (Rows {rows} × Columns "
            f"{columns} × SamplesPerPixel {samples} × NumberOfFrames {frames} × BitsAllocated {bits} / 8); "
            "BitsAllocated, the image size or NumberOfFrames in the header is wrong"
        )
    return None


def _decode(ds, name: str) -> np.ndarray:
    ts = ds.file_meta.TransferSyntaxUID
    mismatch = _pixel_data_mismatch(ds)
    if mismatch:  # too few bytes fail in pydicom below, as a truncated file
        raise MedicalImageError(f"{name}: {mismatch}")
    try:
        return ds.pixel_array
    except Exception as e:
        message = str(e)[:500]
        if ts.is_compressed and ("plugin" in message or "missing" in message or "dependenc" in message):
            raise MedicalImageError(
                f"{name}: pixel data is compressed with '{ts.name}' ({ts}) and no installed decoder handles it; "
                f"{DICOM_DECODERS_HINT}. pydicom said: {message}"
            ) from e
        raise MedicalImageError(f"{name}: pixel data cannot be decoded, the file may be truncated or corrupt ({message})") from e


def _lut_values(item, little_endian: bool) -> list[int]:
    """LUT Data as integers. Implicit-VR files leave its VR ambiguous (US or OW), and pydicom then keeps raw bytes."""
    data = item.LUTData
    if isinstance(data, bytes):
        return np.frombuffer(data, dtype="<u2" if little_endian else ">u2").tolist()
    return [int(v) for v in data] if hasattr(data, "__iter__") else [int(data)]


def _voi_module(ds, name: str) -> dict | None:
    """The VOI module (plus the fields that fix its output range) as DICOM JSON, or `None` when the header has no
    window and no VOI LUT. Header values the DICOM standard forbids are refused here, naming the file."""
    pydicom = _pydicom()
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    has_lut = "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0
    if not (has_window or has_lut):
        return None
    voi = pydicom.Dataset()
    for keyword in VOI_KEYWORDS:
        if keyword in ds and ds[keyword].value is not None:
            setattr(voi, keyword, ds[keyword].value)
    if has_window:
        widths = ds.WindowWidth if ds["WindowWidth"].VM > 1 else [ds.WindowWidth]
        width = float(widths[0])
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        if not np.isfinite(width) or width < (1 if function == "LINEAR" else 0) or width == 0:
            raise MedicalImageError(
                f"{name}: WindowWidth {widths[0]} is not a valid {function} window (DICOM requires a finite width "
                f"{'≥ 1' if function == 'LINEAR' else '> 0'}); fix the header or pass an explicit window"
            )
        if not np.isfinite(float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter)):
            raise MedicalImageError(f"{name}: WindowCenter {ds.WindowCenter} is not a number")
    if has_lut:
        little = ds.original_encoding[1] is not False
        items = []
        for item in ds.VOILUTSequence:
            new = pydicom.Dataset()
            descriptor = [int(v) for v in item.LUTDescriptor]
            # "US or SS": the first mapped value is signed for signed pixels; keep it so, or the JSON a dataset row
            # stores could not be read back (-2048 is no US)
            new.add_new("LUTDescriptor", "SS" if min(descriptor) < 0 else "US", descriptor)
            new.add_new("LUTData", "US", _lut_values(item, little))
            items.append(new)
        voi.VOILUTSequence = items
    if ds.get("ModalityLUTSequence"):  # only its bit depth matters once the modality LUT is applied
        item = pydicom.Dataset()
        item.LUTDescriptor = [int(v) for v in ds.ModalityLUTSequence[0].LUTDescriptor]
        voi.ModalityLUTSequence = [item]
    voi.setdefault("PhotometricInterpretation", "MONOCHROME2")
    return voi.to_json_dict()


def _modality_values(ds, pixels: np.ndarray, name: str) -> np.ndarray:
    """pydicom's Modality LUT; an identity rescale keeps the stored dtype, so it cannot change the intensity rule."""
    pydicom = _pydicom()
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and float(slope) == 0:
        raise MedicalImageError(f"{name}: RescaleSlope is 0, which maps every pixel to the intercept; the header is wrong")
    if slope is not None and not np.isfinite(float(slope)) or intercept is not None and not np.isfinite(float(intercept)):
        raise MedicalImageError(f"{name}: RescaleSlope/RescaleIntercept ({slope}, {intercept}) are not numbers")
    identity = (slope is None or float(slope) == 1) and (intercept is None or float(intercept) == 0)
    if identity and not ds.get("ModalityLUTSequence"):
        return pixels
    return storable(pydicom.pixels.apply_modality_lut(pixels, ds))


def _palette_rgb(rgb: np.ndarray, ds) -> np.ndarray:
    """pydicom's palette output spans the LUT entries' range, [0, 2**bits - 1]: as uint8 where that is exact (8-bit
    entries, and 16-bit ones holding 8-bit colours × 257, as most palettes do), else as float32 in [0, 1]. Either way
    the intensity rule then maps the palette's own range onto [0, 1], not the image's min–max."""
    bits = int(ds.get("RedPaletteColorLookupTableDescriptor", [0, 0, 16])[2])
    if rgb.dtype == np.uint8 or bits == 8:
        return rgb.astype(np.uint8)
    if not np.any(rgb % 257):
        return (rgb // 257).astype(np.uint8)
    return (rgb / float(2**bits - 1)).astype(np.float32)


def read_dicom(source, include_phi: bool = False) -> MedicalImage:
    """Read a DICOM file (path, file object or `pydicom.Dataset`) into a `MedicalImage` in modality units.

    Multi-frame images keep all frames (`MedicalImage.frame()` picks one). Palette color images get their palette
    (`pydicom.pixels.apply_color_lut`). Raises `MedicalImageError` for non-DICOM or truncated files, objects
    without an image (RTSTRUCT, SEG, ...), header values DICOM forbids, and compressed pixel data whose decoder is
    not installed.
    """
    pydicom = _pydicom()
    if isinstance(source, pydicom.Dataset):
        ds, name = source, getattr(source, "filename", None) or "<pydicom.Dataset>"
    else:
        ds, name = _dcmread(source)
    modality = str(ds.get("Modality", "")) or None
    if modality in NON_IMAGE_MODALITIES:
        raise MedicalImageError(f"{name}: Modality {modality} is {NON_IMAGE_MODALITIES[modality]}")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise MedicalImageError(f"{name}: has no pixel data (Modality {modality or 'unknown'})")
    ds = _fill_missing_encoding(ds)
    pixels = _decode(ds, name)
    photometric = str(ds.PhotometricInterpretation)
    voi = None
    if photometric == "PALETTE COLOR":
        pixels, photometric = _palette_rgb(pydicom.pixels.apply_color_lut(pixels, ds), ds), "RGB"
    elif int(ds.get("SamplesPerPixel", 1)) == 1:
        pixels = _modality_values(ds, pixels, name)
        voi = _voi_module(ds, name)
    else:
        photometric = "RGB"  # pydicom converts YBR_* to RGB when decoding
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return MedicalImage(
        pixels=storable(pixels),
        photometric_interpretation=photometric,
        modality=modality,
        voi=voi,
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
        num_frames=int(ds.get("NumberOfFrames", 1) or 1),
        source=name,
        phi=header_phi(ds) if include_phi else None,
    )


__all__ = ["NON_IMAGE_MODALITIES", "VOI_KEYWORDS", "is_dicom_file", "read_dicom", "read_dicom_header"]
