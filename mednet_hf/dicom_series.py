"""DICOM series: which files are slices of one volume, and reading them into a `MedicalVolume`."""

import logging
import os
from pathlib import Path

import numpy as np

from .dicom import is_dicom_file, read_dicom, read_dicom_header
from .medical_image import MedicalImageError, MedicalVolume, storable
from .phi import header_phi

logger = logging.getLogger(__name__)


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


def _is_one_volume_or_not(headers) -> bool:
    """`is_one_volume`, where a header value that is not what DICOM says (a NumberOfFrames of '1A') means no: the
    files stay alone, and reading each one names it and the value."""
    try:
        return is_one_volume(headers)
    except (ValueError, TypeError, AttributeError):
        return False


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
        if all(h is not None for h in headers) and _is_one_volume_or_not(headers):
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
        phi=header_phi(headers[order[0]]) if include_phi else None,
    )


__all__ = ["group_volumes", "is_one_volume", "read_dicom_series"]
