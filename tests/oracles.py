"""Reference computations the tests compare the package against, written from the standards, not from our code."""

import numpy as np
import pydicom


def pydicom_unit(path) -> np.ndarray:
    """A DICOM file's header VOI as [0, 1]: pydicom's modality LUT and `apply_voi_lut`, then the VOI output range of
    DICOM PS3.3 C.11.2 (the LUT's bit depth, else the stored bit range through the rescale) mapped linearly."""
    ds = pydicom.dcmread(path, force=True)
    values = pydicom.pixels.apply_voi_lut(pydicom.pixels.apply_modality_lut(ds.pixel_array, ds), ds)
    if "VOILUTSequence" in ds:
        low, high = 0, 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
    else:
        bits = int(ds.BitsStored)
        low, high = (0, 2**bits - 1) if int(ds.PixelRepresentation) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
            low, high = low * slope + intercept, high * slope + intercept
    return (values - low) / (high - low)
