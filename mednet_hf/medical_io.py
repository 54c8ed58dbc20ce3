"""Reading medical files into arrays in modality units, through one reader table.

`READERS` lists one reader per kind of input, in the style of MONAI's `ImageReader`/`LoadImage`: a DICOM series
folder, a NIfTI volume, a DICOM file (recognised by its content, whatever its name), and everything PIL opens
(PNG, JPEG, TIFF, BMP). Each has `accepts(path)` and `read(path)`. The processor, the PIL plugin and the
image-folder builder all go through `reader_for` / `read_path`, so a new format touches this file only.

This module decides nothing about intensity (see `intensity.py`). It returns the pixels after the DICOM Modality
LUT (RescaleSlope/Intercept, through pydicom), in the smallest dtype that holds them exactly, together with what
the intensity step needs: the photometric interpretation and the DICOM VOI module (window, VOI LUT function,
VOI LUT Sequence) as DICOM JSON. Patient-identifying DICOM fields leave this module only with `include_phi=True`.
"""

import copy
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps

logger = logging.getLogger(__name__)

# `image.info` key under which the DICOM PIL plugin hands the full-precision image to the processor.
PIL_INFO_KEY = "mednet_medical_image"

# Header fields that identify a patient, a study or a visit. They only leave this module with include_phi=True.
PHI_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate", "PatientBirthTime",
    "PatientSex", "PatientAge", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
    "MilitaryRank", "EthnicGroup", "PatientComments", "IssuerOfPatientID", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "InstitutionName", "InstitutionAddress", "StationName",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "SeriesDate", "AcquisitionDate", "ContentDate",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "DeviceSerialNumber",
)

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
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class MedicalImageError(ValueError):
    """An input that cannot become an image: the message names the file or array and what is wrong."""


@dataclass
class MedicalImage:
    """Pixels in modality units plus what the intensity convention needs.

    pixels: `(H, W)` gray or `(H, W, 3)` RGB; multi-frame DICOMs hold `(frames, H, W[, 3])` until `frame()` picks one.
    photometric_interpretation: `MONOCHROME1` (low = white, inverted by the intensity step), `MONOCHROME2` or `RGB`.
    voi: the DICOM VOI module as DICOM JSON (`pydicom.Dataset.to_json_dict()` of the `VOI_KEYWORDS` and the VOI LUT
        Sequence); `None` for non-DICOM inputs. `intensity.py` hands it to `pydicom.pixels.apply_voi_lut`.
    pixel_spacing: `(row, column)` in mm where the source says.
    phi: patient-identifying header fields, only when read with `include_phi=True`.
    """

    pixels: np.ndarray
    photometric_interpretation: str = "MONOCHROME2"
    modality: str | None = None
    voi: dict | None = None
    pixel_spacing: tuple[float, float] | None = None
    num_frames: int = 1
    source: str = "<array>"
    phi: dict | None = field(default=None, repr=False)

    @property
    def is_color(self) -> bool:
        return self.photometric_interpretation not in ("MONOCHROME1", "MONOCHROME2")

    @property
    def header_window(self) -> tuple[float, float] | None:
        """The header's default window `(center, width)`, for display and summaries; `None` without one."""
        if not self.voi or "00281050" not in self.voi or "00281051" not in self.voi:
            return None
        center, width = (self.voi[tag].get("Value", [None])[0] for tag in ("00281050", "00281051"))
        return None if center is None or width is None else (float(center), float(width))

    def frame(self, index: int | None = None) -> "MedicalImage":
        """One frame of a multi-frame image; `None` picks the middle one. A single-frame image returns itself."""
        if self.num_frames == 1:
            return self
        index = self.num_frames // 2 if index is None else index
        if not -self.num_frames <= index < self.num_frames:
            raise MedicalImageError(f"{self.source}: frame {index} requested but the image has {self.num_frames}")
        return _replace(self, pixels=self.pixels[index], num_frames=1)


