"""Files the reliability tests build from the real data in ../shared/data: each is a real image with one thing
changed (a header value, a name, a metadata block), written under a test's tmp_path."""

import shutil
import struct
import zlib
from pathlib import Path

import nibabel
import numpy as np
import PIL.Image
import PIL.PngImagePlugin
import pydicom
from conftest import data_path
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

CR_DICOM = "cxr/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"  # named after its SOPInstanceUID
CR_MONOCHROME1 = "cxr/Fake_MONOHR1.dcm"  # the same radiograph as MONOCHROME1, same SeriesInstanceUID

# Text that must never reach a dataset: it stands for a patient's identity in PNG text chunks and EXIF.
SECRET_TEXT = {"PatientName": "Doe^Jane^Secret", "PatientID": "MRN-7734519", "Comment": "Acme General, ward 5B"}


def dicom_with(source: str, target: Path, **changes) -> Path:
    """A real DICOM with header values changed (`None` deletes the element)."""
    ds = pydicom.dcmread(data_path(source))
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def renamed_dicom(target: Path, source: str = "dicom/MR_small.dcm") -> Path:
    """A DICOM saved under an image name (`export_0001.png`), byte for byte."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(data_path(source), target)
    return target


def png_with_text(target: Path, source: str = "cxr/00000001_000.png") -> Path:
    """A real PNG re-saved (same pixels) with tEXt and iTXt chunks holding `SECRET_TEXT`."""
    info = PIL.PngImagePlugin.PngInfo()
    for key, value in SECRET_TEXT.items():
        info.add_text(key, value)
    info.add_itxt("Description", f"{SECRET_TEXT['PatientName']} {SECRET_TEXT['PatientID']}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with PIL.Image.open(data_path(source)) as image:
        image.save(target, pnginfo=info)
    return target


def jpeg_with_exif(target: Path, source: str = "cxr/16747_3_1.jpg") -> Path:
    """A real JPEG with an EXIF block (Artist, ImageDescription, UserComment) inserted after its SOI marker: the
    compressed image data stays byte for byte the same."""
    exif = PIL.Image.Exif()
    exif[0x013B] = SECRET_TEXT["PatientName"]  # Artist
    exif[0x010E] = f"{SECRET_TEXT['PatientID']} {SECRET_TEXT['Comment']}"  # ImageDescription
    payload = exif.tobytes()
    payload = payload if payload.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + payload
    original = data_path(source).read_bytes()
    assert original[:2] == b"\xff\xd8"
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(original[:2] + segment + original[2:])
    return target


def palette_dicom(target: Path, source: str = "misc/retina.jpg") -> tuple[Path, np.ndarray]:
    """A PALETTE COLOR DICOM made from a real fundus photo quantised to 256 colours (16-bit LUT entries, as DICOM
    palettes are usually stored), and the RGB image PIL renders from the same palette: the oracle."""
    with PIL.Image.open(data_path(source)) as photo:
        quantised = photo.convert("RGB").reduce(4).quantize(colors=256)
    indices = np.asarray(quantised)
    palette = np.asarray(quantised.getpalette()[: 3 * 256], dtype=np.uint16).reshape(-1, 3)
    ds = pydicom.dcmread(data_path("dicom/MG_Explicit_Little.dcm"))
    for keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept", "RescaleType", "VOILUTFunction"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.Modality = "XC"
    ds.Rows, ds.Columns = indices.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PixelData = indices.tobytes()
    for channel, color in enumerate(("Red", "Green", "Blue")):
        ds.add_new(f"{color}PaletteColorLookupTableDescriptor", "US", [len(palette), 0, 16])
        ds.add_new(f"{color}PaletteColorLookupTableData", "OW", (palette[:, channel] * 257).astype("<u2").tobytes())
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target, np.asarray(quantised.convert("RGB"))


def implicit_vr_voi_lut(target: Path) -> tuple[Path, np.ndarray]:
    """A real CT with a VOI LUT Sequence (square-root curve over [-1024, 1023] HU, 12 bits), saved Implicit VR
    Little Endian, where pydicom cannot tell LUT Data's VR and hands over raw bytes; and the expected [0, 1] image."""
    ds = pydicom.dcmread(data_path("dicom/CT_small.dcm"))
    first, entries, bits = -1024, 2048, 12
    table = np.round(np.sqrt(np.linspace(0, 1, entries)) * (2**bits - 1)).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "SS", [entries, first, bits])  # LUT Descriptor
    item.add_new(0x00283006, "US", table.tolist())  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, implicit_vr=True, little_endian=True)
    assert isinstance(pydicom.dcmread(target).VOILUTSequence[0].LUTData, bytes)  # the case under test
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return target, table[np.clip(np.rint(hu) - first, 0, entries - 1).astype(int)] / (2**bits - 1)


