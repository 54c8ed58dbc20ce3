"""What every builder here shares: the data-file error, md5 verification and manual-download messages."""

import hashlib
from pathlib import Path

import datasets
from datasets import VerificationMode


class DataFileError(ValueError):
    """A data file is missing, corrupt or unreadable; the message names it and says what to do."""


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str, verification_mode) -> None:
    """Raise `DataFileError` naming the file and both checksums unless verification is off."""
    if VerificationMode(verification_mode or VerificationMode.BASIC_CHECKS) == VerificationMode.NO_CHECKS:
        return
    actual = md5sum(path)
    if actual != expected:
        raise DataFileError(
            f"{path}: md5 {actual} does not match the official file's {expected}. The file is corrupt, truncated or a "
            "different release; download it again, or pass verification_mode='no_checks' to use it anyway."
        )


def require_file(path: Path, how_to_get: str) -> Path:
    if not path.is_file():
        raise DataFileError(f"{path} not found. {how_to_get}")
    return path


class MedicalBuilder(datasets.GeneratorBasedBuilder):
    """A `GeneratorBasedBuilder` that keeps `verification_mode` for its own checksum checks."""

    _verification_mode = VerificationMode.BASIC_CHECKS

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        self._verification_mode = verification_mode
        return super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