@dataclass
class MedicalVolume:
    """A 3-D volume in modality units.

    array: NIfTI volumes are reoriented to RAS+ (axis 0: left→right, 1: posterior→anterior, 2: inferior→superior,
        so axis 2 gives axial slices); DICOM series are `(rows, columns, slices)` in ImagePositionPatient order.
    spacing: voxel size in mm along the three axes.
    slice_voi: for a DICOM series, each acquired slice's own VOI module (windows often change from slice to slice);
        planes along the other axes cut through all slices and take the middle slice's.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    orientation: str  # "RAS" (NIfTI) or "DICOM" (series)
    modality: str | None = None
    photometric_interpretation: str = "MONOCHROME2"
    slice_voi: list[dict | None] | None = None
    source: str = "<volume>"
    phi: dict | None = field(default=None, repr=False)

    def num_slices(self, axis: int = 2) -> int:
        return self.array.shape[axis]

    def slice(self, index: int | None = None, axis: int = 2) -> MedicalImage:
        """Slice `index` (default: the middle one) along `axis` as a 2-D `MedicalImage`.

        RAS slices are rotated so that superior (sagittal, coronal) or anterior (axial) is at the top; DICOM series
        slices along axis 2 are the acquired images as stored.
        """
        if axis not in (0, 1, 2):
            raise MedicalImageError(f"{self.source}: slice axis must be 0, 1 or 2, got {axis}")
        n = self.array.shape[axis]
        index = n // 2 if index is None else index
        if not -n <= index < n:
            raise MedicalImageError(f"{self.source}: slice {index} requested along axis {axis}, which has {n}")
        plane = np.take(self.array, index, axis=axis)
        if self.orientation == "RAS":
            plane = np.rot90(plane)
        in_plane = [s for a, s in enumerate(self.spacing) if a != axis]
        voi = None
        if self.slice_voi:
            voi = self.slice_voi[index % n] if axis == 2 else self.slice_voi[len(self.slice_voi) // 2]
        return MedicalImage(
            pixels=np.ascontiguousarray(plane),
            photometric_interpretation=self.photometric_interpretation,
            modality=self.modality,
            voi=voi,
            pixel_spacing=(in_plane[1], in_plane[0]) if self.orientation == "RAS" else tuple(in_plane),
            source=f"{self.source} [axis {axis}, slice {index % n}]",
            phi=self.phi,
        )


def _replace(image: MedicalImage, **changes) -> MedicalImage:
    new = copy.copy(image)
    for key, value in changes.items():
        setattr(new, key, value)
    return new


def storable(pixels: np.ndarray) -> np.ndarray:
    """The smallest dtype that holds the values exactly (uint8/uint16/int16, else float32). Readers return it, and
    `datasets` encodes it losslessly, so a file and a dataset row give the same array."""
    if pixels.dtype in (np.uint8, np.uint16, np.int16, np.float32):
        return pixels
    if pixels.dtype.kind in "iuf" and pixels.size and (pixels.dtype.kind in "iu" or np.all(np.mod(pixels, 1) == 0)):
        low, high = pixels.min(), pixels.max()
        for dtype in (np.uint8, np.uint16, np.int16):
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return pixels.astype(dtype)
    return pixels.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- DICOM


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


def _phi(ds) -> dict:
    return {k: str(ds.get(k)) for k in PHI_KEYWORDS if k in ds}


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
            new.LUTDescriptor = [int(v) for v in item.LUTDescriptor]
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
        phi=_phi(ds) if include_phi else None,
    )


def _slice_geometry(header):
    """(normal, position along it) of one slice, or `None` without ImagePositionPatient/ImageOrientationPatient."""
    if "ImagePositionPatient" not in header or "ImageOrientationPatient" not in header:
        return None
    orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    return orientation, float(np.dot(np.asarray(header.ImagePositionPatient, dtype=float), normal))


def is_one_volume(headers) -> bool:
    """Whether DICOM headers are slices of one volume: one series, single-frame, same size and orientation, and
    distinct positions along the slice normal. Two radiographs that merely share a SeriesInstanceUID are not."""
    if len(headers) < 2:
        return False
    if len({str(h.get("SeriesInstanceUID", "")) for h in headers}) > 1:
        return False
    if len({(int(h.get("Rows", 0)), int(h.get("Columns", 0))) for h in headers}) > 1:
        return False
    if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in headers):
        return False
    geometry = [_slice_geometry(h) for h in headers]
    if any(g is None for g in geometry):
        return False
    if not all(np.allclose(g[0], geometry[0][0], atol=1e-4) for g in geometry):
        return False
    positions = sorted(g[1] for g in geometry)
    return bool(np.all(np.diff(positions) > 1e-4))


def group_volumes(files: list[tuple[Path, object]]) -> list[list[Path]]:
    """DICOM files with their headers → groups of paths: the slices of one volume together (same folder and
    SeriesInstanceUID, and `is_one_volume`), every other file alone. A header may be `None` (unreadable): that file
    stays alone, and reading it reports why."""
    groups: dict = {}
    for path, header in files:
        uid = str(header.get("SeriesInstanceUID", path)) if header is not None else str(path)
        groups.setdefault((Path(path).parent, uid), []).append((Path(path), header))
    out = []
    for members in groups.values():
        headers = [header for _, header in members]
        if all(h is not None for h in headers) and is_one_volume(headers):
            out.append([path for path, _ in members])
        else:  # single images, even when they share a SeriesInstanceUID (two radiographs of one study)
            out.extend([path] for path, _ in members)
    return out


def read_dicom_series(source, include_phi: bool = False) -> MedicalVolume:
    """Read one DICOM series — a folder holding it, or a list of its files — into a `(rows, columns, slices)`
    volume, slices sorted by their position along the slice normal. Each slice keeps its own VOI module."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise MedicalImageError(f"{folder}: not a folder")
        candidates = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        files = [p for p in candidates if is_dicom_file(p)]
        if len(files) < len(candidates):  # manifests, notes, ...: say so rather than drop them silently
            others = [p.name for p in candidates if p not in files]
            logger.warning("%s: %d file(s) that are not DICOM were left out of the series: %s", folder, len(others), others)
    else:
        files = sorted(Path(p) for p in source)
        folder = Path(os.path.commonpath(files)) if files else Path(".")
    if not files:
        raise MedicalImageError(f"{folder}: no DICOM files (.dcm or a DICM header) in this series")
    headers = [read_dicom_header(p) for p in files]
    if len(files) > 1 and not is_one_volume(headers):
        series = {str(h.get("SeriesInstanceUID", "")) for h in headers}
        why = f"holds {len(series)} DICOM series; put each series in its own folder" if len(series) > 1 else (
            "its files are not slices of one volume (they differ in size or orientation, share a position, "
            "or lack ImagePositionPatient/ImageOrientationPatient)")
        raise MedicalImageError(f"{folder}: {why}")
    order = sorted(range(len(files)), key=lambda i: (_slice_geometry(headers[i]) or (None, 0.0))[1])
    images = [read_dicom(files[i], include_phi=False) for i in order]
    if images[0].num_frames > 1 or images[0].is_color:
        raise MedicalImageError(f"{folder}: series slices must be single-frame gray images")
    if len({im.photometric_interpretation for im in images}) > 1:
        raise MedicalImageError(f"{folder}: the slices mix MONOCHROME1 and MONOCHROME2")
    positions = [(_slice_geometry(headers[i]) or (None, 0.0))[1] for i in order]
    step = float(np.median(np.diff(positions))) if len(positions) > 1 else 0.0
    first = images[0]
    row, col = first.pixel_spacing or (1.0, 1.0)
    # One dtype for the volume: the slices' own may differ (e.g. one slice needs int16, another fits in uint8).
    array = np.stack([im.pixels for im in images], axis=-1)
    return MedicalVolume(
        array=storable(array),
        spacing=(row, col, abs(step) or float(headers[0].get("SliceThickness", 1.0))),
        orientation="DICOM",
        modality=first.modality,
        photometric_interpretation=first.photometric_interpretation,
        slice_voi=[im.voi for im in images] if any(im.voi for im in images) else None,
        source=str(folder),
        phi=_phi(headers[order[0]]) if include_phi else None,
    )


