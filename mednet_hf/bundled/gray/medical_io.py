"""Reading medical images into arrays in modality units: DICOM files (single and multi-frame), DICOM series,
NIfTI volumes, and the ordinary inputs (PIL images, numpy arrays, torch tensors, PNG/JPEG/TIFF paths).

This module decides nothing about intensity (see `intensity.py`): it returns the pixels as stored, after the DICOM
Modality LUT (RescaleSlope/Intercept), together with what the intensity step needs (photometric interpretation,
the header's VOI window or VOI LUT). Patient-identifying DICOM fields are never returned unless `include_phi=True`.
"""

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL.Image

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


class MedicalImageError(ValueError):
    """An input that cannot become an image: the message names the file or array and what is wrong."""


@dataclass
class MedicalImage:
    """Pixels in modality units plus what the intensity convention needs.

    pixels: `(H, W)` gray or `(H, W, 3)` RGB; multi-frame DICOMs hold `(frames, H, W[, 3])` until `frame()` picks one.
    photometric_interpretation: `MONOCHROME1` (low = white, inverted by the intensity step), `MONOCHROME2` or `RGB`.
    window: the header's VOI window `(center, width)`, in modality units.
    voi_lut: the header's VOI LUT as `(first_mapped_value, table scaled to [0, 1])`.
    pixel_spacing: `(row, column)` in mm where the source says.
    phi: patient-identifying header fields, only when read with `include_phi=True`.
    """

    pixels: np.ndarray
    photometric_interpretation: str = "MONOCHROME2"
    modality: str | None = None
    window: tuple[float, float] | None = None
    voi_lut: tuple[int, np.ndarray] | None = None
    pixel_spacing: tuple[float, float] | None = None
    num_frames: int = 1
    source: str = "<array>"
    phi: dict | None = field(default=None, repr=False)

    @property
    def is_color(self) -> bool:
        return self.photometric_interpretation not in ("MONOCHROME1", "MONOCHROME2")

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
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    orientation: str  # "RAS" (NIfTI) or "DICOM" (series)
    modality: str | None = None
    window: tuple[float, float] | None = None
    photometric_interpretation: str = "MONOCHROME2"
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
        return MedicalImage(
            pixels=np.ascontiguousarray(plane),
            photometric_interpretation=self.photometric_interpretation,
            modality=self.modality,
            window=self.window,
            pixel_spacing=(in_plane[1], in_plane[0]) if self.orientation == "RAS" else tuple(in_plane),
            source=f"{self.source} [axis {axis}, slice {index % n}]",
            phi=self.phi,
        )


def _replace(image: MedicalImage, **changes) -> MedicalImage:
    new = copy.copy(image)
    for key, value in changes.items():
        setattr(new, key, value)
    return new


# ---------------------------------------------------------------------------------------------------- DICOM


def _pydicom():
    import pydicom  # imported here: the PIL plugin and NIfTI-only users should not pay for it

    return pydicom


def _dcmread(source, stop_before_pixels: bool = False):
    pydicom = _pydicom()
    name = str(source) if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "<DICOM stream>")
    try:
        ds = pydicom.dcmread(source, force=True, stop_before_pixels=stop_before_pixels)
    except FileNotFoundError:
        raise MedicalImageError(f"{name}: no such file") from None
    except Exception as e:  # pydicom raises many types on truncated or foreign files
        raise MedicalImageError(f"{name}: not a readable DICOM file ({type(e).__name__}: {e})") from e
    # `force=True` parses anything; a real DICOM object has at least a SOP class or a modality.
    if not any(k in ds for k in ("SOPClassUID", "Modality", "PixelData", "Rows")):
        raise MedicalImageError(f"{name}: not a DICOM file (no DICOM header found)")
    return ds, name


def _first(value) -> float:
    # WindowCenter/WindowWidth may list several windows; the first is the default one.
    return float(value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value)


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


def _decode(ds, name: str) -> np.ndarray:
    ts = ds.file_meta.TransferSyntaxUID
    try:
        return ds.pixel_array
    except Exception as e:
        message = str(e)
        if ts.is_compressed and ("plugin" in message or "missing" in message or "dependenc" in message):
            raise MedicalImageError(
                f"{name}: pixel data is compressed with '{ts.name}' ({ts}) and no installed decoder handles it; "
                f"{DICOM_DECODERS_HINT}. pydicom said: {message}"
            ) from e
        raise MedicalImageError(f"{name}: pixel data cannot be decoded, the file may be truncated or corrupt ({message})") from e


def _voi_lut(ds) -> tuple[int, np.ndarray] | None:
    if "VOILUTSequence" not in ds or not len(ds.VOILUTSequence):
        return None
    item = ds.VOILUTSequence[0]
    entries, first_mapped, bits = (int(v) for v in item.LUTDescriptor)
    table = np.asarray(item.LUTData, dtype=np.float32).reshape(-1)[: entries or 65536]
    return first_mapped, table / float(2**bits - 1)


