"""A PIL image plugin for DICOM and NIfTI, registered when MedNet's image processor is imported.

transformers' image pipelines open a path string with `PIL.Image.open(path).convert("RGB")`, and the `datasets`
`Image()` feature decodes with PIL too, so a DICOM or NIfTI path works there only if PIL can open it. The plugin
reads the file through the package's reader table (`medical_io.reader_for`), exactly as the processor reads a path.

The PIL pixels are an 8-bit display rendering of the middle frame or slice (the intensity convention with its
defaults). They are for viewers and thumbnails only: the full-precision `MedicalImage` or `MedicalVolume` (modality
units, every frame or slice, the VOI module, no patient identifiers) rides along in `image.info`, survives
`.convert()` and `.copy()`, and is what `MedNetImageProcessor` uses, so a pipeline gives the same `pixel_values` as
the processor given the path.
"""

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from .intensity import to_uint8, to_unit_range
from .dicom import read_dicom
from .medical_image import MedicalImage, MedicalImageError, MedicalVolume
from .medical_io import reader_for, to_medical_image
from .pil_image import PIL_INFO_KEY

FORMATS = ("dicom", "nifti")


def _accept(prefix: bytes) -> bool:
    # PIL shows plugins 16 bytes; the DICM magic sits at byte 128 and NIfTI is known by its name: `_open` decides.
    return True


def _display(content: MedicalImage | MedicalVolume) -> np.ndarray:
    """The 8-bit rendering of the middle frame or slice: uint8 `(H, W)` or `(H, W, 3)`."""
    image = to_medical_image(content)
    channels = 3 if image.is_color else 1
    unit = to_uint8(to_unit_range(image, num_channels=channels))
    return np.ascontiguousarray(np.moveaxis(unit, 0, -1)) if channels == 3 else unit[0]


class MedicalImageFile(ImageFile.ImageFile):
    format = "MEDNET"
    format_description = "DICOM or NIfTI (read by mednet_hf; full-precision data in info['mednet_medical_image'])"

    def _open(self):
        name = self.filename if isinstance(self.filename, (str, os.PathLike)) and str(self.filename) else None
        reader = reader_for(Path(name)) if name and Path(name).is_file() else None
        if reader is not None and reader.name not in FORMATS:
            raise SyntaxError("not DICOM or NIfTI")
        if reader is None:  # a stream without a usable name: only DICOM announces itself (DICM at byte 128)
            if self.fp.read(132)[128:132] != b"DICM":
                raise SyntaxError("not DICOM or NIfTI")
            self.fp.seek(0)
            stream = io.BytesIO(self.fp.read())
            stream.name = name or "<DICOM stream>"
        try:
            content = reader.read(Path(name)) if reader is not None else read_dicom(stream)
            display = _display(content)
        except MedicalImageError as e:
            raise OSError(str(e)) from e  # PIL's word for "recognised but unreadable": it names the file and why
        self._mode = "RGB" if display.ndim == 3 else "L"
        self._size = (display.shape[1], display.shape[0])
        self.info[PIL_INFO_KEY] = content
        if self._exclusive_fp:
            self.fp.close()
        self.fp = io.BytesIO(display.tobytes())
        self.tile = [ImageFile._Tile("raw", (0, 0) + self.size, 0, (self.mode, 0, 1))]


    def load_read(self, read_bytes: int) -> bytes:
        """Pixels come from the rendering held in memory (`self.fp`). Defining this stops PIL from memory-mapping
        the file on disk as if it were raw pixels (Pillow 12 tries that for a single raw tile with a filename)."""
        return self.fp.read(read_bytes)


def to_pil(content: MedicalImage | MedicalVolume) -> Image.Image:
    """A PIL image of `content` that carries it in full precision, as `Image.open` of its file gives: for
    pipelines and viewers given a volume slice or an image built in memory."""
    display = _display(content)
    pil = Image.fromarray(display, mode="RGB" if display.ndim == 3 else "L")
    pil.info[PIL_INFO_KEY] = content
    return pil


def register() -> None:
    """Make `PIL.Image.open` read DICOM and NIfTI files (idempotent)."""
    if MedicalImageFile.format not in Image.OPEN:
        Image.register_open(MedicalImageFile.format, MedicalImageFile, _accept)
        Image.register_extensions(MedicalImageFile.format, [".dcm", ".dicom", ".nii"])


register()