# ---------------------------------------------------------------------------------------------------- NIfTI


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


# ---------------------------------------------------------------------------------------------------- PIL


def from_pil(image: PIL.Image.Image, source: str) -> "MedicalImage | MedicalVolume":
    """A PIL image → `MedicalImage`: palette and other modes become RGB or L, alpha is dropped, and the EXIF
    orientation is applied (as transformers' `load_image` does), so a path and its decoded image agree."""
    if PIL_INFO_KEY in image.info:  # a DICOM/NIfTI opened through the PIL plugin: the full-precision content
        return image.info[PIL_INFO_KEY]
    image = PIL.ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        image = image.convert("RGBA" if "A" in mode or "a" in mode else "RGB" if mode != "1" else "L")
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):  # LA / RGBA: the alpha channel carries no intensity
        pixels = pixels[..., :-1]
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise MedicalImageError(f"{source}: {int((~np.isfinite(pixels)).sum())} pixel(s) are NaN or infinite")
    return MedicalImage(pixels=storable(pixels), photometric_interpretation="RGB" if pixels.ndim == 3 else "MONOCHROME2",
                        source=source)


def _read_pil(path: Path) -> MedicalImage:
    try:
        with PIL.Image.open(path) as pil:
            pil.load()  # decode fully: a truncated file fails here, not in a training run
            return from_pil(pil, str(path))
    except PIL.Image.DecompressionBombError as e:
        raise MedicalImageError(f"{path}: {e}") from e
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as e:
        raise MedicalImageError(f"{path}: not an image file that PIL, pydicom or nibabel can read ({e})") from e


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


