"""A PIL image plugin for DICOM, registered when `mednet_hf` (or a saved MedNet processor) is imported.

transformers' image pipelines open a path string with `PIL.Image.open(path).convert("RGB")`, and the `datasets`
`Image()` feature decodes with PIL too, so a DICOM path works there only if PIL can open DICOM.

The PIL pixels are an 8-bit display rendering (the intensity convention with its defaults; the middle frame of a
multi-frame file). They are for viewers and thumbnails only: the full-precision `MedicalImage` (modality units,
all frames, window metadata, no patient identifiers) rides along in `image.info`, survives `.convert()` and
`.copy()`, and is what `MedNetImageProcessor` uses, so windows and presets still apply to the real values.
"""

import io

import numpy as np
from PIL import Image, ImageFile

from .intensity import to_unit_range
from .medical_io import PIL_INFO_KEY, MedicalImageError, read_dicom


def _accept(prefix: bytes) -> bool:
    # PIL shows plugins 16 bytes, and the DICM magic sits at byte 128: `_open` decides.
    return True


class DicomImageFile(ImageFile.ImageFile):
    format = "DICOM"
    format_description = "DICOM (decoded by pydicom; full-precision data in info['mednet_medical_image'])"

    def _open(self):
        head = self.fp.read(132)
        named_dicom = str(getattr(self, "filename", "") or "").lower().endswith((".dcm", ".dicom"))
        if head[128:132] != b"DICM" and not named_dicom:
            raise SyntaxError("not a DICOM file")
        self.fp.seek(0)
        stream = io.BytesIO(self.fp.read())
        stream.name = str(getattr(self, "filename", "") or "<DICOM stream>")
        try:
            medical = read_dicom(stream)
        except MedicalImageError as e:
            if named_dicom:  # a .dcm that pydicom cannot use: say why rather than "cannot identify image"
                raise OSError(str(e)) from e
            raise SyntaxError(str(e)) from e
        frame = medical.frame()
        channels = 3 if frame.is_color else 1
        display = np.rint(to_unit_range(frame, num_channels=channels) * 255).astype(np.uint8)
        display = np.ascontiguousarray(np.moveaxis(display, 0, -1)) if channels == 3 else display[0]
        self._mode = "RGB" if channels == 3 else "L"
        self._size = (display.shape[1], display.shape[0])
        self.info[PIL_INFO_KEY] = medical
        if self._exclusive_fp:
            self.fp.close()
        self.fp = io.BytesIO(display.tobytes())
        self.tile = [ImageFile._Tile("raw", (0, 0) + self.size, 0, (self.mode, 0, 1))]


def register() -> None:
    """Make `PIL.Image.open` read DICOM files (idempotent)."""
    if DicomImageFile.format not in Image.OPEN:
        Image.register_open(DicomImageFile.format, DicomImageFile, _accept)
        Image.register_extensions(DicomImageFile.format, [".dcm", ".dicom"])


register()