def nan_nifti(target: Path, source: str = "nifti/CT_pitch.nii.gz") -> Path:
    """A real NIfTI volume with one NaN voxel."""
    image = nibabel.load(data_path(source))
    data = image.get_fdata(dtype=np.float32)
    data[tuple(s // 2 for s in data.shape[:3])] = np.nan
    target.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(data, image.affine), target)
    return target


def nan_tiff(target: Path, source: str = "cxr/00000001_000.png") -> Path:
    """A real X-ray as a 32-bit float TIFF in [0, 1] with one NaN pixel."""
    with PIL.Image.open(data_path(source)) as image:
        values = np.asarray(image.convert("L"), dtype=np.float32) / 255
    values[10, 10] = np.nan
    target.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(values, mode="F").save(target)
    return target


def decompression_bomb_png(target: Path, source: str = "cxr/00000001_000.png", side: int = 30000) -> Path:
    """A real PNG whose header claims `side` × `side` pixels (IHDR rewritten, its CRC fixed)."""
    data = bytearray(data_path(source).read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(data))
    return target


def fake_series_pair(folder: Path) -> list[Path]:
    """Two real radiographs that share a SeriesInstanceUID, one MONOCHROME2 and one MONOCHROME1, in one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    first = shutil.copy(data_path(CR_DICOM), folder / "cr.dcm")
    second = shutil.copy(data_path(CR_MONOCHROME1), folder / "cr_monochrome1.dcm")
    series = {str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in (first, second)}
    assert len(series) == 1
    return [Path(first), Path(second)]


def signed_voi_lut(target: Path, source: str = "dicom/MR_small.dcm") -> Path:
    """A real MR with a VOI LUT Sequence whose first mapped value is negative (LUT Descriptor [8192, -2048, 12], VR SS
    as DICOM allows for signed pixels), saved Explicit VR: a valid file that the stored descriptor must survive."""
    ds = pydicom.dcmread(data_path(source))
    entries, first, bits = 8192, -2048, 12
    table = np.round(np.linspace(0, 1, entries) ** 0.7 * (2**bits - 1)).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "SS", [entries, first, bits])  # LUT Descriptor
    item.add_new(0x00283006, "US", table.tolist())  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def palette_without_palette(target: Path, source: str = "dicom/MR_small.dcm") -> Path:
    """A real MR whose header says PALETTE COLOR but carries no palette tables."""
    return dicom_with(source, target, PhotometricInterpretation="PALETTE COLOR")


def number_of_frames_not_a_number(target: Path, source: str = "dicom/CT_small.dcm") -> Path:
    """A real CT whose NumberOfFrames (VR IS) holds '1A'."""
    ds = pydicom.dcmread(data_path(source))
    ds.add_new(0x00280008, "IS", "1")
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    data = bytearray(target.read_bytes())
    at = data.index(b"\x28\x00\x08\x00IS")  # the element as written (explicit VR little endian): tag, VR, length, value
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    data[at + 8 : at + 8 + length] = b"1A".ljust(length)[:length]
    target.write_bytes(bytes(data))
    return target