@dataclass(frozen=True)
class ImageReader:
    """One kind of input: `accepts(path)` says whether this reader takes the path, `read(path, include_phi)` reads
    it into a `MedicalImage` (2-D, possibly multi-frame) or a `MedicalVolume`."""

    name: str
    accepts: Callable[[Path], bool]
    read: Callable[..., "MedicalImage | MedicalVolume"]
    is_volume: bool = False


READERS = (
    ImageReader("dicom_series", lambda p: p.is_dir(), lambda p, include_phi=False: read_dicom_series(p, include_phi), True),
    ImageReader("nifti", lambda p: p.name.lower().endswith(NIFTI_SUFFIXES), lambda p, include_phi=False: read_nifti(p), True),
    # Before PIL: a DICOM is read as DICOM whatever it is called (an `export_0001.png` may hold a header).
    ImageReader("dicom", lambda p: p.is_file() and is_dicom_file(p), lambda p, include_phi=False: read_dicom(p, include_phi)),
    ImageReader("image", lambda p: p.name.lower().endswith(IMAGE_SUFFIXES), lambda p, include_phi=False: _read_pil(p)),
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
        return _read_pil(path)
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
        return read_dicom(image, include_phi).frame(frame)
    if type(image).__module__.startswith("torch"):
        tensor = image.detach().cpu()
        if tensor.dtype.is_floating_point and tensor.element_size() < 4:  # numpy has no bfloat16
            tensor = tensor.float()
        return _from_array(tensor.numpy(), f"<tensor {tuple(tensor.shape)}>")
    if isinstance(image, np.ndarray):
        return _from_array(image, f"<array {image.shape} {image.dtype}>")
    raise MedicalImageError(f"unsupported input type {type(image).__name__}")


__all__ = [
    "READERS",
    "ImageReader",
    "MedicalImage",
    "MedicalImageError",
    "MedicalVolume",
    "from_pil",
    "group_volumes",
    "images_of",
    "is_one_volume",
    "read_dicom",
    "read_dicom_header",
    "read_dicom_series",
    "read_nifti",
    "read_path",
    "reader_for",
    "storable",
    "to_medical_image",
]
