"""The privacy rules: which header fields identify a patient, and how a path is made safe to show.

Patient-identifying DICOM fields leave the readers only with `include_phi=True`. A path shown in a dataset row, a
CSV or a page goes through `scrub_path`: DICOM UIDs become `uid-` and the first 16 hex digits of their SHA-256 (the
holder of the files can recompute it; nobody else can), and a path part holding the file's PatientName or PatientID
becomes `phi-<hash>`. Other identifying names (an accession number, a date of birth) cannot be recognised: name
inputs neutrally.
"""

import hashlib
import re

# Header fields that identify a patient, a study or a visit. They only leave this module with include_phi=True.
PHI_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthDate", "PatientBirthTime",
    "PatientSex", "PatientAge", "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName",
    "MilitaryRank", "EthnicGroup", "PatientComments", "IssuerOfPatientID", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "InstitutionName", "InstitutionAddress", "StationName",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "SeriesDate", "AcquisitionDate", "ContentDate",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "DeviceSerialNumber",
)

# A DICOM UID (PS3.5 9.1): numeric components without leading zeros, the first 0, 1 or 2; at least four of them.
_UID = re.compile(r"(?<![0-9.])[0-2](?:\.(?:0|[1-9][0-9]*)){3,}(?![0-9])")


def header_phi(header) -> dict:
    """The `PHI_KEYWORDS` fields of a DICOM header, as text (what `include_phi=True` hands out)."""
    return {k: str(header.get(k)) for k in PHI_KEYWORDS if k in header}


def phi_values(header) -> set[str]:
    """The PatientName and PatientID of a header (and the name's parts of 3 characters or more), to keep them out of
    anything shown."""
    values = set()
    for keyword in ("PatientName", "PatientID"):
        value = str(header.get(keyword, "") or "").strip()
        if value:
            values.add(value)
            values.update(part for part in re.split(r"[\^=\s]+", value) if len(part) >= 3)
    return values


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def public_name(path: str) -> str:
    """`path` with every DICOM UID in it replaced by `uid-<first 16 hex digits of its SHA-256>`."""
    return _UID.sub(lambda match: "uid-" + _digest(match.group()), path)


def scrub_path(path: str, phi: set[str] = frozenset()) -> str:
    """`path` as it may be shown: parts holding one of `phi` (see `phi_values`) replaced by `phi-<hash>`, then DICOM
    UIDs by `uid-<hash>` (`public_name`). A name that is not UTF-8 (a Latin-1 `café` on a UTF-8 file system) keeps
    its bytes as `\xe9` escapes, so it can be written to a CSV and still be told apart."""
    path = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    parts = []
    for part in re.split(r"([/\\])", path):
        if phi and any(value and value.lower() in part.lower() for value in phi):
            part = "phi-" + _digest(part)
        parts.append(part)
    return public_name("".join(parts))


__all__ = ["PHI_KEYWORDS", "header_phi", "phi_values", "public_name", "scrub_path"]