def read_dicom(source, include_phi: bool = False) -> MedicalImage:
    """Read a DICOM file (path, file object or `pydicom.Dataset`) into a `MedicalImage` in modality units.

    Multi-frame images keep all frames (`MedicalImage.frame()` picks one). Raises `MedicalImageError` for
    non-DICOM or truncated files, objects without an image (RTSTRUCT, SEG, ...) and compressed pixel data whose
    decoder is not installed.
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
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples == 1:
        pixels = pydicom.pixels.apply_modality_lut(pixels, ds)
    else:
        photometric = "RGB"  # pydicom converts YBR_* to RGB when decoding
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    window = None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth))
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return MedicalImage(
        pixels=pixels,
        photometric_interpretation=photometric,
        modality=modality,
        window=window,
        voi_lut=_voi_lut(ds),
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
        num_frames=frames,
        source=name,
        phi=_phi(ds) if include_phi else None,
    )


def read_dicom_series(source, include_phi: bool = False) -> MedicalVolume:
    """Read one DICOM series — a folder holding it, or a list of its files — into a `(rows, columns, slices)`
    volume, slices sorted by their position along the slice normal (ImagePositionPatient · (row × column
    direction)), else by InstanceNumber."""
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
    headers = [_dcmread(p, stop_before_pixels=True)[0] for p in files]
    series = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(series) > 1:
        raise MedicalImageError(f"{folder}: holds {len(series)} DICOM series; put each series in its own folder")

    def position(h) -> float:
        if "ImagePositionPatient" in h and "ImageOrientationPatient" in h:
            iop = np.asarray(h.ImageOrientationPatient, dtype=float)
            return float(np.dot(np.asarray(h.ImagePositionPatient, dtype=float), np.cross(iop[:3], iop[3:])))
        return float(h.get("InstanceNumber", 0))

    order = sorted(range(len(files)), key=lambda i: position(headers[i]))
    images = [read_dicom(files[i]) for i in order]
    shapes = {im.pixels.shape for im in images}
    if len(shapes) > 1 or images[0].num_frames > 1 or images[0].is_color:
        raise MedicalImageError(f"{folder}: slices must be single-frame gray images of one shape, got {sorted(shapes)}")
    positions = [position(headers[i]) for i in order]
    step = float(np.median(np.diff(positions))) if len(positions) > 1 else 1.0
    first = images[0]
    row, col = first.pixel_spacing or (1.0, 1.0)
    return MedicalVolume(
        array=np.stack([im.pixels for im in images], axis=-1),
        spacing=(row, col, abs(step) or float(headers[0].get("SliceThickness", 1.0))),
        orientation="DICOM",
        modality=first.modality,
        window=first.window,
        photometric_interpretation=first.photometric_interpretation,
        source=str(folder),
        phi=_phi(headers[order[0]]) if include_phi else None,
    )


# ---------------------------------------------------------------------------------------------------- NIfTI


def read_nifti(path, volume_index: int = 0) -> MedicalVolume:
    """Read a NIfTI file into a RAS+ volume; 4-D files give volume `volume_index` (default the first)."""
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
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    return MedicalVolume(array=data, spacing=zooms, orientation="RAS", source=path)


# ---------------------------------------------------------------------------------------------------- any input


def is_dicom_file(path: Path) -> bool:
    """A `.dcm`/`.dicom` name or the DICM magic at byte 128."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as f:
        return f.read(132)[128:132] == b"DICM"


def _from_pil(image: PIL.Image.Image, source: str) -> MedicalImage:
    if PIL_INFO_KEY in image.info:  # a DICOM opened through the PIL plugin: use the full-precision pixels
        return image.info[PIL_INFO_KEY]
    mode = image.mode
    if mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        image = image.convert("RGBA" if "A" in mode or "a" in mode else "RGB" if mode != "1" else "L")
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):  # LA / RGBA: the alpha channel carries no intensity
        pixels = pixels[..., :-1]
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    return MedicalImage(pixels=pixels, photometric_interpretation="RGB" if pixels.ndim == 3 else "MONOCHROME2", source=source)


def _from_array(array: np.ndarray, source: str) -> MedicalImage:
    if array.dtype == bool:
        array = array.astype(np.uint8)
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

    Accepts a file path (PNG/JPEG/TIFF/DICOM/NIfTI), a DICOM series folder, a `pydicom.Dataset`, a PIL image,
    a numpy array or torch tensor (`HxW`, `HxWxC`, `CxHxW`), or a `MedicalImage`/`MedicalVolume`. Multi-frame DICOMs
    give frame `frame` and volumes slice `slice_index` along `slice_axis` (default for both: the middle one).
    """
    if isinstance(image, MedicalVolume):
        return image.slice(slice_index, slice_axis)
    if isinstance(image, MedicalImage):
        return image.frame(frame)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.is_dir():
            return read_dicom_series(path, include_phi).slice(slice_index, slice_axis)
        if not path.is_file():
            raise MedicalImageError(f"{path}: no such file")
        name = path.name.lower()
        if name.endswith((".nii", ".nii.gz")):
            return read_nifti(path).slice(slice_index, slice_axis)
        if is_dicom_file(path):
            return read_dicom(path, include_phi).frame(frame)
        try:
            with PIL.Image.open(path) as pil:
                pil.load()
                return _from_pil(pil, str(path)).frame(frame)
        except (PIL.UnidentifiedImageError, OSError) as e:
            raise MedicalImageError(f"{path}: not an image file that PIL, pydicom or nibabel can read ({e})") from e
    if isinstance(image, PIL.Image.Image):
        return _from_pil(image, getattr(image, "filename", "") or f"<PIL {image.mode} image>").frame(frame)
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
    "MedicalImage",
    "MedicalImageError",
    "MedicalVolume",
    "read_dicom",
    "read_dicom_series",
    "read_nifti",
    "to_medical_image",
]
