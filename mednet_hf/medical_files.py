"""Folders of medical files → the things to read: one walk, used by `mednet predict` and the image-folder builder.

A folder is searched recursively (hidden files and folders left out). Every file the reader table accepts is one
item, except DICOM files that are slices of one volume (per folder and SeriesInstanceUID, checked by
`dicom_series.is_one_volume`), which are one series item. Files the table does not accept (notes, JSON annotations)
are listed as unreadable with the reason. Each item carries the PatientName/PatientID values of its DICOM headers and
of the DICOM files in its folders (`folder_phi`), so that whoever shows its path can scrub them (`phi.scrub_path`).
"""

from dataclasses import dataclass, field
from pathlib import Path

from .dicom import read_dicom_header
from .dicom_series import group_volumes, read_dicom_series
from .medical_image import MedicalImage, MedicalImageError, MedicalVolume
from .medical_io import named_errors, reader_for
from .phi import phi_values, scrub_path


@dataclass
class FileItem:
    """One thing to read: a file, or the DICOM files of one series (`paths`), read by `reader` ("dicom_series" for
    a series given as its files)."""

    reader: str
    paths: list[Path]
    phi: set[str] = field(default_factory=set)

    @property
    def path(self) -> Path:
        """The file, or the series' folder."""
        return self.paths[0].parent if self.reader == "dicom_series" else self.paths[0]

    @property
    def shown(self) -> str:
        """The path as it may be shown: patient names and IDs, and DICOM UIDs, scrubbed."""
        return scrub_path(str(self.path), self.phi)

    def read(self, include_phi: bool = False) -> "MedicalImage | MedicalVolume":
        if self.reader == "dicom_series":  # its files, not its folder: the folder may hold other series too
            return named_errors(str(self.path), lambda: read_dicom_series(self.paths, include_phi=include_phi))
        return reader_for(self.paths[0]).read(self.paths[0], include_phi=include_phi)


@dataclass
class Unreadable:
    path: str
    reason: str


def _header_or_none(path: Path):
    try:
        return read_dicom_header(path)
    except MedicalImageError:
        return None  # reading the file itself reports why


def file_phi_values(path) -> set[str]:
    """`phi.phi_values` of one file: its DICOM header's, or none for another kind of file or an unreadable header."""
    reader = reader_for(path)
    header = _header_or_none(Path(path)) if reader is not None and reader.name == "dicom" else None
    return phi_values(header) if header is not None else set()


def files_under(root: Path) -> list[Path]:
    """Every file below `root`, sorted, hidden files and folders left out."""
    return sorted(p for p in Path(root).rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def folder_phi(items: list[FileItem], root: Path) -> dict[Path, set[str]]:
    """Each folder below `root` → the patient names and IDs of the DICOM items beneath it: a folder named after
    the patient is recognised in the path of every file it holds, not only in its DICOM files' paths (a PNG shown in
    clear beside the DICOM's `phi-<hash>` would undo it). `root` itself is left out: it holds everyone's files."""
    below: dict[Path, set[str]] = {}
    for item in items:
        for folder in [item.path, *item.path.parents] if item.phi else []:
            if folder == root or root not in folder.parents:
                break
            below.setdefault(folder, set()).update(item.phi)
    return below


def phi_around(path: Path, below: dict[Path, set[str]]) -> set[str]:
    """The values of `folder_phi` for the folders on `path`."""
    return set().union(*(below.get(folder, set()) for folder in [path, *path.parents]))


def group_files(paths: list[Path], root: Path | None = None) -> list[FileItem]:
    """Files the reader table accepts → items (DICOM slices of one volume grouped), sorted by path. Under `root`,
    each item also carries the patient names and IDs of the DICOM files in its folders (`folder_phi`)."""
    items, dicom = [], []
    for path in paths:
        reader = reader_for(path)
        if reader.name == "dicom":
            dicom.append((path, _header_or_none(path)))
        else:
            items.append(FileItem(reader.name, [path]))
    headers = dict(dicom)
    for group in group_volumes(dicom):
        phi = set().union(*(phi_values(headers[p]) for p in group if headers[p] is not None))
        items.append(FileItem("dicom_series" if len(group) > 1 else "dicom", group, phi))
    if root is not None:
        below = folder_phi(items, Path(root))
        for item in items:
            item.phi = item.phi | phi_around(item.path, below)
    return sorted(items, key=lambda item: str(item.path))


def walk(inputs) -> tuple[list[FileItem], list[Unreadable]]:
    """Files and folders (searched recursively) → the items to read, and the inputs that cannot be read, with why.
    A file given by name is one item; the files of a folder are grouped (`group_files`)."""
    items, unreadable = [], []
    for raw in inputs:
        root = Path(raw)
        if not root.exists():
            unreadable.append(Unreadable(scrub_path(str(raw)), "no such file or folder"))
            continue
        found, refused = [], []
        for path in [root] if root.is_file() else files_under(root):
            reader = reader_for(path)
            if reader is None:
                refused.append(path)
            elif root.is_file():
                items.append(FileItem(reader.name, [path], file_phi_values(path)))
            else:
                found.append(path)
        grouped = group_files(found, None if root.is_file() else root)
        items.extend(grouped)
        below = {} if root.is_file() else folder_phi(grouped, root)
        for path in refused:
            phi = file_phi_values(path) if root.is_file() else phi_around(path, below)
            unreadable.append(Unreadable(scrub_path(str(path), phi), f"not a file type mednet reads ({_suffix(path)})"))
    return sorted(items, key=lambda item: str(item.path)), unreadable


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]) or "no suffix"


__all__ = ["FileItem", "Unreadable", "file_phi_values", "files_under", "folder_phi", "group_files", "phi_around", "walk"]
