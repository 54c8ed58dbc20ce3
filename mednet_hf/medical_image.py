"""The reader's output types: a 2-D `MedicalImage` and a 3-D `MedicalVolume` in modality units, and the one error
every reader raises, `MedicalImageError` (a `ValueError` naming the file or array and what is wrong)."""

import copy
from dataclasses import dataclass, field

import numpy as np


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


__all__ = ["MedicalImage", "MedicalImageError", "MedicalVolume", "storable"]
